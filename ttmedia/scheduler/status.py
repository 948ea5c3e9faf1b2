"""A snapshot of the scheduler: each model and each worker as they stand now.

Plain values, no wire format: the handlers that report it (/tt-liveness) decide how it is
spelled. Taking one changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttmedia.scheduler.readiness import ModelState, WorkerState


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    pid: int | None  # None while no process runs
    alive: bool
    state: WorkerState
    devices: tuple[int, ...]
    mesh_shape: tuple[int, int]  # as the runner declared it (the default until it has)
    start_time: float | None  # wall clock of the current process's start
    ready_time: float | None  # wall clock of its READY
    restart_count: int
    error_count: int
    in_flight: int  # requests the worker holds, running or waiting inside it
    calls_ahead: int  # calls sent ahead to it, waiting for a running call to end
    last_error: str | None
    warmup_progress: float | None  # percent, while warming, if the runner reports it
    last_canary_ok: float | None  # wall clock of the last canary that passed


@dataclass(frozen=True)
class ModelStatus:
    name: str
    family: str
    state: ModelState
    queue_size: int  # requests waiting in the scheduler
    runner: str
    runner_target: str
    simulated: bool
    workers: tuple[WorkerStatus, ...]


@dataclass(frozen=True)
class SchedulerStatus:
    device: str
    max_queue_size: int
    models: tuple[ModelStatus, ...]
