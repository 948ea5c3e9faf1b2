"""multiprocessing internals of Python 3.11 that ttmedia relies on (the interpreter's minor
version is pinned in ttmedia.internals.WRITTEN_AGAINST: these change between minors).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
from multiprocessing import forkserver, util
from typing import Any

from ttmedia.internals import require

require("multiprocessing.py")  # before anything here is used: it relies on that version


# --- the forkserver ---------------------------------------------------------------------------


def start_forkserver_soon(preload: list[str]) -> None:
    """Start the forkserver now, in a thread, with these modules preloaded (idempotent).
    multiprocessing starts it at the first process start, and only then begins its imports;
    `forkserver.ensure_running` (undocumented) is the way to start it earlier."""
    forkserver.set_forkserver_preload(preload)  # before any start, whichever thread wins
    threading.Thread(target=forkserver.ensure_running, name="forkserver-start", daemon=True).start()


def stop_forkserver() -> None:
    """Kill the forkserver now, if it runs, and forget it (a later start makes a new one).
    It leaves by itself when this process exits, but only once it is done importing the worker
    modules (a second or more). There is no public stop: this uses the module's singleton
    (`forkserver._forkserver`) and its `_lock`, `_forkserver_pid`, `_forkserver_alive_fd`
    and `_forkserver_address`."""
    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    with server._lock:  # held while it is being started
        pid = server._forkserver_pid
        if pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None


def remove_temp_dir_now() -> None:
    """Remove multiprocessing's temp directory (pymp-*, it holds the forkserver's socket) now,
    not at the interpreter's exit: run its finalizer from `util._finalizer_registry`, the one
    whose callback is `util._remove_temp_dir`. A process that ends by a signal skips exit
    handlers and would leave the directory behind."""
    for finalizer in list(util._finalizer_registry.values()):  # type: ignore[attr-defined]
        if getattr(finalizer, "_callback", None) is util._remove_temp_dir:  # type: ignore[attr-defined]
            finalizer()  # runs once and unregisters itself


# --- multiprocessing.Connection's wire framing ------------------------------------------------
# The scheduler reads and writes a worker's pipe on its event loop (ttmedia.scheduler.channel),
# while the worker uses Connection.send()/recv(). Connection has no non-blocking API, so the
# scheduler writes Connection's framing itself (Connection._send_bytes/_recv_bytes): a 4-byte
# big-endian signed length, or -1 and an 8-byte unsigned length for payloads over 2 GiB.

_SHORT, _LONG = struct.Struct("!i"), struct.Struct("!Q")
_SHORT_MAX = 0x7FFFFFFF


def frame_header(size: int) -> bytes:
    """The header Connection puts before a payload of `size` bytes."""
    return _SHORT.pack(-1) + _LONG.pack(size) if size > _SHORT_MAX else _SHORT.pack(size)


def frame_extent(buffer: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(header length, payload size) of the frame at `start`, or None until its header is complete."""
    available = len(buffer) - start
    if available < 4:
        return None
    size = _SHORT.unpack_from(buffer, start)[0]
    if size != -1:
        return 4, size
    if available < 12:
        return None
    return 12, _LONG.unpack_from(buffer, start + 4)[0]


def next_frame(buffer: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(payload start, payload end) of the frame at `start`, or None until it is complete."""
    extent = frame_extent(buffer, start)
    if extent is None:
        return None
    header, size = extent
    end = start + header + size
    if end > len(buffer):
        return None
    return start + header, end
