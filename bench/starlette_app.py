"""The baseline: a bare Starlette app answering a JSON POST, to express every figure as a ratio."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def completions(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"object": "text_completion", "choices": [{"text": body.get("prompt", ""), "index": 0}]})


async def health(_request: Request) -> JSONResponse:
    return JSONResponse({})


app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health)])
