"""uvicorn 0.54.0 internals ttmedia relies on (pinned in ttmedia.internals.WRITTEN_AGAINST).

uvicorn documents its options and `Server.run`/`serve`, not what a Server does on a signal, how
Config.load calls an app factory, nor its HTTP protocol classes' parser callbacks.
"""

from __future__ import annotations

import contextlib
import sys
import typing as t
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ttmedia.internals import require

require("uvicorn.py")  # before anything here is used: it relies on that version

__all__ = ["H11Protocol", "HttpToolsProtocol", "HookedServer", "calling_config", "h11_peer_state",
           "http_protocol", "reading_paused", "set_http_protocol"]


def calling_config() -> t.Any:
    """The uvicorn Config whose load() is calling the app factory, if any: the one place a
    factory (`uvicorn ttmedia.app:create_app --factory`) can learn the address the server is
    about to bind, and tune the server it runs in. uvicorn hands a factory no arguments; this
    walks the caller frames (`sys._getframe`) for a Config's `self` (Config.load calls the
    factory itself)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, uvicorn.Config):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def http_protocol(config: t.Any) -> type:
    """The HTTP protocol class a loaded Config will serve with (`http_protocol_class`, set by
    load() from the `http` option; no option accepts a wrapper of the class it chose)."""
    return config.http_protocol_class  # type: ignore[no-any-return]


def set_http_protocol(config: t.Any, protocol_class: type) -> None:
    config.http_protocol_class = protocol_class


class HookedServer(uvicorn.Server):
    """A uvicorn Server with hooks of ours:

    * `on_exit_signal(sig)` runs first when SIGTERM/SIGINT arrives (uvicorn's `handle_exit`, the
      handler `capture_signals` installs; there is no public shutdown hook);
    * the signal is not raised again after the shutdown (uvicorn re-raises the ones in its
      private `_captured_signals`: a KeyboardInterrupt traceback on Ctrl-C, and exit status of
      the signal instead of 0);
    * `after_startup()` runs once the lifespan and the sockets are up (`startup`, whose
      failure exits before it).
    """

    def on_exit_signal(self, sig: int) -> None:
        pass

    def after_startup(self) -> None:
        pass

    def handle_exit(self, sig: int, frame: t.Any) -> None:
        self.on_exit_signal(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def startup(self, sockets: t.Any = None) -> None:
        await super().startup(sockets)
        self.after_startup()


# --- HTTP protocols (ttmedia.web.httpguard) -------------------------------------------------------
# httpguard subclasses HttpToolsProtocol and H11Protocol: it extends asyncio.Protocol's public
# methods (connection_made/lost, data_received) and, for httptools, uvicorn's parser callbacks
# (on_message_begin, on_url, on_header, on_headers_complete, on_body, on_message_complete), which
# uvicorn does not document. uvicorn has no hook for header caps or header/body timeouts.


def reading_paused(protocol: t.Any) -> bool:
    """Whether uvicorn stopped reading the connection itself (its buffer is full: `flow`)."""
    return bool(protocol.flow.read_paused)


def h11_peer_state(protocol: t.Any) -> t.Any:
    """The client's h11 state on an H11Protocol connection (its h11.Connection is `conn`)."""
    return protocol.conn.their_state
