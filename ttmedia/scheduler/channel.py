"""The scheduler's end of one worker's pipe, driven by the event loop.

Messages are read on the loop itself (it watches the pipe), and written straight from the loop
while the pipe has room: no thread stands between a worker and the handler waiting for its
result. Only when the pipe is full, because the worker is busy or stopped, do writes move to a
writer thread, so the loop never blocks on a worker that does not read. The bytes on the pipe
are multiprocessing.Connection's framing, which the worker reads with Connection.recv().
"""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_READ_SIZE = 1 << 18
_SHORT, _LONG = struct.Struct("!i"), struct.Struct("!Q")


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(len(payload)) + payload
    return _SHORT.pack(len(payload)) + payload


class Channel:
    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop,
                 on_messages: Callable[[list[Any]], None], on_eof: Callable[[], None]) -> None:
        # Our own descriptor for the socket, so closing the Connection object cannot pull it
        # away from under the loop.
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        self.loop = loop
        self._on_messages, self._on_eof = on_messages, on_eof
        self._buffer = bytearray()
        self._closed = False
        # Writes waiting for the writer thread, and a count of those not yet fully written: the
        # loop writes directly only when it is zero, so the order of messages is kept.
        self._lock = threading.Lock()
        self._backlog = 0
        self._writer_done = False
        self._writes: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._write_backlog, name="worker-writer", daemon=True).start()
        loop.add_reader(self.sock.fileno(), self._readable)

    # --- reading --------------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self._on_eof()
            return
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        with memoryview(buffer) as view:  # released before the buffer is trimmed
            while len(buffer) - start >= 4:
                size = _SHORT.unpack_from(buffer, start)[0]
                header = 4
                if size == -1:
                    if len(buffer) - start < 12:
                        break
                    size, header = _LONG.unpack_from(buffer, start + 4)[0], 12
                end = start + header + size
                if end > len(buffer):
                    break
                messages.append(pickle.loads(view[start + header:end]))
                start = end
        del buffer[:start]
        if messages:
            self._on_messages(messages)

    # --- writing --------------------------------------------------------------------------------

    def send(self, message: Any) -> bool:
        """Write a message without blocking the loop. False if the channel is closed."""
        data = frame(message)
        with self._lock:
            if self._closed:
                return False
            if self._backlog == 0:
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    return False  # the worker is gone; the reader reports its exit
                if sent == len(data):
                    return True
                data = data[sent:]
            self._backlog += 1
        self._writes.put(data)
        return True

    def _write_backlog(self) -> None:
        try:
            while (data := self._writes.get()) is not None:
                self._send_all(data)
                with self._lock:
                    self._backlog -= 1
        except OSError:
            pass  # the worker is gone; the reader reports its exit
        finally:
            with self._lock:
                self._writer_done = True
                closed = self._closed
            if closed:
                self.sock.close()

    def _send_all(self, data: bytes) -> None:
        """sendall for a descriptor the loop has made non-blocking (uvloop does, on add_reader):
        wait until the worker reads, however long that takes."""
        view = memoryview(data)
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
