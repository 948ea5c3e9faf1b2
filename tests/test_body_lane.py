"""The body lane: a token stream's chunks go straight to the server, its start and end through
every layer (each layer still sees the status and the end of the response)."""

from __future__ import annotations

import asyncio
from typing import Any

from ttmedia.web.body_lane import BodyLane, LaneStreamingResponse


class SeenBy:
    """A layer that wraps send and records what passes, as our middleware layers do."""

    def __init__(self, app: Any) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def wrapped(message: Any) -> None:
            self.seen.append((message["type"], message.get("body"), message.get("more_body")))
            await send(message)
        await self.app(scope, receive, wrapped)


def run(app: Any) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        await asyncio.sleep(3600)  # no disconnect during the test

    async def send(message: Any) -> None:
        sent.append((message["type"], message.get("body"), message.get("more_body")))

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/"}
    asyncio.run(app(scope, receive, send))
    return sent


async def _events() -> Any:
    for text in (b"data: a\n\n", b"data: b\n\n", "data: c\n\n"):
        yield text


def test_chunks_skip_the_layers_and_the_start_and_end_pass_through_them() -> None:
    inner = SeenBy(LaneStreamingResponse(_events(), media_type="text/event-stream"))
    sent = run(BodyLane(inner))
    assert sent == [("http.response.start", None, None), ("http.response.body", b"data: a\n\n", True),
                    ("http.response.body", b"data: b\n\n", True), ("http.response.body", b"data: c\n\n", True),
                    ("http.response.body", b"", False)]
    assert inner.seen == [("http.response.start", None, None), ("http.response.body", b"", False)]


def test_without_the_lane_every_message_goes_through_the_layers() -> None:
    inner = SeenBy(LaneStreamingResponse(_events(), media_type="text/event-stream"))
    sent = run(inner)
    assert len(sent) == 5 and inner.seen == sent


class HoldsTheStart(SeenBy):
    """A layer that holds the start back until the body has ended, as a response validator does."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        held: list[Any] = []

        async def holding(message: Any) -> None:
            self.seen.append((message["type"], message.get("body"), message.get("more_body")))
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                for m in held:
                    await send(m)
        await self.app(scope, receive, holding)


def test_a_layer_that_holds_the_start_back_sees_every_chunk_in_order() -> None:
    inner = HoldsTheStart(LaneStreamingResponse(_events(), media_type="text/event-stream"))
    sent = run(BodyLane(inner))
    assert len(sent) == 5 and inner.seen == sent and sent[0][0] == "http.response.start"


def test_the_app_puts_the_lane_outside_every_other_layer(tmp_path: Any) -> None:
    from ttmedia.settings import Settings
    from ttmedia.web.app import create_app

    app = create_app(Settings(models="Qwen3-8B", data_dir=str(tmp_path)))
    assert app.middleware.middlewares[0] is BodyLane


def test_a_client_that_leaves_ends_the_stream_and_nothing_else() -> None:
    closed: list[bool] = []

    async def endless() -> Any:
        try:
            while True:
                yield b"data: x\n\n"
                await asyncio.sleep(0.001)
        finally:
            closed.append(True)

    async def scenario() -> list[Any]:
        sent: list[Any] = []

        async def receive() -> Any:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/"}
        await BodyLane(LaneStreamingResponse(endless(), media_type="text/event-stream"))(scope, receive, send)
        await asyncio.sleep(0.01)  # a cancellation left pending would strike here
        return sent

    sent = asyncio.run(scenario())
    assert closed == [True]
    assert sent[0]["type"] == "http.response.start" and 3 < len(sent) < 500


def test_a_stream_that_ends_first_is_not_cancelled_by_a_late_disconnect() -> None:
    async def scenario() -> str:
        async def receive() -> Any:
            return {"type": "http.disconnect"}  # at once: the client is gone before the end is sent

        async def send(_message: Any) -> None:
            await asyncio.sleep(0)

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/"}
        await BodyLane(LaneStreamingResponse(_events(), media_type="text/event-stream"))(scope, receive, send)
        await asyncio.sleep(0.01)
        return "after"

    assert asyncio.run(scenario()) == "after"


def test_a_finished_request_leaves_no_reference_cycle_for_the_collector() -> None:
    import gc
    import weakref

    class Cycle:
        """As uvicorn's RequestResponseCycle: it holds the scope, and its bound send is the
        server's send that the lane keeps."""

        def __init__(self) -> None:
            self.scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/"}

        async def receive(self) -> Any:
            await asyncio.sleep(3600)

        async def send(self, message: Any) -> None:
            pass

    async def main() -> weakref.ref:
        cycle = Cycle()
        app = BodyLane(SeenBy(LaneStreamingResponse(_events(), media_type="text/event-stream")))
        await app(cycle.scope, cycle.receive, cycle.send)
        return weakref.ref(cycle)

    gc.disable()
    try:
        gone = asyncio.run(main())
        assert gone() is None, gc.get_referrers(gone())  # freed by its last reference, no collection needed
    finally:
        gc.enable()
