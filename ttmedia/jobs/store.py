"""Durable job storage: SQLite (WAL) in DATA_DIR/jobs.db.

Why SQLite: a job must survive `kill -9` of the server. A committed WAL transaction is in the
OS page cache the moment `commit()` returns, so a killed process loses nothing it confirmed to a
client (synchronous=NORMAL only risks the last transactions on a *power* loss, which is the
trade-off every WAL user makes). One connection, guarded by a lock, used from the event loop:
every statement here is small, so a thread hop per call would cost more than it saves.

The database is created lazily, on the first job: a server that never runs jobs leaves no files.
A lock file keeps two servers from sharing one DATA_DIR (both would "recover" the same jobs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ttmedia.jobs.models import Job, JobStatus, JobType, check_transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    job_type TEXT NOT NULL,
    org_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    progress INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    request_parameters TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT,
    idempotency_key TEXT,
    request_hash TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(job_type, org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, idx));
CREATE TABLE IF NOT EXISTS job_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, kind TEXT NOT NULL,
    step INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_records_job ON job_records(job_id, kind);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL,
    metrics TEXT, created_at REAL NOT NULL, PRIMARY KEY (job_id, id));
"""

_JSON_COLUMNS = ("request_parameters", "payload", "result")


class StoreLocked(RuntimeError):
    """Another server process holds this DATA_DIR."""


class UnknownCursor(LookupError):
    pass


class JobStore:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.db_path = self.data_dir / "jobs.db"
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._lock = threading.RLock()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def open_if_exists(self) -> bool:
        if self.db_path.exists():
            self._open()
        return self.is_open

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is not None:
                return self._conn
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.data_dir / ".lock", "ab")  # noqa: SIM115 - held while open
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                raise StoreLocked(f"another ttmedia server is using DATA_DIR {self.data_dir}") from None
            conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            self._conn, self._lock_file = conn, lock_file
            return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE so a read-then-write cannot race."""
        with self._lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._conn is None:
                return []
            return list(self._conn.execute(sql, tuple(args)))

    # --- jobs -----------------------------------------------------------------------------------

    def create(self, job: Job, inputs: list[bytes]) -> tuple[Job, bool]:
        """Insert `job`; with an idempotency key already used, return (that job, False) instead."""
        with self._tx() as conn:
            if job.idempotency_key:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE job_type=? AND org_id=? AND idempotency_key=?",
                    (job.job_type.value, job.org_id, job.idempotency_key)).fetchone()
                if row is not None:
                    return _job(row), False
            values = _row(job)
            conn.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         tuple(values.values()))
            conn.executemany("INSERT INTO job_inputs (job_id, idx, data) VALUES (?, ?, ?)",
                             [(job.id, i, data) for i, data in enumerate(inputs)])
        return job, True

    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def find_by_key(self, job_type: JobType, org_id: str, key: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE job_type=? AND org_id=? AND idempotency_key=?",
                          (job_type.value, org_id, key))
        return _job(rows[0]) if rows else None

    def inputs(self, job_id: str) -> list[bytes]:
        return [bytes(r["data"]) for r in self._read("SELECT data FROM job_inputs WHERE job_id=? ORDER BY idx",
                                                     (job_id,))]

    def page(self, job_type: JobType, org_id: str | None, limit: int, after: str | None) -> tuple[list[Job], bool]:
        """Newest first (insertion order), `limit` jobs after the job `after`; and whether more follow."""
        where, args = ["job_type=?"], [job_type.value]
        if org_id is not None:
            where.append("org_id=?")
            args.append(org_id)
        if after:
            cursor = self._read(f"SELECT rowid FROM jobs WHERE id=? AND {' AND '.join(where)}", [after, *args])
            if not cursor:
                raise UnknownCursor(after)
            where.append("rowid < ?")
            args.append(cursor[0]["rowid"])
        rows = self._read(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY rowid DESC LIMIT ?",
                          [*args, limit + 1])
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, *statuses: JobStatus) -> list[Job]:
        marks = ", ".join("?" * len(statuses))
        return [_job(r) for r in self._read(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid",
                                            [s.value for s in statuses])]

    def count_unfinished(self) -> int:
        rows = self._read("SELECT COUNT(*) AS n FROM jobs WHERE status IN (?, ?, ?)",
                          (JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value, JobStatus.CANCELLING.value))
        return int(rows[0]["n"]) if rows else 0

    def update(self, job_id: str, **fields: Any) -> None:
        """Fields that do not change the status (progress, result…)."""
        if not fields:
            return
        values = {k: (orjson.dumps(v).decode() if k in _JSON_COLUMNS and v is not None else v)
                  for k, v in fields.items()}
        with self._tx() as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in values)} WHERE id=?",
                         (*values.values(), job_id))

    def transition(self, job_id: str, new: JobStatus, **fields: Any) -> Job:
        """Move a job to `new` (checked against the state machine, atomically) and set `fields`."""
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            check_transition(JobStatus(row["status"]), new)
            values = {k: (orjson.dumps(v).decode() if k in _JSON_COLUMNS and v is not None else v)
                      for k, v in {**fields, "status": new.value}.items()}
            conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in values)} WHERE id=?",
                         (*values.values(), job_id))
            job = _job(conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        return job

    def delete(self, job_id: str) -> None:
        with self._tx() as conn:
            for table, column in (("jobs", "id"), ("job_inputs", "job_id"), ("job_records", "job_id"),
                                  ("checkpoints", "job_id")):
                conn.execute(f"DELETE FROM {table} WHERE {column}=?", (job_id,))

    def expired(self, before: float) -> list[Job]:
        return [_job(r) for r in self._read(
            "SELECT * FROM jobs WHERE status IN (?, ?, ?) AND completed_at IS NOT NULL AND completed_at < ?",
            (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value, before))]

    def stuck(self, before: float) -> list[Job]:
        return [_job(r) for r in self._read(
            "SELECT * FROM jobs WHERE status IN (?, ?) AND COALESCE(started_at, created_at) < ?",
            (JobStatus.IN_PROGRESS.value, JobStatus.CANCELLING.value, before))]

    # --- training records -----------------------------------------------------------------------

    def add_record(self, job_id: str, kind: str, step: int, data: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO job_records (job_id, kind, step, data) VALUES (?, ?, ?, ?)",
                         (job_id, kind, step, orjson.dumps(data).decode()))

    def records(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        return [orjson.loads(r["data"]) for r in self._read(
            "SELECT data FROM job_records WHERE job_id=? AND kind=? ORDER BY seq", (job_id, kind))]

    def forget_after(self, job_id: str, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop what they had recorded."""
        with self._tx() as conn:
            conn.execute("DELETE FROM job_records WHERE job_id=? AND kind='metric' AND step>?", (job_id, step))
            conn.execute("DELETE FROM checkpoints WHERE job_id=? AND step>?", (job_id, step))

    def add_checkpoint(self, job_id: str, ckpt_id: str, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO checkpoints (job_id, id, step, epoch, metrics, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (job_id, ckpt_id, step, epoch, orjson.dumps(metrics).decode(), time.time()))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return [{"id": r["id"], "step": r["step"], "epoch": r["epoch"],
                 "metrics": orjson.loads(r["metrics"]) if r["metrics"] else None,
                 "created_at": int(r["created_at"])}
                for r in self._read("SELECT * FROM checkpoints WHERE job_id=? ORDER BY step", (job_id,))]


def _row(job: Job) -> dict[str, Any]:
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


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], job_type=JobType(row["job_type"]), model=row["model"], created_at=row["created_at"],
        request_parameters=orjson.loads(row["request_parameters"]), org_id=row["org_id"],
        status=JobStatus(row["status"]), started_at=row["started_at"], completed_at=row["completed_at"],
        progress=row["progress"], error_code=row["error_code"], error_message=row["error_message"],
        attempts=row["attempts"], result=orjson.loads(row["result"]) if row["result"] else None,
        payload=orjson.loads(row["payload"]), idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
    )
