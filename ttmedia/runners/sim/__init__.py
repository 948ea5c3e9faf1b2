"""Simulated TT runners: real timing shape, real outputs, deterministic, with fault injection."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ttmedia.media.priority import niced_threads

T = TypeVar("T")

#: Niceness of the threads that make a simulator's output (pixels, frames). On TT hardware the
#: device computes and the host's CPU stays with the server; here the output is made on the
#: host, so it takes the CPU only when the event loop and the token streams leave it free.
SIM_DEVICE_NICENESS = 10

_device_threads = niced_threads(2, SIM_DEVICE_NICENESS, "sim-device")


async def on_sim_device(work: Callable[..., T], *args: Any) -> T:
    """Run a simulator's CPU-heavy stand-in for device work on a low-priority thread."""
    return await asyncio.get_running_loop().run_in_executor(_device_threads, functools.partial(work, *args))
