"""The baseline: a bare Starlette app answering a JSON POST, to express every figure as a ratio.

With `"stream": true` it streams `max_tokens` SSE events on a 1 ms step clock, generated in the
process itself: the floor that a Python ASGI server on this machine sets for token gaps,
without a device worker, a scheduler or validation.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STEP_S = 0.001
CLOCK_ORIGIN = time.monotonic()


async def _events(tokens: int) -> AsyncIterator[bytes]:
    first = math.floor((time.monotonic() - CLOCK_ORIGIN) / STEP_S) + 1
    for i in range(tokens):
        delay = CLOCK_ORIGIN + (first + i) * STEP_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield b"data: " + json.dumps({"choices": [{"text": " word", "index": 0}]}, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def completions(request: Request) -> Response:
    body = await request.json()
    if body.get("stream"):
        return StreamingResponse(_events(int(body.get("max_tokens", 16))), media_type="text/event-stream")
    return JSONResponse({"object": "text_completion", "choices": [{"text": body.get("prompt", ""), "index": 0}]})


async def health(_request: Request) -> JSONResponse:
    return JSONResponse({})


app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health)])
