"""Simulated TT runners: real timing shape, real outputs, deterministic, with fault injection."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ttmedia.media.priority import background_threads

T = TypeVar("T")

# The threads that make a simulator's output (pixels, frames). On TT hardware the device
# computes and the host's CPU stays with the server; here the output is made on the host, so
# it runs in the background (SCHED_IDLE): only when the event loop and the token streams
# leave the CPU free.
_device_threads = background_threads(2, "sim-device")


async def on_sim_device(work: Callable[..., T], *args: Any) -> T:
    """Run a simulator's CPU-heavy stand-in for device work on a low-priority thread."""
    return await asyncio.get_running_loop().run_in_executor(_device_threads, functools.partial(work, *args))
