"""The Runner interface: what a device worker process calls.

A runner owns one device group. The worker calls `warmup()` once, then `run(batch)` for
non-streaming work and `stream(request)` for streaming work, up to `max_concurrency` calls at
once, and `close()` on shutdown. Blocking device code belongs in `asyncio.to_thread`, so the
worker can keep sending heartbeats while the device works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ttmedia.runners.catalog import Timing


class RunnerRequestError(Exception):
    """The model rejected this request (for example an input it cannot use): a 422, not a bug."""


@dataclass(frozen=True)
class RunnerContext:
    """Everything a runner needs to know about where and what it runs. Picklable."""

    model: str
    family: str
    device_type: str
    device_group: tuple[int, ...]
    timing: Timing
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def worker_id(self) -> str:
        return ",".join(str(d) for d in self.device_group)


class Runner:
    """Base class for runners. Subclasses override warmup/run and, if they stream, stream."""

    #: How many run()/stream() calls the worker may have in flight at once.
    max_concurrency: int = 1

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx

    async def warmup(self) -> None:
        """Load weights, compile traces. Raise to fail the worker's init."""

    async def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per request, in order."""
        raise NotImplementedError

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks of one streaming request; the last chunk carries `final: True`."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    async def close(self) -> None:
        """Release the device."""


async def device_time(seconds: float, started: float | None = None) -> None:
    """Simulated device work: the event loop stays free, as it would while a TT device computes.

    With `started` (a time.monotonic() taken when the call began), the call ends `seconds` after
    it began: the simulator's own work of making the output stands in for the device's work,
    so it is part of the device time rather than added to it."""
    if started is not None:
        seconds -= time.monotonic() - started
    if seconds > 0:
        await asyncio.sleep(seconds)
