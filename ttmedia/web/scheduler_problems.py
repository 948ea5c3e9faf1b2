"""The one table from the scheduler's errors to HTTP problems.

The scheduler says what happened (ttmedia/scheduler/errors.py); this says what a client is
told: status, reason and Retry-After. Every path that answers a scheduler error goes through
`as_problem`: the app's error handler, the readiness gates, and streams that fail after their
200 (handlers/_calls.py).
"""

from __future__ import annotations

from collections.abc import Callable

from ttmedia.web import problems
from ttmedia.scheduler import errors

_Build = Callable[[errors.SchedulerError], problems.Problem]


def _not_ready(exc: errors.SchedulerError) -> problems.Problem:
    assert isinstance(exc, errors.NotReady)
    extra = {k: v for k, v in (("model", exc.model), ("state", exc.state)) if v is not None}
    return problems.NotReady(exc.message, reason=exc.reason, retry_after=exc.retry_after, **extra)


def _queue_full(exc: errors.SchedulerError) -> problems.Problem:
    assert isinstance(exc, errors.QueueFull)
    return problems.QueueFull(exc.message, retry_after=exc.retry_after)


#: Scheduler error → the problem it is answered with. Looked up along the error's class
#: hierarchy, so WorkerLost and DeviceFailed answer as NotReady (503, their own reason).
TABLE: dict[type[errors.SchedulerError], _Build] = {
    errors.NotReady: _not_ready,  # 503 + Retry-After, reason = the readiness reason
    errors.QueueFull: _queue_full,  # 429 queue_full + Retry-After
    errors.CallTimedOut: lambda exc: problems.Timeout(exc.message),  # 504 timeout
    errors.RunnerRejected: lambda exc: problems.InvalidRequest(exc.message),  # 422 invalid_request
    errors.RunnerFailed: lambda exc: problems.Internal(exc.message),  # 500 internal
    errors.RunnerIncomplete: lambda exc: problems.Internal(exc.message),  # 500 internal
    errors.ResetFailed: lambda exc: problems.Internal(exc.message),  # 500 internal
    errors.UnknownModel: lambda exc: problems.ModelNotFound(exc.message),  # 404 model_not_found
    errors.UnknownDevice: lambda exc: problems.NotFound(exc.message),  # 404 not_found
}


def as_problem(exc: errors.SchedulerError) -> problems.Problem:
    """The problem a client is told for `exc`."""
    for cls in type(exc).__mro__:
        build = TABLE.get(cls)  # type: ignore[call-overload]
        if build is not None:
            return build(exc)
    return problems.Internal(exc.message)
