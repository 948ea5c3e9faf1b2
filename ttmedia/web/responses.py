"""Response helpers shared by handlers: explicit content types, orjson bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response

from ttmedia.web.body_lane import LaneStreamingResponse


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(events: AsyncIterator[bytes]) -> LaneStreamingResponse:
    return LaneStreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def sse_event(data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"

#: Stands for the one string that changes from event to event of a stream (sse_events_like).
SSE_SLOT = "\u0000ttmedia-sse-slot\u0000"


def sse_events_like(sample: Any) -> Callable[[str], bytes]:
    """The SSE event of `sample` as a function of its one SSE_SLOT string. A stream's token
    events differ only in their text: the rest is serialised once per stream, not per token."""
    head, tail = sse_event(sample).split(orjson.dumps(SSE_SLOT))  # exactly one slot, or ValueError

    def event(text: str) -> bytes:
        return head + orjson.dumps(text) + tail
    return event
