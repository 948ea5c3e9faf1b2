"""What can go wrong with a request the scheduler holds, said in the scheduler's own words.

The scheduler knows nothing of HTTP: these carry what happened and what a caller needs to act
on it (a readiness reason, how long until trying again makes sense), never a status code. The
web side maps each to its answer in one table (ttmedia/web/scheduler_problems.py); the job manager
reads them directly.
"""

from __future__ import annotations

#: Why a model cannot serve now: its readiness (ModelState.reason) or what befell the request.
READINESS_REASONS = ("warming_up", "no_workers", "init_failed", "draining", "worker_lost", "device_error")


class SchedulerError(Exception):
    """A request the scheduler cannot serve; str(error) says why, in words for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(SchedulerError):
    """The model cannot take the request now; trying again after `retry_after` seconds may work.

    `model` and `state` name the model and its readiness state, when one model is meant."""

    def __init__(self, message: str, *, reason: str, retry_after: float,
                 model: str | None = None, state: str | None = None) -> None:
        if reason not in READINESS_REASONS:
            raise ValueError(f"unknown readiness reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.model = model
        self.state = state


class WorkerLost(NotReady):
    """The worker process holding the request died, and the request could not be run again."""

    def __init__(self, message: str, *, retry_after: float, model: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(message, reason="worker_lost", retry_after=retry_after, model=model, state=state)


class DeviceFailed(NotReady):
    """The device broke under the request (it is not replayed: the same input may break it again)."""

    def __init__(self, message: str, *, retry_after: float, model: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(message, reason="device_error", retry_after=retry_after, model=model, state=state)


class QueueFull(SchedulerError):
    """The model's queue is at its bound; `retry_after` estimates when a place frees up."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CallTimedOut(SchedulerError):
    """No answer within the request's deadline, or the device made no progress on it."""


class RunnerRejected(SchedulerError):
    """The runner refused the request as invalid for its model (RunnerRequestError)."""


class RunnerFailed(SchedulerError):
    """The runner raised on the request: a fault in the runner, not in the request."""


class RunnerIncomplete(SchedulerError):
    """The runner lacks something its family needs (an LLM runner without a tokenizer)."""


class UnknownModel(SchedulerError):
    """No served model matches the name (or none serves the family)."""


class UnknownDevice(SchedulerError):
    """No worker uses the device named."""


class ResetFailed(SchedulerError):
    """RESET_DEVICE_COMMAND failed; the message carries its exit code and the end of its stderr."""
