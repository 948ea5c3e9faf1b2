"""The organisation header that scopes fine-tuning jobs (upstream `X-TT-Organization`).

The spec declares the header as a required parameter of every org-scoped operation (marked
`x-ttmedia-org-scoped: true`). Left to Connexion, a missing header would be a parameter error
(422); the contract says 401 `unauthorized` (docs/architecture.md, error table): no organisation is an
identity problem, like no API key. So this check runs after security and before validation.

ORG_ID_HEADER may rename the header (a proxy that sets its own); the value is then copied to the
spec's header name, so validation and handlers see one name.
"""

from __future__ import annotations

from typing import Any

from connexion import request
from starlette.types import ASGIApp, Receive, Scope, Send

from ttmedia.web import problems
from ttmedia.web.routing import operation_of
from ttmedia.settings import Settings

#: The header name in openapi.yaml.
SPEC_HEADER = "X-TT-Organization"


def org_scoped_operations(spec: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and operation.get("x-ttmedia-org-scoped"):
                out.add(operation["operationId"])
    return out


class OrganizationCheck:
    def __init__(self, app: ASGIApp, settings: Settings, operations: set[str]) -> None:
        self.app = app
        self.name = settings.org_id_header
        self.header = settings.org_id_header.lower().encode("latin-1")
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if operation_of(scope) in self.operations:
                scope = self._check(scope)
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Scope:
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        value = next((v for k, v in headers if k.lower() == self.header), b"").strip()
        if not value:
            raise problems.Unauthorized(
                f"The organisation header {self.name} is required and must not be blank.")
        spec_name = SPEC_HEADER.lower().encode()
        if self.header != spec_name:
            headers = [(k, v) for k, v in headers if k.lower() != spec_name] + [(spec_name, value)]
            scope = {**scope, "headers": headers}
        return scope


def current_org() -> str:
    """The calling organisation (present: the middleware above guarantees it)."""
    return str(request.headers.get(SPEC_HEADER, "")).strip()
