"""The job runner inside the server process: takes queued jobs from the store, runs each as an
asyncio task streaming from the scheduler, and keeps the store's state machine true.

Durability rules (the point of this module):
* the store is the queue: a job is `queued` in SQLite before the client hears 201/202, so a
  crash at any later moment loses nothing;
* on start, jobs left `in_progress` by a dead server are re-queued (their `attempts` count the
  starts, bounded by JOB_MAX_ATTEMPTS, then `failed` / `server_restart`), `cancelling` ones
  become `cancelled`;
* a graceful shutdown re-queues running jobs without charging an attempt: a deploy is not the
  job's fault.

At most JOB_CONCURRENCY_PER_MODEL jobs per model hold a device at once (default: one per worker),
so queued jobs wait in the durable store, not in the scheduler's in-memory queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ttmedia import problems
from ttmedia.jobs.kinds import JobKind, make_kinds, remove_outputs
from ttmedia.jobs.models import (
    MODEL_UNAVAILABLE,
    PROCESSING_ERROR,
    SERVER_RESTART,
    STALE_JOB,
    WORKER_LOST,
    Job,
    JobStatus,
    JobType,
)
from ttmedia.jobs.store import JobStore
from ttmedia.runners.types import FINAL_TYPES
from ttmedia.scheduler.pool import ModelPool
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.jobs")

#: How often the dispatcher looks again when nothing woke it (a model becoming ready is not an
#: event the scheduler publishes).
DISPATCH_TICK_S = 0.25

_USER, _SHUTDOWN, _STALE = "user", "shutdown", "stale"


class JobManager:
    def __init__(self, settings: Settings, scheduler: Scheduler) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.store = JobStore(settings.data_dir)
        self.kinds: dict[JobType, JobKind] = make_kinds(self.store, settings)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running: dict[str, int] = {}
        self._cancel_reason: dict[str, str] = {}
        self._wake: asyncio.Event | None = None
        self._background: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        if self.store.open_if_exists():
            self.recover()
            self.sweep()
        self._background = [asyncio.ensure_future(self._dispatch_loop()),
                            asyncio.ensure_future(self._cleanup_loop())]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        running = list(self.tasks.items())
        for job_id, task in running:
            self._cancel_reason.setdefault(job_id, _SHUTDOWN)
            task.cancel()
        await asyncio.gather(*self._background, *(t for _, t in running), return_exceptions=True)
        self.store.close()

    def recover(self) -> None:
        """Settle what a dead server left behind (see the module docstring)."""
        now = time.time()
        for job in self.store.with_status(JobStatus.CANCELLING):
            self.store.transition(job.id, JobStatus.CANCELLED, completed_at=now)
            self.kinds[job.job_type].discard(job)
        for job in self.store.with_status(JobStatus.IN_PROGRESS):
            if job.attempts >= self.settings.job_max_attempts:
                self.store.transition(job.id, JobStatus.FAILED, completed_at=now, error_code=SERVER_RESTART,
                                      error_message=f"Job interrupted by a server restart after "
                                                    f"{job.attempts} attempt(s); giving up.")
            else:
                self.store.transition(job.id, JobStatus.QUEUED, progress=0)
                log.warning("job %s was running when the server stopped; re-queued (attempt %d of %d next)",
                            job.id, job.attempts + 1, self.settings.job_max_attempts)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the client-facing operations -----------------------------------------------------------

    def create(self, job: Job, inputs: list[bytes] | None = None) -> tuple[Job, bool]:
        """Persist a new queued job; (existing job, False) for a repeated Idempotency-Key."""
        if job.idempotency_key:
            existing = self._find_idempotent(job)
            if existing is not None:
                return existing, False
        if self.store.count_unfinished() >= self.settings.max_jobs:
            raise problems.QueueFull(f"{self.settings.max_jobs} jobs are already queued or running.",
                                     retry_after=60)
        saved, created = self.store.create(job, inputs or [])
        if not created:
            return self._same_request(saved, job), False
        self.wake()
        return saved, True

    def _find_idempotent(self, job: Job) -> Job | None:
        assert job.idempotency_key
        saved = self.store.find_by_key(job.job_type, job.org_id, job.idempotency_key)
        return None if saved is None else self._same_request(saved, job)

    @staticmethod
    def _same_request(saved: Job, job: Job) -> Job:
        if saved.request_hash != job.request_hash:
            raise problems.Conflict(
                f"Idempotency-Key {job.idempotency_key!r} was already used for a different request "
                f"(job {saved.id}).")
        return saved

    def get(self, job_id: str, job_type: JobType, org_id: str | None = None) -> Job | None:
        """The job, if it exists, has this type and (when given) belongs to this organisation."""
        job = self.store.get(job_id)
        if job is None or job.job_type is not job_type or (org_id is not None and job.org_id != org_id):
            return None
        return job

    def cancel(self, job: Job) -> Job:
        """queued → cancelled at once; in_progress → cancelling, then cancelled when the run stops."""
        if job.status.terminal:
            raise problems.Conflict(f"Job {job.id} is already {job.status.value}; it cannot be cancelled.")
        if job.status is JobStatus.CANCELLING:
            return job
        if job.status is JobStatus.QUEUED:
            return self.store.transition(job.id, JobStatus.CANCELLED, completed_at=time.time())
        updated = self.store.transition(job.id, JobStatus.CANCELLING)
        task = self.tasks.get(job.id)
        if task is not None:
            self._cancel_reason[job.id] = _USER
            task.cancel()
        else:  # in_progress in the store but not running here: nothing to stop
            updated = self.store.transition(job.id, JobStatus.CANCELLED, completed_at=time.time())
        return updated

    # --- dispatch -------------------------------------------------------------------------------

    def _limit(self, pool: ModelPool) -> int:
        return self.settings.job_concurrency_per_model or max(1, len(pool.workers))

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                self.dispatch()
            except Exception:  # a bug here must not stop every future job
                log.exception("job dispatch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DISPATCH_TICK_S)

    def dispatch(self) -> None:
        if not self.store.is_open:
            return
        pools = self.scheduler.pools
        free = {name for name, pool in pools.items()
                if pool.state().serving and self.running.get(name, 0) < self._limit(pool)}
        queued = self.store.with_status(JobStatus.QUEUED)
        for job in queued:
            if job.id in self.tasks:
                continue
            pool = pools.get(job.model)
            if pool is None:
                self.store.transition(job.id, JobStatus.FAILED, completed_at=time.time(),
                                      error_code=MODEL_UNAVAILABLE,
                                      error_message=f"Model {job.model} is no longer served by this server.")
                continue
            if job.model not in free:
                continue
            self._start(job, pool)
            if self.running[pool.name] >= self._limit(pool):
                free.discard(pool.name)

    def _start(self, job: Job, pool: ModelPool) -> None:
        started = self.store.transition(job.id, JobStatus.IN_PROGRESS, started_at=time.time(),
                                        attempts=job.attempts + 1, progress=0, error_code=None,
                                        error_message=None)
        self.running[pool.name] = self.running.get(pool.name, 0) + 1
        task = asyncio.ensure_future(self._run(started, pool))
        self.tasks[job.id] = task

        def done(_t: asyncio.Task[None]) -> None:
            self.tasks.pop(job.id, None)
            self._cancel_reason.pop(job.id, None)
            self.running[pool.name] -= 1
            self.wake()

        task.add_done_callback(done)

    # --- one run --------------------------------------------------------------------------------

    async def _run(self, job: Job, pool: ModelPool) -> None:
        kind = self.kinds[job.job_type]
        try:
            result = await self._stream(job, pool, kind)
            self.store.transition(job.id, JobStatus.COMPLETED, completed_at=time.time(), progress=100,
                                  result=result)
            log.info("job %s completed (attempt %d)", job.id, job.attempts)
        except asyncio.CancelledError:
            self._cancelled(job, kind, self._cancel_reason.get(job.id, _SHUTDOWN))
        except (problems.NotReady, problems.QueueFull) as exc:
            # The device went away under the job (worker died, restarting, draining): that is
            # the server's failure, so the job runs again while attempts remain.
            self._retry_or_fail(job, WORKER_LOST, exc.detail)
        except problems.Problem as exc:
            self._fail(job, PROCESSING_ERROR, exc.detail)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._fail(job, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")

    async def _stream(self, job: Job, pool: ModelPool, kind: JobKind) -> dict[str, Any] | None:
        request = await kind.prepare(job)
        stream = pool.open_stream(request)
        last = 0
        try:
            async for chunk in stream:
                if isinstance(chunk, FINAL_TYPES):
                    return await asyncio.to_thread(kind.finish, job, chunk)
                progress = kind.on_chunk(job, chunk)
                if progress is not None and progress != last:
                    last = progress
                    self.store.update(job.id, progress=progress)
        finally:
            # Closing the iterator is what tells the worker to stop (pool sends CANCEL).
            await stream.aclose()  # type: ignore[attr-defined]
        raise RuntimeError("the runner ended the stream without a final chunk")

    def _cancelled(self, job: Job, kind: JobKind, reason: str) -> None:
        current = self.store.get(job.id)
        if current is None or current.status.terminal:
            return  # deleted, or already failed by the stale sweep
        if reason == _USER or current.status is JobStatus.CANCELLING:
            self.store.transition(job.id, JobStatus.CANCELLED, completed_at=time.time())
            kind.discard(job)
            log.info("job %s cancelled", job.id)
        else:  # shutdown: run again after the restart, this attempt not counted
            self.store.transition(job.id, JobStatus.QUEUED, progress=0, attempts=max(0, job.attempts - 1))

    def _retry_or_fail(self, job: Job, code: str, message: str) -> None:
        if job.attempts < self.settings.job_max_attempts:
            log.warning("job %s lost its device (%s); re-queued", job.id, message)
            self.store.transition(job.id, JobStatus.QUEUED, progress=0)
        else:
            self._fail(job, code, f"{message} (after {job.attempts} attempts)")

    def _fail(self, job: Job, code: str, message: str) -> None:
        current = self.store.get(job.id)
        if current is None or current.status.terminal:
            return
        status = JobStatus.CANCELLED if current.status is JobStatus.CANCELLING else JobStatus.FAILED
        fields: dict[str, Any] = {"completed_at": time.time()}
        if status is JobStatus.FAILED:
            fields.update(error_code=code, error_message=message)
        self.store.transition(job.id, status, **fields)
        log.warning("job %s %s: %s", job.id, status.value, message)

    # --- retention and stale jobs ---------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_cleanup_interval_seconds)
            try:
                self.sweep()
            except Exception:
                log.exception("job cleanup failed")

    def sweep(self) -> None:
        """Fail jobs stuck past JOB_MAX_STUCK_TIME_SECONDS; delete terminal ones past retention."""
        now = time.time()
        for job in self.store.stuck(now - self.settings.job_max_stuck_time_seconds):
            self.store.transition(job.id, JobStatus.FAILED, completed_at=now, error_code=STALE_JOB,
                                  error_message=f"Job ran longer than {self.settings.job_max_stuck_time_seconds:g} s.")
            task = self.tasks.get(job.id)
            if task is not None:
                self._cancel_reason[job.id] = _STALE
                task.cancel()
        for job in self.store.expired(now - self.settings.job_retention_seconds):
            if job.id in self.tasks:
                continue
            remove_outputs(self.store.data_dir, job.id)
            self.store.delete(job.id)
