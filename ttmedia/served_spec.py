"""Serve the contract exactly as written: /openapi.yaml is the file's bytes, /openapi.json its JSON.

Connexion 3.3 serves a `$ref`-resolved spec with `servers` rewritten; clients, linters and SDK
generators should get the document this repository publishes. This ASGI middleware sits before
Connexion's Swagger UI middleware and answers those two paths itself; Swagger UI (/ui/) loads
/openapi.json and resolves the `$ref`s in the browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

Scope = dict[str, Any]

YAML_TYPE = b"application/yaml"
JSON_TYPE = b"application/json"


class ServeSpecFile:
    def __init__(self, app: Any, spec_file: Path) -> None:
        self.app = app
        raw = Path(spec_file).read_bytes()
        parsed = yaml.safe_load(raw.decode("utf-8"))
        as_json = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.documents: dict[str, tuple[bytes, bytes]] = {
            "/openapi.yaml": (raw, YAML_TYPE),
            "/openapi.json": (as_json, JSON_TYPE),
        }

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        document = self.documents.get(scope.get("path", "")) if scope["type"] == "http" else None
        if document is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, content_type = document
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type + b"; charset=utf-8"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
