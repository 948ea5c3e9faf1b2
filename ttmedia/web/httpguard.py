"""Connection limits uvicorn does not have: a cap on header bytes and header/body timeouts.

uvicorn closes a kept-alive connection that stays idle (`timeout_keep_alive`), and its h11
parser caps an incomplete request (`h11_max_incomplete_event_size`); its default parser,
httptools, buffers a header of any size, and nothing times out a client that connects and
sends nothing, sends its headers a byte at a time, or stops half-way through a body. Each such
connection holds memory and a socket for ever. The protocol classes here (subclasses of
uvicorn's, whose parser callbacks they extend: ttmedia.internals.uvicorn) add:

* a cap on the request line and headers (431, then the connection is closed);
* a deadline for the request line and headers, counted from the connection or from the
  request's first byte (408, then closed): a client that sends a byte now and then cannot
  keep it open;
* a longest pause while a body arrives: the connection is closed (the app sees the client
  leave) unless the server itself stopped reading (its buffer is full).
"""

from __future__ import annotations

import asyncio
import logging

import h11

from ttmedia.web import problems
from ttmedia.internals.uvicorn import H11Protocol, HttpToolsProtocol, h11_peer_state, reading_paused

log = logging.getLogger("ttmedia.http")

HEAD, BODY, BUSY = "head", "body", "busy"


class Limits:
    """The limits, set once by the app from its settings (uvicorn builds the protocols)."""

    max_header_bytes = 64 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0


def _problem_bytes(problem: problems.Problem) -> bytes:
    body = problem.render()
    return (f"HTTP/1.1 {problem.status} {problem.title}\r\ncontent-type: {problems.PROBLEM_JSON}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _Guard:
    """Mixin for a uvicorn HTTP protocol; subclasses say which phase a request is in."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    _phase = HEAD
    _head_bytes = 0
    _timer: asyncio.TimerHandle | None = None
    _body_seen = 0.0  # monotonic time of the last body bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        self._observe_phase()
        if self._phase == HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > Limits.max_header_bytes:
                self._refuse(_HeaderTooLarge())
        elif self._phase == BODY:
            self._body_seen = self.loop.time()

    def _observe_phase(self) -> None:
        """Phase changes the parser's callbacks do not report (h11)."""

    # --- phases -------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._cancel()
        self._phase, self._head_bytes = HEAD, 0
        self._timer = self.loop.call_later(Limits.header_timeout_s, self._head_late)

    def _start_body(self) -> None:
        self._cancel()
        self._phase = BODY
        self._body_seen = self.loop.time()
        self._timer = self.loop.call_later(Limits.body_timeout_s, self._body_check)

    def _start_busy(self) -> None:
        self._cancel()
        self._phase = BUSY

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._phase == HEAD and not self.transport.is_closing():
            self._refuse(_HeaderTimeout(
                f"The request line and headers did not arrive within {Limits.header_timeout_s:g} s."))

    def _body_check(self) -> None:
        self._timer = None
        if self._phase != BODY or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_seen
        if reading_paused(self):  # we stopped reading, not the client
            self._body_seen, idle = self.loop.time(), 0.0
        if idle >= Limits.body_timeout_s:
            log.info("closed a connection whose request body paused for %.0f s", idle)
            self.transport.close()
            return
        self._timer = self.loop.call_later(Limits.body_timeout_s - idle, self._body_check)

    def _refuse(self, problem: problems.Problem) -> None:
        self._cancel()
        self._phase = BUSY
        self.transport.write(_problem_bytes(problem))
        self.transport.close()


class _HeaderTooLarge(problems.Problem):
    status, reason = 431, "headers_too_large"

    def __init__(self) -> None:
        super().__init__(f"The request line and headers exceed {Limits.max_header_bytes} bytes.")


class _HeaderTimeout(problems.Problem):
    status, reason = 408, "timeout"


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):  # type: ignore[misc]  # uvicorn narrows connection_made too
    _head_size = 0  # request line and headers as parsed (a complete head can be too large too)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != HEAD or self._timer is None:  # a kept-alive connection's next request
            self._start_head()
        self._head_bytes = self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size > Limits.max_header_bytes:
            self._refuse(_HeaderTooLarge())  # before the app sees the request
            return
        self._start_body()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # nothing for a request refused above
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        self._start_busy()
        super().on_message_complete()


class GuardedH11Protocol(_Guard, H11Protocol):  # type: ignore[misc]  # as above
    """h11 caps incomplete requests itself (h11_max_incomplete_event_size); the timeouts follow
    its state machine."""

    def _observe_phase(self) -> None:
        state = h11_peer_state(self)
        if state is h11.SEND_BODY:
            if self._phase != BODY:
                self._start_body()
        elif state is h11.IDLE:
            if self._phase != HEAD:
                self._start_head()
        elif self._phase != BUSY:
            self._start_busy()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._phase == HEAD:
            self._head_bytes = 0  # h11 enforces its own cap


def guarded(protocol_class: type) -> type | None:
    """The guarded version of a uvicorn HTTP protocol class, or None if there is none."""
    if issubclass(protocol_class, _Guard):
        return protocol_class
    if protocol_class is HttpToolsProtocol:
        return GuardedHttpToolsProtocol
    if protocol_class is H11Protocol:
        return GuardedH11Protocol
    return None
