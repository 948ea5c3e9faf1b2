"""Routing facts taken from the spec: which methods a path allows, which operation a request
reached, and OpenAPI's matching rule that Starlette does not follow: concrete paths before
templated ones.

`GET /v1/videos/generations/i2v` names the concrete path `/v1/videos/generations/i2v`, which
has only POST, so the answer is 405 with `Allow: POST`. Starlette's router would instead match
the templated `GET /v1/videos/generations/{job_id}` with job_id "i2v" and answer 422.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ttmedia.internals.connexion import routed_operation_id
from ttmedia.web.problems import MethodNotAllowed

_METHODS = {"get", "put", "post", "delete", "patch"}


def operation_of(scope: Scope) -> str:
    """The operationId the request was routed to ("" before routing or for an unknown path)."""
    return routed_operation_id(scope).rpartition(".")[2]


def allowed_methods(path_item: dict[str, Any]) -> list[str]:
    """The methods a spec path allows, as `Allow` lists them (HEAD with GET, as Starlette serves it)."""
    methods = sorted(m.upper() for m in path_item if m in _METHODS)
    return methods + (["HEAD"] if "GET" in methods else [])


def concrete_paths(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Every path without a template, with the methods it allows."""
    return {path: allowed_methods(item) for path, item in spec.get("paths", {}).items() if "{" not in path}


class AllowedMethods:
    """Every method of each spec path, for a complete `Allow` on 405; concrete paths match first."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.concrete = concrete_paths(spec)
        self.templated: list[tuple[re.Pattern[str], list[str]]] = []
        for path, item in spec.get("paths", {}).items():
            if "{" in path:
                pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
                self.templated.append((re.compile(f"^{pattern}$"), allowed_methods(item)))

    def for_path(self, path: str) -> list[str]:
        if path in self.concrete:
            return self.concrete[path]
        return next((methods for pattern, methods in self.templated if pattern.match(path)), [])


def shadows_template(spec: dict[str, Any], path: str) -> bool:
    """True when a templated path of the spec also matches this concrete path."""
    parts = path.strip("/").split("/")
    for other in spec.get("paths", {}):
        if "{" in other:
            other_parts = other.strip("/").split("/")
            if len(other_parts) == len(parts) and all(
                o == p or (o.startswith("{") and o.endswith("}")) for o, p in zip(other_parts, parts, strict=True)
            ):
                return True
    return False


class ConcretePathsFirst:
    def __init__(self, app: ASGIApp, spec: dict[str, Any]) -> None:
        self.app = app
        # Only concrete paths that a template could steal need the check.
        self.paths = {p: m for p, m in concrete_paths(spec).items() if shadows_template(spec, p)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.paths:
            allowed = self.paths.get(scope["path"])
            if allowed is not None and scope["method"] not in allowed:
                raise MethodNotAllowed(f"{scope['method']} is not allowed here; allowed: {', '.join(allowed)}.",
                                       allowed)
        await self.app(scope, receive, send)
