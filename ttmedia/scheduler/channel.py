"""The scheduler's end of one worker's pipe, driven by the event loop.

Messages are read on the loop itself (it watches the pipe), and written straight from the loop
while the pipe has room: no thread stands between a worker and the handler waiting for its
result. Only when the pipe is full, because the worker is busy or stopped, do writes move to a
writer thread, so the loop never blocks on a worker that does not read. The bytes on the pipe
are multiprocessing.Connection's framing (ttmedia.internals.multiprocessing), which the worker
reads with Connection.recv().

A large message from a worker (an image, a video) is read straight into a buffer of its size,
announced by its frame header: growing the read buffer 256 KB at a time re-copied all of it at
every step (bytearray grows by an eighth), 5-9 ms of one loop step per 3 MB result.

A large message to a worker (decoded audio, pixels, uploads) is pickled and sent by the writer
thread, not on the loop; messages after it wait behind it, in order. It is pickled into pieces that refer
to its buffers (protocol 5 writes a big buffer straight to the file it pickles to), so even
that thread copies nothing before the kernel does.
Errors of the pipe itself are logged, not taken for a quiet end of the worker.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pickle
import queue
import select
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ttmedia.internals.multiprocessing import frame_extent, frame_header, next_frame

log = logging.getLogger("ttmedia.scheduler")

_READ_SIZE = 1 << 18
#: A message holding a buffer this big is pickled into pieces and sent by the writer thread.
LARGE = 1 << 16


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return frame_header(len(payload)) + payload


class _Large:
    """A message for the writer thread to pickle."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class _Pieces:
    """A file for pickle.Pickler that keeps what it is given: the pickler hands a large buffer
    over as it is (a PickleBuffer or the bytes object), without copying it."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.parts.append(data)
        self.size += size
        return size


def frame_pieces(message: Any) -> list[Any]:
    """The frame of a message as buffers that share the message's own large buffers."""
    pieces = _Pieces()
    pickle.Pickler(pieces, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    return [frame_header(pieces.size), *pieces.parts]


def holds_large_buffer(value: Any, depth: int = 0) -> bool:
    """Whether a message holds a buffer of LARGE bytes or more (a cheap look, a few levels deep)."""
    if isinstance(value, (bytes, bytearray, str, memoryview)):
        return len(value) >= LARGE
    if isinstance(value, (tuple, list)):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    elif (fields := getattr(type(value), "__dataclass_fields__", None)) is not None:
        # The requests the scheduler sends are dataclasses (an image edit's pixels sit in one).
        items = (getattr(value, name, None) for name in fields)
    else:
        return getattr(value, "nbytes", 0) >= LARGE  # numpy arrays
    return depth < 6 and any(holds_large_buffer(item, depth + 1) for item in items)


class Channel:
    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop,
                 on_messages: Callable[[list[Any]], None], on_eof: Callable[[], None], name: str = "a worker") -> None:
        # Our own descriptor for the socket, so closing the Connection object cannot pull it
        # away from under the loop.
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        self.loop = loop
        self.name = name
        self._on_messages, self._on_eof = on_messages, on_eof
        self._buffer = bytearray()
        #: A large frame's payload being read into place, and how much of it has come
        self._large: bytearray | None = None
        self._large_filled = 0
        self._closed = False
        # Writes waiting for the writer thread, and a count of those not yet fully written: the
        # loop writes directly only when it is zero, so the order of messages is kept.
        self._lock = threading.Lock()
        self._backlog = 0
        self._writer_done = False
        self._writes: queue.SimpleQueue[list[Any] | _Large | None] = queue.SimpleQueue()
        threading.Thread(target=self._write_backlog, name="worker-writer", daemon=True).start()
        loop.add_reader(self.sock.fileno(), self._readable)

    # --- reading --------------------------------------------------------------------------------

    def _readable(self) -> None:
        if self._large is not None:
            self._read_large(self._large)
            return
        try:
            data = self.sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._read_failed(exc)
            return
        if not data:
            self._ended()
            return
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        with memoryview(buffer) as view:  # released before the buffer is trimmed
            while (found := next_frame(buffer, start)) is not None:
                payload, end = found
                messages.append(pickle.loads(view[payload:end]))
                start = end
        del buffer[:start]
        extent = frame_extent(buffer, 0)
        if extent is not None and extent[1] >= LARGE:
            header, size = extent
            self._large = bytearray(size)
            with memoryview(buffer) as view:
                self._large[:len(buffer) - header] = view[header:]
            self._large_filled = len(buffer) - header
            buffer.clear()
        if messages:
            self._on_messages(messages)

    def _read_large(self, payload: bytearray) -> None:
        try:
            with memoryview(payload) as view:
                count = self.sock.recv_into(view[self._large_filled:], 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._read_failed(exc)
            return
        if not count:
            self._ended()
            return
        self._large_filled += count
        if self._large_filled == len(payload):
            self._large = None
            self._on_messages([pickle.loads(payload)])

    def _read_failed(self, exc: OSError) -> None:
        # ECONNRESET: the worker died with our messages unread (a crash, a kill); else a fault.
        level = logging.INFO if exc.errno == errno.ECONNRESET else logging.WARNING
        log.log(level, "reading the pipe of %s failed (%s); the worker is taken for gone", self.name, _why(exc))
        self._ended()

    def _ended(self) -> None:
        self.close()
        self._on_eof()

    # --- writing --------------------------------------------------------------------------------

    def send(self, message: Any) -> bool:
        """Write a message without blocking the loop. False if the channel is closed."""
        if holds_large_buffer(message):
            with self._lock:
                if self._closed:
                    return False
                self._backlog += 1
            self._writes.put(_Large(message))  # pickled by the writer thread
            return True
        data = frame(message)
        with self._lock:
            if self._closed:
                return False
            if self._backlog == 0:
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._log_write_error(exc)
                    return False  # the reader reports the worker's exit
                if sent == len(data):
                    return True
                data = data[sent:]
            self._backlog += 1
        self._writes.put([data])
        return True

    def _write_backlog(self) -> None:
        try:
            while (pieces := self._writes.get()) is not None:
                if isinstance(pieces, _Large):
                    try:
                        pieces = frame_pieces(pieces.message)
                    except Exception:  # noqa: BLE001 - as a failed pickle on the loop would be: logged, dropped
                        log.exception("a message for %s cannot be pickled; it is dropped", self.name)
                        pieces = []
                for piece in pieces:
                    self._send_all(piece)
                with self._lock:
                    self._backlog -= 1
        except OSError as exc:
            self._log_write_error(exc)  # the reader reports the worker's exit
        finally:
            with self._lock:
                self._writer_done = True
                closed = self._closed
            if closed:
                self.sock.close()

    def _log_write_error(self, exc: OSError) -> None:
        if self._closed:
            return  # we closed it: a writer woken by the shutdown
        level = logging.INFO if exc.errno in (errno.EPIPE, errno.ECONNRESET) else logging.WARNING
        log.log(level, "a write to %s failed (%s)", self.name, _why(exc))

    def _send_all(self, data: Any) -> None:
        """sendall for a descriptor the loop has made non-blocking (uvloop does, on add_reader):
        wait until the worker reads, however long that takes."""
        view = data.raw() if isinstance(data, pickle.PickleBuffer) else memoryview(data).cast("B")
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, InterruptedError):
                select.select([], [self.sock], [])

    def close(self) -> None:
        """Stop reading and writing; the socket closes once the writer thread is out of it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writer_done = self._writer_done
        self.loop.remove_reader(self.sock.fileno())
        if writer_done:
            self.sock.close()
        else:
            self._writes.put(None)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a writer waiting on a full pipe
            except OSError:
                pass


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name}: {exc.strerror}" if name and exc.strerror else str(exc)
