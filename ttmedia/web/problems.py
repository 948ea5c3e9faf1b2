"""The error vocabulary: one exception type per problem, rendered as RFC 9457 problem+json.

Handlers and the scheduler raise these; app.py renders them in one place. `detail` is always a
string so clients written for the upstream server (`{"detail": ...}`) keep working.
"""

from __future__ import annotations

import math
from http import HTTPStatus

import orjson

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    status: int = 500
    reason: str = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def body(self) -> dict[str, object]:
        return {
            "type": f"https://ttmedia.dev/problems/{self.reason}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
            **self.extra,
        }

    def render(self) -> bytes:
        return orjson.dumps(self.body())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status} {self.reason}: {self.detail})"


class MalformedBody(Problem):
    status, reason = 400, "malformed_body"


class ContextLengthExceeded(Problem):
    """400, as upstream, vLLM and OpenAI answer it (OpenAI clients catch it as BadRequestError):
    the prompt (plus the tokens asked for) does not fit the model's context."""

    status, reason = 400, "context_length_exceeded"


class Unauthorized(Problem):
    status, reason = 401, "unauthorized"

    def __init__(self, detail: str = "Missing or invalid API key.", **kw: object) -> None:
        super().__init__(detail, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="ttmedia"')


class NotFound(Problem):
    status, reason = 404, "not_found"


class ModelNotFound(Problem):
    status, reason = 404, "model_not_found"


class MethodNotAllowed(Problem):
    status, reason = 405, "method_not_allowed"

    def __init__(self, detail: str, allow: list[str]) -> None:
        super().__init__(detail, headers={"Allow": ", ".join(allow)})


class Conflict(Problem):
    status, reason = 409, "conflict"


class PayloadTooLarge(Problem):
    status, reason = 413, "payload_too_large"


class UnsupportedMediaType(Problem):
    status, reason = 415, "unsupported_media_type"


class RangeNotSatisfiable(Problem):
    status, reason = 416, "range_not_satisfiable"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail, headers={"Content-Range": f"bytes */{size}"})


class InvalidRequest(Problem):
    status, reason = 422, "invalid_request"


def retry_after_header(seconds: float) -> dict[str, str]:
    """Retry-After is whole seconds and at least 1, whatever the estimate."""
    value = 1 if not math.isfinite(seconds) else max(1, math.ceil(seconds))
    return {"Retry-After": str(value)}


class QueueFull(Problem):
    status, reason = 429, "queue_full"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, headers=retry_after_header(retry_after))


class Internal(Problem):
    status, reason = 500, "internal"


class NotImplementedYet(Problem):
    status, reason = 501, "not_implemented"


class NotReady(Problem):
    """503: the model cannot serve now. `reason` is one of the readiness reasons in docs/architecture.md."""

    status = 503
    REASONS = ("warming_up", "no_workers", "init_failed", "draining", "worker_lost", "device_error")

    def __init__(self, detail: str, *, reason: str, retry_after: float, **extra: object) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown readiness reason {reason!r}")
        super().__init__(detail, headers=retry_after_header(retry_after), **extra)
        self.reason = reason


class Timeout(Problem):
    status, reason = 504, "timeout"


class JobStoreUnavailable(Problem):
    """503: the shared job store (PostgreSQL) cannot be reached; the devices may be fine."""

    status, reason = 503, "job_store_unavailable"

    def __init__(self, detail: str, retry_after: float = 5) -> None:
        super().__init__(detail, headers=retry_after_header(retry_after))


class InsufficientStorage(Problem):
    """507: the disk (or quota) that must hold the job is full; retrying later may succeed."""

    status, reason = 507, "insufficient_storage"
