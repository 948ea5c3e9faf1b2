"""Failures after a stream has begun, which can no longer change the status line."""

from __future__ import annotations

import logging
from typing import Any

from ttmedia.web import problems
from ttmedia.web.context import note
from ttmedia.web.runtime import current

log = logging.getLogger("ttmedia.request")


def stream_failure(exc: BaseException) -> dict[str, Any]:
    """A stream failed after its 200 was sent: log it, count it, note its reason for the
    request's log line, and return the error object to send in-band."""
    problem = exc if isinstance(exc, problems.Problem) else None
    reason = problem.reason if problem is not None else "internal"
    note(reason=reason)
    current().metrics.stream_failures.labels(reason).inc()
    if problem is None:
        log.error("stream failed", exc_info=exc)
    else:
        log.warning("stream failed after its response began: %s", problem.detail,
                    extra={"fields": {"reason": reason, "status": problem.status}})
    if problem is not None:
        return {"message": problem.detail, "type": problem.reason, "code": problem.status}
    return {"message": "internal error", "type": "internal", "code": 500}
