"""What handlers share around a scheduler call: choosing the model, and failures after a
stream has begun, which can no longer change the status line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ttmedia.web import problems
from ttmedia.web.context import note
from ttmedia.web.scheduler_problems import as_problem
from ttmedia.web.runtime import current
from ttmedia.scheduler.errors import SchedulerError
from ttmedia.scheduler.pool import ModelPool

log = logging.getLogger("ttmedia.request")


def choose_pool(family: str, model: str | None = None,
                serves: Callable[[ModelPool], bool] | None = None) -> ModelPool:
    """The pool that serves this request (Scheduler.pool), named in the request's log line."""
    pool = current().scheduler.pool(family, model, serves=serves)
    note(model=pool.name)
    return pool


def stream_failure(exc: BaseException) -> dict[str, Any]:
    """A stream failed after its 200 was sent: log it, count it, note its reason for the
    request's log line, and return the error object to send in-band."""
    if isinstance(exc, SchedulerError):
        exc = as_problem(exc)  # the same table as a failure before the 200
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
