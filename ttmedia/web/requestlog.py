"""Per-request plumbing outside Connexion's stack: X-Request-ID, the body-size cap, the trailing
slash rule, metrics, and one structured log line per request (LOG_REQUESTS).

It sits above Connexion's exception handling, so it sees every answer, problems included.
Deeper code adds facts to the request's note (ttmedia.web.context): the model, the problem reason.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ttmedia.web import problems
from ttmedia.web.context import RequestNote, current_note
from ttmedia.internals.connexion import keep_routing_record
from ttmedia.web.disconnect import CLIENT_CLOSED, run_until_disconnect
from ttmedia.observability.logs import request_line
from ttmedia.observability.metrics import Metrics
from ttmedia.web.routing import operation_of
from ttmedia.startup import quiet_lifespan_failure
from ttmedia.web.validation import PARSED_FORM

log = logging.getLogger("ttmedia.request")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
#: Generated request ids: unique, not secret. A random prefix per process and a counter cost a
#: fraction of uuid4's system call per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()

#: Probes and scrapes: LOG_REQUESTS=probes leaves out those that succeed.
PROBES = frozenset({"get_health", "get_livez", "get_liveness", "get_v2_live", "get_v2_ready", "get_v2_model_ready",
                    "get_metrics"})
#: Paths that end in "/" on purpose (Swagger UI's directory); any other is not a path of ours.
SLASH_PATHS = ("/ui/",)


def _problem_response(problem: problems.Problem, request_id: str) -> list[Message]:
    body = problem.render()
    headers = [(b"content-type", problems.PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()]
    return [{"type": "http.response.start", "status": problem.status, "headers": headers},
            {"type": "http.response.body", "body": body}]


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, early_gate: Any = None,
                 log_requests: str = "all") -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.early_gate = early_gate  # gate.EarlyGate: 503s without the full stack
        self.log_requests = log_requests
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = quiet_lifespan_failure(send)
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = _header(scope, b"x-request-id")
        request_id = supplied if supplied and _SAFE_ID.match(supplied) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        info = RequestNote(request_id)
        token = current_note.set(info)
        # Without it, Connexion's routing record never reaches _record() and every request is
        # counted as "unmatched".
        extensions = keep_routing_record(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            answer = self._early_answer(scope)
            if answer is not None:
                info.reason = answer.reason
                for message in _problem_response(answer, request_id):
                    await send_with_id(message)
                return
            if not await run_until_disconnect(self.app, scope, self._capped(receive), send_with_id):
                status = CLIENT_CLOSED
        finally:
            current_note.reset(token)
            form = extensions.get(PARSED_FORM)
            if form is not None:
                await form.close()  # spooled upload files go now, not when collected
            self._record(scope, info, status, time.perf_counter() - started)

    def _early_answer(self, scope: Scope) -> problems.Problem | None:
        """Answers that need neither routing nor the body: too large, no such path, not ready."""
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return problems.PayloadTooLarge(f"The request body exceeds {self.max_body_bytes} bytes.")
        path = scope["path"]
        if path.endswith("/") and path != "/" and not path.startswith(SLASH_PATHS):
            # Starlette would redirect to the path without the slash, on the Host header's say-so.
            return problems.NotFound(f"No such path: {path} (paths of this API do not end in '/').")
        if self.early_gate is not None:
            return self.early_gate.check(scope)  # type: ignore[no-any-return]
        return None

    def _capped(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive: a chunked body has no Content-Length to check."""
        seen = 0
        limit = self.max_body_bytes

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise problems.PayloadTooLarge(f"The request body exceeds {limit} bytes.")
            return message

        return capped

    def _record(self, scope: Scope, info: RequestNote, status: int, seconds: float) -> None:
        operation = operation_of(scope) or "unmatched"
        method = scope.get("method", "")
        key = (operation, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.requests.labels(operation, method, str(status))
        counter.inc()
        latency = self._latencies.get(operation)
        if latency is None:
            latency = self._latencies[operation] = self.metrics.latency.labels(operation)
        latency.observe(seconds)
        if status == 503:
            self.metrics.not_ready.labels(info.reason or "unknown").inc()
        if not log.isEnabledFor(logging.INFO) or (
                self.log_requests != "all" and status < 400
                and (self.log_requests == "errors" or operation in PROBES)):
            return
        request_line(log, {
            "request_id": info.request_id, "method": method, "path": scope.get("path", ""),
            "operation": operation, "status": status, "duration_ms": round(seconds * 1000, 3),
            "model": info.model, "reason": info.reason,
        })


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
