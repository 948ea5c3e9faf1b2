"""The job runner inside each server process (replica): claims queued jobs from the store, runs
each as an asyncio task streaming from the scheduler, and keeps the store's state machine true.

Durability rules (the point of this module):
* the store is the queue: a job is `queued` in the store before the client hears 201/202, so a
  crash at any later moment loses nothing;
* a replica runs a job only after claiming it (store.claim: owner + lease) and renews the lease
  every JOB_LEASE_SECONDS/3 while it runs. A job whose lease expired (its replica died, or lost
  the database for longer than a lease) is re-queued as its next attempt by whichever replica
  sees it first, bounded by JOB_MAX_ATTEMPTS (then `failed` / `server_restart`); `cancelling`
  ones become `cancelled`. With the embedded store one server owns every lease, so at start-up
  all of them are recovered at once;
* every write of a run is fenced by (owner, attempt): a replica that lost its lease cannot
  overwrite what the next attempt does, and stops its run when a renewal tells it so;
* a graceful shutdown re-queues running jobs without charging an attempt: a deploy is not the
  job's fault.

At most JOB_CONCURRENCY_PER_MODEL jobs per model hold a replica's devices at once (default: one
per worker), so queued jobs wait in the durable store, not in the scheduler's in-memory queue.
Nothing here blocks the event loop: the store is awaited, files are removed on threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ttmedia.web import problems
from ttmedia.jobs.artifacts import LocalArtifactStore
from ttmedia.jobs.kinds import JobKind, make_kinds
from ttmedia.jobs.models import (
    INSUFFICIENT_STORAGE,
    MODEL_UNAVAILABLE,
    PROCESSING_ERROR,
    STALE_JOB,
    WORKER_LOST,
    Job,
    JobStatus,
    JobType,
)
from ttmedia.jobs.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    LEASED,
    NOTE_CANCEL,
    NOTE_NEW,
    REQUEUE,
    REQUEUE_FREE,
    Recovered,
    StorageFull,
    TooManyJobs,
    is_storage_full,
    open_store,
    replica_id,
)
from ttmedia.runners.types import FINAL_TYPES
from ttmedia.scheduler import errors as scheduler_errors
from ttmedia.scheduler.pool import ModelPool
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.jobs")

#: How often the dispatcher looks again when nothing woke it (a model becoming ready is not an
#: event the scheduler publishes). Each look is one indexed claim per model with a free slot.
DISPATCH_TICK_S = 0.25
#: The model families whose requests are jobs.
JOB_FAMILIES = frozenset({"video", "training"})

_USER, _SHUTDOWN, _STALE, _LOST = "user", "shutdown", "stale", "lost"


class LeaseLost(RuntimeError):
    """This replica no longer owns the job it was running (its lease expired and was taken)."""


class JobManager:
    def __init__(self, settings: Settings, scheduler: Scheduler) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.replica = settings.replica_id or replica_id()
        self.store = open_store(settings.job_store_url, settings.data_dir, self.replica,
                                pool_size=settings.job_store_pool_size,
                                checkpoint_seconds=settings.job_store_checkpoint_seconds)
        self.store.listener = self._on_note
        self.artifacts = LocalArtifactStore(settings.artifact_dir or settings.data_dir)
        self.kinds: dict[JobType, JobKind] = make_kinds(self.store, self.artifacts, settings)
        self.lease_s = settings.job_lease_seconds
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running: dict[str, int] = {}
        self._stop_reason: dict[str, str] = {}
        self._settling: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._background: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        if await self.store.open_if_exists():
            self._log_recovered(await self.store.recover(self.settings.job_max_attempts,
                                                         everyone=self.store.exclusive))
            if self.store.exclusive:
                await self.store.fail_unserved(list(self.scheduler.pools), MODEL_UNAVAILABLE,
                                               "Model {model} is no longer served by this server.")
            await self.sweep()
        self._background = [asyncio.ensure_future(self._dispatch_loop()),
                            asyncio.ensure_future(self._cleanup_loop()),
                            asyncio.ensure_future(self._lease_loop())]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        running = list(self.tasks.items())
        for job_id, _task in running:
            self._stop(job_id, _SHUTDOWN)
        await asyncio.gather(*self._background, *(t for _, t in running), return_exceptions=True)
        await self.store.close()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_note(self, kind: str, arg: str) -> None:
        """A store notification: a cancel of a job (maybe ours), or a new job (look now)."""
        if kind == NOTE_CANCEL:
            self._stop(arg, _USER)
        elif kind == NOTE_NEW:
            self.wake()

    def _stop(self, job_id: str, reason: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None and not task.done() and job_id not in self._settling:
            self._stop_reason.setdefault(job_id, reason)
            task.cancel()

    def _log_recovered(self, recovered: list[Recovered]) -> None:
        for item in recovered:
            job = item.job
            if item.outcome == "requeued":
                log.warning("job %s lost its run (lease expired); re-queued (attempt %d of %d next)",
                            job.id, job.attempts + 1, self.settings.job_max_attempts)
            else:
                log.warning("job %s lost its run (lease expired); %s", job.id, item.outcome)
        if any(item.outcome == "requeued" for item in recovered):
            self.wake()

    # --- the client-facing operations -----------------------------------------------------------

    async def create(self, job: Job, inputs: list[bytes] | None = None) -> tuple[Job, bool]:
        """Persist a new queued job; (existing job, False) for a repeated Idempotency-Key."""
        if job.idempotency_key and self.store.is_open:
            saved = await self.store.find_by_key(job.job_type, job.org_id, job.idempotency_key)
            if saved is not None:
                return self._same_request(saved, job), False
        try:
            saved, created = await self.store.create(job, inputs or [], self.settings.max_jobs)
        except TooManyJobs:
            raise problems.QueueFull(f"{self.settings.max_jobs} jobs are already queued or running.",
                                     retry_after=60) from None
        except StorageFull as exc:
            raise problems.InsufficientStorage(f"The job store has no room for this job: {exc}") from None
        except OSError as exc:
            if is_storage_full(exc):
                raise problems.InsufficientStorage(f"The job store has no room for this job: {exc}") from None
            raise
        if not created:
            return self._same_request(saved, job), False
        self.wake()
        return saved, True

    @staticmethod
    def _same_request(saved: Job, job: Job) -> Job:
        if saved.request_hash != job.request_hash:
            raise problems.Conflict(
                f"Idempotency-Key {job.idempotency_key!r} was already used for a different request "
                f"(job {saved.id}).")
        return saved

    async def get(self, job_id: str, job_type: JobType, org_id: str | None = None) -> Job | None:
        """The job, if it exists, has this type and (when given) belongs to this organisation."""
        job = await self.store.get(job_id)
        if job is None or job.job_type is not job_type or (org_id is not None and job.org_id != org_id):
            return None
        return job

    async def cancel(self, job: Job) -> Job:
        """queued → cancelled at once; in_progress → cancelling, then cancelled when the run stops
        (on whichever replica runs it: the store tells that replica at once)."""
        if job.status.terminal:
            raise problems.Conflict(f"Job {job.id} is already {job.status.value}; it cannot be cancelled.")
        updated = await self.store.request_cancel(job.id)
        if updated.status.terminal and updated.status is not JobStatus.CANCELLED:
            raise problems.Conflict(f"Job {job.id} is already {updated.status.value}; it cannot be cancelled.")
        if updated.status is JobStatus.CANCELLING:
            self._stop(job.id, _USER)
        return updated

    # --- dispatch -------------------------------------------------------------------------------

    def _limit(self, pool: ModelPool) -> int:
        return self.settings.job_concurrency_per_model or max(1, len(pool.workers))

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        quiet_until = 0.0
        while True:
            self._wake.clear()
            try:
                await self.dispatch()
            except Exception:  # a bug or a lost database must not stop every future job
                if time.monotonic() >= quiet_until:  # once per 30 s while it keeps failing
                    log.exception("job dispatch failed (next report in 30 s if it goes on)")
                    quiet_until = time.monotonic() + 30
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DISPATCH_TICK_S)

    async def dispatch(self) -> None:
        if not self.store.is_open:
            return
        for name, pool in list(self.scheduler.pools.items()):
            if pool.model.family not in JOB_FAMILIES:
                continue
            while pool.state().serving and self.running.get(name, 0) < self._limit(pool):
                job = await self.store.claim(name, self.lease_s)
                if job is None:
                    break
                self._start(job, pool)

    def _start(self, job: Job, pool: ModelPool) -> None:
        self.running[pool.name] = self.running.get(pool.name, 0) + 1
        task = asyncio.ensure_future(self._run(job, pool))
        self.tasks[job.id] = task

        def done(_t: asyncio.Task[None]) -> None:
            self.tasks.pop(job.id, None)
            self._stop_reason.pop(job.id, None)
            self.running[pool.name] -= 1
            self.wake()

        task.add_done_callback(done)

    # --- leases ---------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew this replica's leases; recover jobs whose lease expired elsewhere."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not self.store.is_open:
                    continue
                ids = [job_id for job_id in self.tasks if job_id not in self._settling]
                owned = await self.store.renew(ids, self.lease_s)
                last_ok = time.monotonic()
                for job_id in ids:
                    status = owned.get(job_id)
                    if status is None:
                        log.warning("job %s: this replica no longer owns it; stopping its run", job_id)
                        self._stop(job_id, _LOST)
                    elif status == JobStatus.CANCELLING.value:  # a cancel whose notification was lost
                        self._stop(job_id, _USER)
                self._log_recovered(await self.store.recover(self.settings.job_max_attempts))
                await self.store.maintain()
            except Exception:
                log.exception("job lease renewal failed")
                if time.monotonic() - last_ok > self.lease_s:
                    # Others take these jobs over now; running on would run them twice.
                    for job_id in list(self.tasks):
                        self._stop(job_id, _LOST)

    # --- one run --------------------------------------------------------------------------------

    async def _run(self, job: Job, pool: ModelPool) -> None:
        kind = self.kinds[job.job_type]
        try:
            result = await self._stream(job, pool, kind)
            await self._settle(job, kind, COMPLETED, progress=100, result=result)
            log.info("job %s completed (attempt %d)", job.id, job.attempts)
        except asyncio.CancelledError:
            reason = self._stop_reason.get(job.id, _SHUTDOWN)
            if reason == _USER:
                await self._settle(job, kind, CANCELLED)
                log.info("job %s cancelled", job.id)
            elif reason == _SHUTDOWN:  # run again after the restart, this attempt not counted
                await self._settle(job, kind, REQUEUE_FREE)
            # _STALE: the sweep already failed it; _LOST: another replica owns it now.
        except LeaseLost:
            log.warning("job %s: lease lost mid-run; another replica runs it now", job.id)
        except (scheduler_errors.NotReady, scheduler_errors.QueueFull) as exc:
            # The device went away under the job (worker died, restarting, draining): that is
            # the server's failure, so the job runs again while attempts remain.
            if job.attempts < self.settings.job_max_attempts:
                log.warning("job %s lost its device (%s); re-queued", job.id, exc.message)
                await self._settle(job, kind, REQUEUE)
            else:
                await self._fail(job, kind, WORKER_LOST, f"{exc.message} (after {job.attempts} attempts)")
        except (problems.Problem, scheduler_errors.SchedulerError) as exc:
            detail = str(exc)  # a problem's detail, a scheduler error's message
            code = INSUFFICIENT_STORAGE if self.artifacts.out_of_space(job.id, detail) else PROCESSING_ERROR
            await self._fail(job, kind, code, detail)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if is_storage_full(exc) or self.artifacts.out_of_space(job.id, message):
                await self._fail(job, kind, INSUFFICIENT_STORAGE, f"No room to write the job's output: {exc}")
            else:
                log.exception("job %s failed", job.id)
                await self._fail(job, kind, PROCESSING_ERROR, message)

    async def _stream(self, job: Job, pool: ModelPool, kind: JobKind) -> dict[str, Any] | None:
        request = await kind.prepare(job)
        stream = pool.open_stream(request)
        last = 0
        try:
            async for chunk in stream:
                if isinstance(chunk, FINAL_TYPES):
                    return await kind.finish(job, chunk)
                progress = await kind.on_chunk(job, chunk)
                if progress is not None and progress != last:
                    last = progress
                    if not await self.store.progress(job.id, job.attempts, progress):
                        raise LeaseLost(job.id)
        finally:
            # Closing the iterator is what tells the worker to stop (pool sends CANCEL).
            await stream.aclose()  # type: ignore[attr-defined]
        raise RuntimeError("the runner ended the stream without a final chunk")

    async def _fail(self, job: Job, kind: JobKind, code: str, message: str) -> None:
        settled = await self._settle(job, kind, FAILED, error_code=code, error_message=message)
        if settled is not None:
            log.warning("job %s %s: %s", job.id, settled.status.value, message)

    async def _settle(self, job: Job, kind: JobKind, outcome: str, **fields: Any) -> Job | None:
        """End this run in the store (fenced by owner and attempt). A full or unreachable store is
        retried for a while; after that the lease expires and recovery settles the job."""
        self._settling.add(job.id)
        try:
            for delay in (0.2, 0.5, 1, 2, 4, 8, 0):
                try:
                    settled = await self.store.settle(job.id, job.attempts, outcome, **fields)
                    break
                except Exception as exc:
                    if not delay:
                        log.error("job %s: could not record its end (%s); its lease will expire", job.id, exc)
                        return None
                    log.warning("job %s: recording its end failed (%s); retrying in %g s", job.id, exc, delay)
                    await asyncio.sleep(delay)
            if settled is not None and settled.status is JobStatus.CANCELLED:
                await kind.discard(job)
            return settled
        finally:
            self._settling.discard(job.id)

    # --- retention and stale jobs ---------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_cleanup_interval_seconds)
            try:
                await self.sweep()
            except Exception:
                log.exception("job cleanup failed")

    async def sweep(self) -> None:
        """Fail jobs stuck past JOB_MAX_STUCK_TIME_SECONDS; delete terminal ones past retention
        (unless a download holds them: they go at a later sweep)."""
        now = time.time()
        if not self.store.is_open:
            return
        for job in await self.store.stuck(now - self.settings.job_max_stuck_time_seconds):
            failed = await self.store.fail(job.id, STALE_JOB,
                                           f"Job ran longer than {self.settings.job_max_stuck_time_seconds:g} s.",
                                           LEASED)
            if failed is not None:
                self._stop(job.id, _STALE)  # on another replica, its next renewal stops the run
        for job_id in await self.store.expired(now - self.settings.job_retention_seconds):
            if job_id in self.tasks:
                continue
            if await self.store.delete_unheld(job_id):
                await self.artifacts.remove(job_id)
