"""The readiness gate: 503 + Retry-After for a media operation whose model family cannot serve.

It sits after routing and security and before body validation (docs/architecture.md, Request path), so a
wrong method is still 405, a missing key 401, and a warming model answers without the body
being read. Operations opt in with `x-ttmedia-family` in the spec.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ttmedia.internals.connexion import record_operation_id
from ttmedia.scheduler.errors import SchedulerError
from ttmedia.web import problems
from ttmedia.web.routing import operation_of
from ttmedia.web.runtime import Runtime
from ttmedia.web.scheduler_problems import as_problem
from ttmedia.web.security import header_authorized

#: scope["extensions"] key: the early gate found this family serving; the gate need not ask again.
GATED = "ttmedia.gated"


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
            family = self.families.get(operation_of(scope))
            if family is not None and scope.get("extensions", {}).get(GATED) != family:
                try:
                    self.runtime.scheduler.gate(family)
                except SchedulerError as refused:
                    raise as_problem(refused) from None
        await self.app(scope, receive, send)


class EarlyGate:
    """The readiness gate's answer for a request that plainly reaches a media operation.

    Most 503s go to clients polling a warming model; answering them before Connexion's stack
    costs a fraction of the full path (bench scenario 2). It only answers when the outcome is
    certain to be the same as the full path's: a concrete path of a gated operation, the right
    method, a valid key when auth is on, no organisation scoping. Everything else, and every
    ready model, goes through the full path.
    """

    #: Seconds a computed answer is reused while no worker of the family changes state: only
    #: its Retry-After estimate ages, and that is whole seconds.
    REUSE_S = 0.25

    def __init__(self, spec: dict[str, Any], runtime: Runtime) -> None:
        self.runtime = runtime
        self._answers: dict[str, tuple[Any, float, problems.Problem | None]] = {}
        self.routes: dict[tuple[str, str], tuple[str, bool, str]] = {}
        default_security = bool(spec.get("security"))
        for path, item in spec.get("paths", {}).items():
            for method, op in item.items():
                if (isinstance(op, dict) and "x-ttmedia-family" in op and "{" not in path
                        and not op.get("x-ttmedia-org-scoped")):
                    secured = bool(op["security"]) if "security" in op else default_security
                    self.routes[(method.upper(), path)] = (op["x-ttmedia-family"], secured, op["operationId"])

    def check(self, scope: Scope) -> problems.Problem | None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", "")))
        if route is None:
            return None
        family, secured, operation_id = route
        settings = self.runtime.settings
        if secured and settings.auth_enabled and not self._authorized(scope, settings.accepted_api_keys):
            return None  # the full path answers 401
        answer = self._answer(family)
        extensions = scope.setdefault("extensions", {})
        if answer is None:
            extensions[GATED] = family  # serving: the full path's gate need not ask again
        elif isinstance(answer, problems.NotReady):
            # Label the answer with its operation, as routing would have (metrics, logs).
            record_operation_id(scope, operation_id)
            return answer
        return None

    def _answer(self, family: str) -> problems.Problem | None:
        """The scheduler's gate for the family: None (serving) or the problem it raises. Reused
        while the family's workers keep their states (they decide it), for at most REUSE_S."""
        pools = [pl for pl in self.runtime.scheduler.pools.values() if pl.model.family == family]
        states = tuple((pl.draining, tuple((w.state, w.restart_count) for w in pl.workers)) for pl in pools)
        now = time.monotonic()
        known = self._answers.get(family)
        if known is not None and known[0] == states and now - known[1] < self.REUSE_S:
            return known[2]
        answer: problems.Problem | None = None
        try:
            self.runtime.scheduler.gate(family)
        except SchedulerError as refused:
            answer = as_problem(refused)
        self._answers[family] = (states, now, answer)
        return answer

    @staticmethod
    def _authorized(scope: Scope, keys: tuple[str, ...]) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return header_authorized(value, keys)
        return False
