"""How handlers wait on the scheduler: sub-requests that stand or fall together, and failures
after a stream has begun, which can no longer change the status line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from ttmedia import problems
from ttmedia.context import note
from ttmedia.runtime import current

log = logging.getLogger("ttmedia.request")

T = TypeVar("T")


async def all_or_nothing(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call's result, in order. The first failure cancels the calls still waiting (they
    leave the queue, or the worker drops them before they reach the device) and is raised as
    it is, so a request for four images that cannot get one does not keep a device busy with
    the other three."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failures:
        raise failures[0]  # type: ignore[misc]
    return [t.result() for t in tasks]


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
