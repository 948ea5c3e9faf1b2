"""Per-request plumbing outside Connexion's stack: X-Request-ID, the body-size cap, metrics, and one
structured log line per request.

It sits above Connexion's exception handling, so it sees every answer, problems included.
Deeper code adds facts to the request's note (ttmedia.context): the model, the problem reason.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ttmedia import problems
from ttmedia.context import RequestNote, current_note
from ttmedia.routing import operation_of
from ttmedia.disconnect import CLIENT_CLOSED, run_until_disconnect
from ttmedia.metrics import Metrics

log = logging.getLogger("ttmedia.request")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _problem_response(problem: problems.Problem, request_id: str) -> list[Message]:
    body = problem.render()
    headers = [(b"content-type", problems.PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()]
    return [{"type": "http.response.start", "status": problem.status, "headers": headers},
            {"type": "http.response.body", "body": body}]


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, early_gate: Any = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.early_gate = early_gate  # gate.EarlyGate: 503s without the full stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = _header(scope, b"x-request-id")
        request_id = supplied if supplied and _SAFE_ID.match(supplied) else uuid.uuid4().hex
        info = RequestNote(request_id)
        token = current_note.set(info)
        # Connexion's routing records the operation in scope["extensions"] of a *shallow copy* of
        # the scope: without the dict already here (uvicorn sends none), that record never reaches
        # _record() and every request is counted as "unmatched".
        scope.setdefault("extensions", {})
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            length = _header(scope, b"content-length")
            if length and length.isdigit() and int(length) > self.max_body_bytes:
                too_large = problems.PayloadTooLarge(f"The request body exceeds {self.max_body_bytes} bytes.")
                info.reason = too_large.reason
                for message in _problem_response(too_large, request_id):
                    await send_with_id(message)
                return
            not_ready = self.early_gate.check(scope) if self.early_gate is not None else None
            if not_ready is not None:
                info.reason = not_ready.reason
                for message in _problem_response(not_ready, request_id):
                    await send_with_id(message)
                return
            if not await run_until_disconnect(self.app, scope, self._capped(receive), send_with_id):
                status = CLIENT_CLOSED
        finally:
            current_note.reset(token)
            self._record(scope, info, status, time.perf_counter() - started)

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
        self.metrics.requests.labels(operation, method, str(status)).inc()
        self.metrics.latency.labels(operation).observe(seconds)
        if status == 503:
            self.metrics.not_ready.labels(info.reason or "unknown").inc()
        if operation in ("get_metrics", "get_livez", "get_health") or not log.isEnabledFor(logging.INFO):
            return  # probes and scrapes: counted, not logged, or they drown the log
        log.info("request", extra={"fields": {
            "request_id": info.request_id, "method": method, "path": scope.get("path", ""),
            "operation": operation, "status": status, "duration_ms": round(seconds * 1000, 3),
            "model": info.model, "reason": info.reason,
        }})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class JSONFormatter(logging.Formatter):
    """One JSON object per line: what log shippers expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the same fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


def configure_logging(level: str, fmt: str) -> None:
    """LOG_FORMAT: json, text, or auto (text on a terminal, JSON otherwise)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ttmedia")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
