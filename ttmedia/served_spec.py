"""Serve the contract exactly as written: /openapi.yaml is the file's bytes, /openapi.json its JSON.

Connexion 3.3 serves a `$ref`-resolved spec with `servers` rewritten; clients, linters and SDK
generators should get the document this repository publishes. This ASGI middleware sits before
Connexion's Swagger UI middleware and answers those two paths itself; Swagger UI (/ui/) loads
/openapi.json and resolves the `$ref`s in the browser.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from connexion.middleware.swagger_ui import SwaggerUIMiddleware

Scope = dict[str, Any]

YAML_TYPE = b"application/yaml"
#: Where Swagger UI is served (app.py: swagger_ui_path); nothing else is Swagger UI's.
SWAGGER_UI_PREFIX = "/ui"
JSON_TYPE = b"application/json"


def parse_spec(text: str) -> dict[str, Any]:
    """The spec as data. The C loader parses it in a twentieth of the pure-Python loader's
    time (0.3 s of start-up otherwise)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # type: ignore[no-any-return]  # noqa: S506 - a safe loader


class ServeSpecFile:
    def __init__(self, app: Any, spec_file: Path) -> None:
        self.app = app
        self.yaml = Path(spec_file).read_bytes()

    @cached_property
    def json(self) -> bytes:
        """Made on first request: parsing the spec again at start-up would delay the port."""
        parsed = parse_spec(self.yaml.decode("utf-8"))  # our own copy: Connexion edits the one it is given
        return json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path not in ("/openapi.yaml", "/openapi.json") or scope.get("method") not in ("GET", "HEAD"):
            if path is not None and not path.startswith(SWAGGER_UI_PREFIX) and isinstance(self.app, SwaggerUIMiddleware):
                # Nothing for Swagger UI's router (its routes all live under /ui): pass it by.
                await self.app.app(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body, content_type = (self.yaml, YAML_TYPE) if path == "/openapi.yaml" else (self.json, JSON_TYPE)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type + b"; charset=utf-8"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
