"""The readiness gate: 503 + Retry-After for a media operation whose model family cannot serve.

It sits after routing and security and before body validation (DESIGN.md, Request path), so a
wrong method is still 405, a missing key 401, and a warming model answers without the body
being read. Operations opt in with `x-ttmedia-family` in the spec.
"""

from __future__ import annotations

from typing import Any

from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.types import ASGIApp, Receive, Scope, Send

from ttmedia.runtime import Runtime


def families_by_operation(spec: dict[str, Any]) -> dict[str, str]:
    """operationId → model family, from the spec's `x-ttmedia-family` extensions."""
    out: dict[str, str] = {}
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and "x-ttmedia-family" in operation:
                out[operation["operationId"]] = operation["x-ttmedia-family"]
    return out


class ReadinessGate:
    def __init__(self, app: ASGIApp, runtime: Runtime, families: dict[str, str]) -> None:
        self.app = app
        self.runtime = runtime
        self.families = families

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            operation_id = scope.get("extensions", {}).get(ROUTING_CONTEXT, {}).get("operation_id") or ""
            family = self.families.get(operation_id.rpartition(".")[2])
            if family is not None:
                self.runtime.scheduler.gate(family)
        await self.app(scope, receive, send)
