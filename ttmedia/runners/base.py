"""The runner SDK: the class model code subclasses to run inside a device worker process.

A runner owns one device group. Its methods may be plain (synchronous) or `async`:

* `warmup()` once: load weights, compile traces. It may take as long as it needs (up to
  WARMUP_TIMEOUT_SECONDS): liveness never depends on the runner's thread.
* `run(batch)` for non-streaming work: a list of the family's requests (ttmedia.runners.types)
  in, one result per request out, in order.
* `stream(request)`, optional: a generator (or async generator) of chunks whose last item is
  the family's result.
* `canary()`, optional: a tiny request the scheduler runs while the worker is idle, to find a
  wedged device before a client does.
* `close()` on shutdown.

Synchronous methods run on the worker's one device thread (TT runtimes want one thread per
device); the worker's event loop stays free for heartbeats, cancellations and the next call.
Async methods run on that loop and must not block it. Inside any call, `self.progress(...)`
reports how far it is (which also proves the device is alive) and `self.cancelled()` says
whether its client has gone.

Raise `RunnerRequestError` for a request the model cannot use (the client gets 422) and
`DeviceError` when the device itself is broken (its requests get 503 `device_error`, the
worker is restarted, after RESET_DEVICE_COMMAND if one is set). Anything else fails only the
call's requests (500), and the worker goes on.

The server process imports a runner's module too (for `load_tokenizer` and the declared
attributes), so a runner module imports heavy libraries (torch, ttnn) inside its methods.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ttmedia.runners.catalog import Timing
from ttmedia.runners.types import Progress

if TYPE_CHECKING:
    from ttmedia.runners.types import Tokenizer


class RunnerRequestError(Exception):
    """The model rejected this request (for example an input it cannot use): a 422, not a bug."""


class DeviceError(Exception):
    """The device is broken, not the request: fail the call with 503 and restart the worker."""


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

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


class CallControl:
    """The worker's side of one call: where progress goes, and whether the client has left.
    Thread-safe: a synchronous runner reports from the device thread."""

    def __init__(self, report: Callable[[Progress], None] | None = None) -> None:
        self._report = report
        self._cancelled = False  # one store and one load, each atomic: no Event (a Condition and its lock) per call

    def progress(self, progress: Progress) -> None:
        if self._report is not None:
            self._report(progress)

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled


#: The call the current code runs for (set by the worker around every runner call).
CURRENT_CALL: contextvars.ContextVar[CallControl | None] = contextvars.ContextVar("ttmedia_call", default=None)


class Runner:
    """Base class for runners. Override `warmup`, `run` and, if the model streams, `stream`."""

    #: The family this runner serves (a key of ttmedia.runners.types.FAMILIES); None: any
    #: family, as the model's configuration says.
    family: ClassVar[str | None] = None
    #: True for the simulators that stand in for TT models; /v1/models reports it.
    simulated: ClassVar[bool] = False
    #: Import names of the Python packages the runner needs (weights included). A model whose
    #: packages are missing is `failed` at start-up, with the names in its error, and the
    #: default models fall back to a simulator; nothing is ever downloaded.
    requires: ClassVar[tuple[str, ...]] = ()
    #: How many run()/stream() calls the worker may have in flight at once.
    max_concurrency: int = 1
    #: Batch sizes run() accepts (traced models run fixed shapes). None: any size up to the
    #: model's batch limit. A partial batch is padded to the smallest accepted size by
    #: repeating its last request; the extra results are dropped.
    batch_sizes: tuple[int, ...] | None = None
    #: The most requests one run() call takes by default (MAX_BATCH_SIZE or the model's
    #: `max_batch_size` option override it).
    max_batch_size: int | None = None
    #: Request fields every request of one batch has in common (e.g. ("width", "height")).
    batch_key: tuple[str, ...] = ()
    #: Longest a call may go without progress before it counts as a hang (None: the request
    #: timeout). Progress is a stream chunk or a `progress()` report.
    call_timeout_s: float | None = None
    #: How long the canary request may take.
    canary_timeout_s: float = 30.0
    #: The device mesh this runner drives (rows, columns); None: one row of its devices.
    mesh_shape: tuple[int, int] | None = None

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> Tokenizer | None:
        """The model's tokenizer and chat template, loaded in the server process (llm models
        must have one; embedding models may). Called once, off the event loop."""
        return None

    def warmup(self) -> Any:
        """Load weights, compile traces. Raise to fail the worker's init."""

    def run(self, batch: list[Any]) -> Any:
        """One result per request, in order."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def stream(self, request: Any) -> Iterator[Any] | AsyncIterator[Any]:
        """Chunks of one request; the last item is the family's result."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def canary(self) -> Any:
        """A tiny request that proves the device answers, or None for no canary."""
        return None

    def close(self) -> Any:
        """Release the device."""

    # --- for use inside a call --------------------------------------------------------------

    def progress(self, percent: float, *, step: int | None = None, total: int | None = None,
                 message: str = "") -> None:
        """Report how far the current call (or the warmup) is, 0..100."""
        call = CURRENT_CALL.get()
        if call is not None:
            call.progress(Progress(float(percent), step, total, message))

    def cancelled(self) -> bool:
        """True once every client of the current call has gone: stop early if you can."""
        call = CURRENT_CALL.get()
        return call is not None and call.cancelled

    # --- what the worker asks of a runner class ---------------------------------------------

    @classmethod
    def streams(cls) -> bool:
        return cls.stream is not Runner.stream

    @classmethod
    def has_canary(cls) -> bool:
        return cls.canary is not Runner.canary


async def device_time(seconds: float, started: float | None = None) -> None:
    """Simulated device work: the event loop stays free, as it would while a TT device computes.

    With `started` (a time.monotonic() taken when the call began), the call ends `seconds` after
    it began: the simulator's own work of making the output stands in for the device's work,
    so it is part of the device time rather than added to it."""
    if started is not None:
        seconds -= time.monotonic() - started
    if seconds > 0:
        await asyncio.sleep(seconds)
