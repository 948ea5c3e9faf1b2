"""The job store: one async interface, two engines chosen by JOB_STORE_URL.

* unset or `sqlite:///path/jobs.db`: embedded SQLite (WAL) in DATA_DIR, on a thread of its own
  (ttmedia.jobs.store_sqlite). One server per store: a lock file refuses a second one.
* `postgresql://…`: PostgreSQL through an async psycopg pool (ttmedia.jobs.store_postgres),
  shared by any number of replicas.

What both guarantee, and the manager relies on:
* **the store is the queue.** A job is `queued` in the store before the client hears 201/202;
* **claims.** A replica runs a job only after `claim` moved it to `in_progress` with the replica
  as `owner` and a lease (`lease_expires_at`) that the replica renews while the job runs. The
  attempt number is the fencing token: every later write of that run (`progress`, `settle`) names
  (owner, attempt) and is ignored if the job has moved on (lease expired and taken over);
* **recovery.** A job whose lease expired is re-queued as its next attempt (or failed after
  JOB_MAX_ATTEMPTS) by whichever replica sees it first (`recover`);
* **an event log** (`job_events`): created, claimed, requeued, completed, … with the replica and
  attempt, so "nothing ran twice at once" can be checked after the fact;
* **holds.** A download holds its job for a while (`hold`); the retention sweep deletes only jobs
  nobody holds (`delete_unheld`), so a file is never deleted mid-download;
* nothing blocks the event loop: every method is awaitable.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ttmedia.jobs.models import SERVER_RESTART, Job, JobStatus, JobType

#: Statuses that hold a lease (a replica runs them), and those that count towards MAX_JOBS.
LEASED = (JobStatus.IN_PROGRESS.value, JobStatus.CANCELLING.value)
UNFINISHED = (JobStatus.QUEUED.value, *LEASED)
TERMINAL = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)

#: Outcomes a run reports to `settle`.
COMPLETED, FAILED, REQUEUE, REQUEUE_FREE, CANCELLED = "completed", "failed", "requeue", "requeue_free", "cancelled"

#: Notification kinds (LISTEN/NOTIFY on PostgreSQL, a direct call on SQLite).
NOTE_CANCEL, NOTE_NEW = "cancel", "new"

_JSON_COLUMNS = ("request_parameters", "payload", "result")
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StoreLocked(RuntimeError):
    """Another server process holds this DATA_DIR."""


class UnknownCursor(LookupError):
    pass


class StorageFull(RuntimeError):
    """The store's disk (or quota) is full: nothing more can be written."""


class TooManyJobs(RuntimeError):
    """MAX_JOBS unfinished jobs already exist (counted across every replica)."""


def is_storage_full(exc: BaseException) -> bool:
    return isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS)


@dataclass
class Recovered:
    """What `recover` did to a job whose lease had expired."""

    job: Job
    outcome: str  # "requeued" | "failed" | "cancelled"


def replica_id() -> str:
    """REPLICA_ID, else host-pid-random: unique per process, readable in the event log."""
    return os.environ.get("REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


Listener = Callable[[str, str], None]


class JobStore(ABC):
    """The interface both engines implement (see the module docstring)."""

    backend: str = ""
    #: True when one server owns the store (SQLite): every lease in it is this server's, so
    #: leases left at start-up belong to a dead process and are recovered at once.
    exclusive: bool = False

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.listener: Listener | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def is_open(self) -> bool: ...
    @abstractmethod
    async def open_if_exists(self) -> bool: ...
    @abstractmethod
    async def close(self) -> None: ...
    async def maintain(self) -> None:
        """Periodic housekeeping (the SQLite WAL checkpoint)."""

    # --- jobs -----------------------------------------------------------------------------------
    @abstractmethod
    async def create(self, job: Job, inputs: list[bytes], max_unfinished: int) -> tuple[Job, bool]:
        """Insert `job` (queued); with its Idempotency-Key already used, (that job, False).
        Raises TooManyJobs when `max_unfinished` jobs are unfinished."""
    @abstractmethod
    async def get(self, job_id: str) -> Job | None: ...
    @abstractmethod
    async def find_by_key(self, job_type: JobType, org_id: str, key: str) -> Job | None: ...
    @abstractmethod
    async def inputs(self, job_id: str) -> list[bytes]: ...
    @abstractmethod
    async def page(self, job_type: JobType, org_id: str | None, limit: int, after: str | None,
                   ascending: bool = False) -> tuple[list[Job], bool]:
        """`limit` jobs after the job `after`, newest first (oldest first if `ascending`); and
        whether more follow. UnknownCursor if `after` is not a job of this type (and org)."""
    @abstractmethod
    async def count_unfinished(self) -> int: ...

    # --- claims and leases ----------------------------------------------------------------------
    @abstractmethod
    async def claim(self, model: str, lease_s: float) -> Job | None:
        """Take the oldest queued job of `model` (in_progress, owned by this replica, attempt+1)."""
    @abstractmethod
    async def renew(self, job_ids: list[str], lease_s: float) -> dict[str, str]:
        """Extend this replica's leases; {job id: status} of those it still owns."""
    @abstractmethod
    async def progress(self, job_id: str, attempt: int, progress: int) -> bool: ...
    @abstractmethod
    async def settle(self, job_id: str, attempt: int, outcome: str, **fields: Any) -> Job | None:
        """End this replica's run `attempt` of a job: COMPLETED, FAILED, REQUEUE (the attempt
        counts), REQUEUE_FREE (it does not: a graceful shutdown) or CANCELLED. A job being
        cancelled ends `cancelled` whatever the outcome. None if the run no longer owns the job."""
    @abstractmethod
    async def request_cancel(self, job_id: str) -> Job:
        """queued → cancelled; in_progress → cancelling (and tell the owner). Others unchanged."""
    @abstractmethod
    async def recover(self, max_attempts: int, everyone: bool = False) -> list[Recovered]:
        """Settle jobs whose lease expired (`everyone`: every leased job, at an exclusive start)."""
    @abstractmethod
    async def fail_unserved(self, served: list[str], code: str, message: str) -> int: ...
    @abstractmethod
    async def fail(self, job_id: str, code: str, message: str, statuses: tuple[str, ...]) -> Job | None:
        """Fail a job (any owner) if its status is one of `statuses` (the stale-job sweep)."""

    # --- retention ------------------------------------------------------------------------------
    @abstractmethod
    async def stuck(self, before: float) -> list[Job]: ...
    @abstractmethod
    async def expired(self, before: float, limit: int = 1000) -> list[str]: ...
    @abstractmethod
    async def hold(self, job_id: str, seconds: float) -> bool:
        """Keep the retention sweep off this job's files for `seconds` (a download is running)."""
    @abstractmethod
    async def delete_unheld(self, job_id: str, force: bool = False) -> bool:
        """Delete the job and its rows unless a download holds it (`force`: even then); whether
        it was deleted."""

    # --- records, checkpoints, artifacts, events ------------------------------------------------
    @abstractmethod
    async def add_record(self, job_id: str, kind: str, step: int, data: dict[str, Any]) -> None: ...
    @abstractmethod
    async def records(self, job_id: str, kind: str) -> list[dict[str, Any]]: ...
    @abstractmethod
    async def forget_after(self, job_id: str, step: int) -> None: ...
    @abstractmethod
    async def add_checkpoint(self, job_id: str, ckpt_id: str, step: int, epoch: int,
                             metrics: dict[str, Any], uri: str) -> None: ...
    @abstractmethod
    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]: ...
    @abstractmethod
    async def checkpoint_uri(self, job_id: str, ckpt_id: str) -> str | None: ...
    @abstractmethod
    async def add_artifact(self, job_id: str, name: str, uri: str, size: int) -> None: ...
    @abstractmethod
    async def artifact(self, job_id: str, name: str) -> tuple[str, int] | None: ...
    @abstractmethod
    async def events(self, job_id: str | None = None) -> list[dict[str, Any]]: ...

    def notify(self, kind: str, arg: str) -> None:
        if self.listener is not None:
            self.listener(kind, arg)


def open_store(url: str, data_dir: str | os.PathLike[str], replica: str, pool_size: int = 5,
               checkpoint_seconds: float = 60.0) -> JobStore:
    """The store JOB_STORE_URL names (see the module docstring)."""
    if not url or url.startswith("sqlite:"):
        from ttmedia.jobs.store_sqlite import SqliteJobStore

        path = Path(url.removeprefix("sqlite://")) if url.startswith("sqlite://") and url != "sqlite://" else None
        if path is not None and str(path).startswith("/"):
            # sqlite:///abs/dir/jobs.db (three slashes: an absolute path), like SQLAlchemy.
            return SqliteJobStore(path.parent, replica, db_name=path.name, checkpoint_seconds=checkpoint_seconds)
        return SqliteJobStore(data_dir, replica, checkpoint_seconds=checkpoint_seconds)
    if url.startswith(("postgresql://", "postgres://")):
        from ttmedia.jobs.store_postgres import PostgresJobStore

        return PostgresJobStore(url, replica, pool_size=pool_size)
    raise ValueError(f"JOB_STORE_URL must be sqlite:///… or postgresql://…, not {url.split(':', 1)[0]}:…")


# --- rows <-> jobs (both engines store JSON as text, encoded with orjson) ------------------------

def job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "job_type": job.job_type.value, "org_id": job.org_id, "status": job.status.value,
        "model": job.model, "created_at": job.created_at, "started_at": job.started_at,
        "completed_at": job.completed_at, "progress": job.progress, "error_code": job.error_code,
        "error_message": job.error_message, "attempts": job.attempts,
        "request_parameters": orjson.dumps(job.request_parameters).decode(),
        "payload": orjson.dumps(job.payload).decode(),
        "result": orjson.dumps(job.result).decode() if job.result is not None else None,
        "idempotency_key": job.idempotency_key, "request_hash": job.request_hash,
    }


def row_job(row: Any) -> Job:
    return Job(
        id=row["id"], job_type=JobType(row["job_type"]), model=row["model"], created_at=row["created_at"],
        request_parameters=orjson.loads(row["request_parameters"]), org_id=row["org_id"],
        status=JobStatus(row["status"]), started_at=row["started_at"], completed_at=row["completed_at"],
        progress=row["progress"], error_code=row["error_code"], error_message=row["error_message"],
        attempts=row["attempts"], result=orjson.loads(row["result"]) if row["result"] else None,
        payload=orjson.loads(row["payload"]), idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"], owner=row["owner"],
    )


def row_checkpoint(row: Any) -> dict[str, Any]:
    """A checkpoints row as the manager reads it (its uri stays in the store: checkpoint_uri())."""
    return {"id": row["id"], "step": row["step"], "epoch": row["epoch"],
            "metrics": orjson.loads(row["metrics"]) if row["metrics"] else None,
            "created_at": int(row["created_at"])}


def encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (orjson.dumps(v).decode() if k in _JSON_COLUMNS and v is not None else v) for k, v in fields.items()}


def settled_status(current: str, outcome: str) -> str:
    """The status a run's outcome leads to from `current` (a cancel request wins)."""
    if current == JobStatus.CANCELLING.value or outcome == CANCELLED:
        return JobStatus.CANCELLED.value
    return {COMPLETED: JobStatus.COMPLETED.value, FAILED: JobStatus.FAILED.value,
            REQUEUE: JobStatus.QUEUED.value, REQUEUE_FREE: JobStatus.QUEUED.value}[outcome]


def settle_fields(status: str, outcome: str, attempt: int, fields: dict[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = {"status": status}
    if status == "queued":
        update.update(progress=0, owner=None, lease_expires_at=None)
        if outcome == REQUEUE_FREE:  # a deploy is not the job's fault: this start is not counted
            update["attempts"] = max(0, attempt - 1)
    else:
        update.update(completed_at=fields.pop("completed_at", time.time()), lease_expires_at=None)
        if status == "cancelled":
            fields = {k: v for k, v in fields.items() if k not in ("error_code", "error_message", "result")}
        update.update(fields)
    return update


def recovery(job: Job, max_attempts: int) -> tuple[dict[str, Any], str]:
    """What an expired lease leads to: (fields to set, outcome)."""
    now = time.time()
    if job.status is JobStatus.CANCELLING:
        return {"status": "cancelled", "completed_at": now, "lease_expires_at": None}, "cancelled"
    if job.attempts >= max_attempts:
        return {"status": "failed", "completed_at": now, "lease_expires_at": None, "error_code": SERVER_RESTART,
                "error_message": f"Job interrupted by a server restart after {job.attempts} attempt(s); "
                                 "giving up."}, "failed"
    return {"status": "queued", "progress": 0, "owner": None, "lease_expires_at": None}, "requeued"
