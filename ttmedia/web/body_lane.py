"""A direct lane for the body chunks of a token stream, past the layers between uvicorn and
the handler.

Every layer that wraps `send` on the way to the server looks at `http.response.start` only:
the status for the request log, the X-Request-ID and deprecation headers, CORS headers, whether
a response has begun (Connexion's error layers and run_until_disconnect), and a body validator
that no streamed media type has. A token stream sends one body message per token, and passing
each through those wrappers cost about a tenth of the server's work per token. So the outermost
layer (BodyLane, first in Connexion's list) keeps the server's own `send` in the scope, and a
LaneStreamingResponse sends its start and its final message through the chain as any response
does (every layer still sees the status and the end), and the chunks between straight to the
server.

The lane is taken only once the start has reached the server. A layer that holds the start
back to look at the whole body first (a response validator: VALIDATE_RESPONSES with an NDJSON
or text body) keeps every chunk in the chain, where it must see them. A layer that rewrites
chunks without holding the start back cannot be added behind BodyLane: it would miss them.
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LANE = "ttmedia.body_lane"


class Lane:
    """The server's `send`, and whether a response's start has reached it."""

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False


class BodyLane:
    """Keeps a Lane in the scope, for LaneStreamingResponse."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lane = scope[LANE] = Lane(send)

        async def send_seen(message: Message) -> None:
            if message["type"] == "http.response.start":
                lane.started = True
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            # The lane holds the server's send, which holds the request cycle, which holds this
            # scope: without this the three made a reference cycle per request, left for the
            # collector (~10 objects each; a young collection freed 4,000-6,800 at a time).
            scope.pop(LANE, None)


class LaneStreamingResponse(StreamingResponse):
    """A StreamingResponse whose body chunks skip the middleware chain (see the module)."""

    _lane: Lane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._lane = scope.get(LANE)
        if scope["type"] != "http" or _asgi_at_least(scope, (2, 4)):
            await super().__call__(scope, receive, send)  # a send to a client that left raises
            return
        # Before ASGI 2.4 (uvicorn says 2.3) a send to a client that has left is dropped without
        # a word, so its leaving is heard on receive. Starlette streams in an anyio task group
        # for that, which cost ~0.4 ms of server CPU per stream; one asyncio task that cancels
        # this one does the same.
        task = asyncio.current_task()
        assert task is not None
        streaming, left = True, False

        async def listen() -> None:
            nonlocal left
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # noqa: BLE001 - no word from the client: nothing to act on
                return
            if streaming:  # not once the stream has ended: the cancel would hit whoever runs next
                left = True
                task.cancel()

        listener = asyncio.ensure_future(listen())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()  # ours: the client left, the stream is over
        finally:
            # No await between the stream's end and here: the listener cannot cancel in between.
            streaming = False
            listener.cancel()
        if self.background is not None:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        lane = self._lane
        send_chunk = lane.send if lane is not None and lane.started else send
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            await send_chunk({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _asgi_at_least(scope: Scope, version: tuple[int, int]) -> bool:
    spec = scope.get("asgi", {}).get("spec_version", "2.0")
    try:
        return tuple(int(part) for part in spec.split(".")) >= version
    except ValueError:
        return False
