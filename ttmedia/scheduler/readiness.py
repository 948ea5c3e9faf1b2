"""Per-model readiness, derived from the states of its workers (docs/architecture.md, Readiness)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class WorkerState(str, enum.Enum):
    STARTING = "starting"  # process spawned, not yet reporting
    WARMING = "warming"  # runner warming up
    READY = "ready"
    RESTARTING = "restarting"  # died; waiting out backoff before the next spawn
    FAILED = "failed"  # init failed or restarts exhausted; stays down until a reset
    STOPPED = "stopped"


class ModelState(str, enum.Enum):
    STARTING = "starting"
    WARMING = "warming"
    READY = "ready"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"
    DRAINING = "draining"

    @property
    def serving(self) -> bool:
        return self in (ModelState.READY, ModelState.DEGRADED)

    @property
    def reason(self) -> str:
        """Why a state does not serve (errors.READINESS_REASONS)."""
        return {
            ModelState.STARTING: "warming_up",
            ModelState.WARMING: "warming_up",
            ModelState.UNAVAILABLE: "no_workers",
            ModelState.FAILED: "init_failed",
            ModelState.DRAINING: "draining",
        }.get(self, "")


@dataclass(frozen=True)
class WorkerView:
    state: WorkerState
    restart_count: int
    eta_seconds: float  # expected seconds until ready; 0 when ready


def derive_state(workers: list[WorkerView], draining: bool) -> ModelState:
    if draining:
        return ModelState.DRAINING
    ready = sum(w.state is WorkerState.READY for w in workers)
    if ready:
        return ModelState.READY if ready == len(workers) else ModelState.DEGRADED
    if all(w.state in (WorkerState.FAILED, WorkerState.STOPPED) for w in workers):
        return ModelState.FAILED
    recovering = [w for w in workers if w.state not in (WorkerState.FAILED, WorkerState.STOPPED)]
    if any(w.state is WorkerState.RESTARTING or w.restart_count > 0 for w in recovering):
        return ModelState.UNAVAILABLE
    if any(w.state is WorkerState.WARMING for w in recovering):
        return ModelState.WARMING
    return ModelState.STARTING


#: Retry-After for states with no better estimate: a failed model needs an operator.
FAILED_RETRY_AFTER = 60.0


def retry_after(workers: list[WorkerView], state: ModelState, drain_remaining: float) -> float:
    """Seconds a client should wait before trying again: the soonest worker's ETA."""
    if state is ModelState.DRAINING:
        return max(drain_remaining, 1.0)
    etas = [w.eta_seconds for w in workers if w.state not in (WorkerState.FAILED, WorkerState.STOPPED)]
    if not etas:
        return FAILED_RETRY_AFTER
    return max(min(etas), 1.0)
