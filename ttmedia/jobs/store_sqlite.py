"""The embedded job store: SQLite (WAL) in DATA_DIR/jobs.db, on a thread of its own.

Why SQLite: a job must survive `kill -9` of the server. A committed WAL transaction is in the
OS page cache the moment `commit()` returns, so a killed process loses nothing it confirmed to a
client (synchronous=NORMAL only risks the last transactions on a *power* loss).

One connection, used only by one thread (`_thread`): the event loop hands each call to it and
awaits the answer, so a 10 MB job input, a slow disk or a WAL checkpoint never stalls a request
or a token stream. The thread also serialises every statement, which is all the locking needed.

The database is created lazily, on the first job: a server that never runs jobs leaves no files.
A lock file keeps two servers from sharing one DATA_DIR (both would "recover" the same jobs), so
this store is `exclusive`. The WAL is checkpointed (TRUNCATE) every `checkpoint_seconds` and on
close, so it does not keep the size of the largest input ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from ttmedia.jobs.models import Job, JobStatus, JobType, check_transition
from ttmedia.jobs.store import (
    LEASED,
    NOTE_CANCEL,
    NOTE_NEW,
    TERMINAL,
    UNFINISHED,
    JobStore,
    Recovered,
    StorageFull,
    StoreLocked,
    TooManyJobs,
    UnknownCursor,
    encode_fields,
    job_row,
    row_job,
    recovery,
    row_checkpoint,
    settle_fields,
    settled_status,
)

T = TypeVar("T")

#: Versioned migrations, applied in order on open (PRAGMA user_version records the last one).
#: Version 1 is the schema the first release created (IF NOT EXISTS: such a file is adopted).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, job_type TEXT NOT NULL, org_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL, model TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL,
        completed_at REAL, progress INTEGER NOT NULL DEFAULT 0, error_code TEXT, error_message TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, request_parameters TEXT NOT NULL, payload TEXT NOT NULL,
        result TEXT, idempotency_key TEXT, request_hash TEXT);
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
    """,
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    ALTER TABLE jobs ADD COLUMN hold_until REAL;
    ALTER TABLE checkpoints ADD COLUMN uri TEXT;
    CREATE INDEX jobs_queued ON jobs(model) WHERE status = 'queued';
    CREATE INDEX jobs_leased ON jobs(lease_expires_at) WHERE status IN ('in_progress', 'cancelling');
    CREATE INDEX jobs_finished ON jobs(completed_at) WHERE completed_at IS NOT NULL;
    CREATE TABLE artifacts (
        job_id TEXT NOT NULL, name TEXT NOT NULL, uri TEXT NOT NULL, bytes INTEGER NOT NULL,
        created_at REAL NOT NULL, PRIMARY KEY (job_id, name));
    CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, at REAL NOT NULL,
        replica TEXT NOT NULL, event TEXT NOT NULL, attempt INTEGER NOT NULL, detail TEXT);
    CREATE INDEX job_events_job ON job_events(job_id, seq);
    """,
]

#: The claim: the oldest queued job of one model, found through the partial index jobs_queued.
CLAIM_SQL = "SELECT id FROM jobs WHERE status = 'queued' AND model = ? ORDER BY rowid LIMIT 1"
_LEASED_MARKS = ", ".join(f"'{s}'" for s in LEASED)


class SqliteJobStore(JobStore):
    backend = "sqlite"
    exclusive = True

    def __init__(self, data_dir: str | os.PathLike[str], replica: str, db_name: str = "jobs.db",
                 checkpoint_seconds: float = 60.0) -> None:
        super().__init__(replica)
        self.data_dir = Path(data_dir).resolve()
        self.db_path = self.data_dir / db_name
        self.checkpoint_seconds = checkpoint_seconds
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_checkpoint = time.monotonic()
        self.thread_ids: set[int] = set()  # threads that ran statements (tests: never the loop's)

    # --- the store's thread ---------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ttmedia-jobstore")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StorageFull(f"the job store's disk is full ({self.db_path}): {exc}") from exc
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"the job store's disk is full ({self.data_dir}): {exc}") from exc
            raise

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open_if_exists(self) -> bool:
        if self.db_path.exists():
            await self._call(self._open)
        return self.is_open

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        lock_file = self._take_lock()
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")  # a reset WAL shrinks back to 64 MiB
            _migrate(conn)
        except BaseException:
            lock_file.close()
            raise
        self._conn, self._lock_file = conn, lock_file
        return conn

    def _take_lock(self) -> IO[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.data_dir / ".lock", "ab")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreLocked(f"another ttmedia server is using DATA_DIR {self.data_dir}") from None
        return lock_file

    def check_unlocked(self) -> None:
        """Raise StoreLocked now if another server holds the directory (taken and released at
        once; start-up calls it before any worker starts, off any event loop)."""
        if self._lock_file is None:
            self._take_lock().close()

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    async def maintain(self) -> None:
        if self.is_open and time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self._last_checkpoint = time.monotonic()
            await self._call(self._checkpoint)

    def _checkpoint(self) -> None:
        if self._conn is not None:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (on the store's thread); BEGIN IMMEDIATE: read-then-write is safe."""
        conn = self._open()
        self.thread_ids.add(threading.get_ident())
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self._conn is None:
            return []
        self.thread_ids.add(threading.get_ident())
        return list(self._conn.execute(sql, args))

    async def _read(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        if self._conn is None:
            return []
        return await self._call(self._rows, sql, args)

    def _event(self, conn: sqlite3.Connection, job_id: str, event: str, attempt: int, detail: str | None = None,
               ) -> None:
        conn.execute("INSERT INTO job_events (job_id, at, replica, event, attempt, detail) VALUES (?, ?, ?, ?, ?, ?)",
                     (job_id, time.time(), self.replica, event, attempt, detail))

    @staticmethod
    def _set(conn: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
        values = encode_fields(fields)
        conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in values)} WHERE id=?", (*values.values(), job_id))

    @staticmethod
    def _one(conn: sqlite3.Connection, job_id: str) -> Job:
        return row_job(conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    # --- jobs -----------------------------------------------------------------------------------

    async def create(self, job: Job, inputs: list[bytes], max_unfinished: int) -> tuple[Job, bool]:
        saved, created = await self._call(self._create, job, inputs, max_unfinished)
        if created:
            self.notify(NOTE_NEW, job.model)
        return saved, created

    def _create(self, job: Job, inputs: list[bytes], max_unfinished: int) -> tuple[Job, bool]:
        with self._tx() as conn:
            if job.idempotency_key:
                row = conn.execute("SELECT * FROM jobs WHERE job_type=? AND org_id=? AND idempotency_key=?",
                                   (job.job_type.value, job.org_id, job.idempotency_key)).fetchone()
                if row is not None:
                    return row_job(row), False
            (count,) = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({', '.join('?' * 3)})",
                                    UNFINISHED).fetchone()
            if count >= max_unfinished:
                raise TooManyJobs(str(count))
            values = job_row(job)
            conn.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         tuple(values.values()))
            conn.executemany("INSERT INTO job_inputs (job_id, idx, data) VALUES (?, ?, ?)",
                             [(job.id, i, data) for i, data in enumerate(inputs)])
            self._event(conn, job.id, "created", 0)
        return job, True

    async def get(self, job_id: str) -> Job | None:
        rows = await self._read("SELECT * FROM jobs WHERE id=?", job_id)
        return row_job(rows[0]) if rows else None

    async def find_by_key(self, job_type: JobType, org_id: str, key: str) -> Job | None:
        rows = await self._read("SELECT * FROM jobs WHERE job_type=? AND org_id=? AND idempotency_key=?",
                                job_type.value, org_id, key)
        return row_job(rows[0]) if rows else None

    async def inputs(self, job_id: str) -> list[bytes]:
        rows = await self._read("SELECT data FROM job_inputs WHERE job_id=? ORDER BY idx", job_id)
        return [bytes(r["data"]) for r in rows]

    async def page(self, job_type: JobType, org_id: str | None, limit: int, after: str | None,
                   ascending: bool = False) -> tuple[list[Job], bool]:
        if self._conn is None:
            if after:
                raise UnknownCursor(after)
            return [], False
        return await self._call(self._page, job_type, org_id, limit, after, ascending)

    def _page(self, job_type: JobType, org_id: str | None, limit: int, after: str | None,
              ascending: bool) -> tuple[list[Job], bool]:
        where, args = ["job_type=?"], [job_type.value]
        if org_id is not None:
            where.append("org_id=?")
            args.append(org_id)
        if after:
            cursor = self._rows(f"SELECT rowid FROM jobs WHERE id=? AND {' AND '.join(where)}", (after, *args))
            if not cursor:
                raise UnknownCursor(after)
            where.append("rowid > ?" if ascending else "rowid < ?")
            args.append(cursor[0]["rowid"])
        order = "ASC" if ascending else "DESC"
        rows = self._rows(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY rowid {order} LIMIT ?",
                          (*args, limit + 1))
        return [row_job(r) for r in rows[:limit]], len(rows) > limit

    async def count_unfinished(self) -> int:
        rows = await self._read("SELECT COUNT(*) AS n FROM jobs WHERE status IN (?, ?, ?)", *UNFINISHED)
        return int(rows[0]["n"]) if rows else 0

    # --- claims and leases ----------------------------------------------------------------------

    async def claim(self, model: str, lease_s: float) -> Job | None:
        if self._conn is None:
            return None
        return await self._call(self._claim, model, lease_s)

    def _claim(self, model: str, lease_s: float) -> Job | None:
        with self._tx() as conn:
            row = conn.execute(CLAIM_SQL, (model,)).fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute("UPDATE jobs SET status='in_progress', owner=?, lease_expires_at=?, attempts=attempts+1, "
                         "started_at=?, progress=0, error_code=NULL, error_message=NULL WHERE id=?",
                         (self.replica, now + lease_s, now, row["id"]))
            job = self._one(conn, row["id"])
            self._event(conn, job.id, "claimed", job.attempts)
        return job

    async def renew(self, job_ids: list[str], lease_s: float) -> dict[str, str]:
        if not job_ids or self._conn is None:
            return {}
        return await self._call(self._renew, job_ids, lease_s)

    def _renew(self, job_ids: list[str], lease_s: float) -> dict[str, str]:
        marks = ", ".join("?" * len(job_ids))
        with self._tx() as conn:
            conn.execute(f"UPDATE jobs SET lease_expires_at=? WHERE owner=? AND id IN ({marks}) "
                         f"AND status IN ({_LEASED_MARKS})", (time.time() + lease_s, self.replica, *job_ids))
            rows = conn.execute(f"SELECT id, status FROM jobs WHERE owner=? AND id IN ({marks}) "
                                f"AND status IN ({_LEASED_MARKS})", (self.replica, *job_ids)).fetchall()
        return {r["id"]: r["status"] for r in rows}

    async def progress(self, job_id: str, attempt: int, progress: int) -> bool:
        return await self._call(self._progress, job_id, attempt, progress)

    def _progress(self, job_id: str, attempt: int, progress: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE jobs SET progress=? WHERE id=? AND owner=? AND attempts=? "
                               f"AND status IN ({_LEASED_MARKS})", (progress, job_id, self.replica, attempt))
        return cur.rowcount > 0

    async def settle(self, job_id: str, attempt: int, outcome: str, **fields: Any) -> Job | None:
        return await self._call(self._settle, job_id, attempt, outcome, fields)

    def _settle(self, job_id: str, attempt: int, outcome: str, fields: dict[str, Any]) -> Job | None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT status FROM jobs WHERE id=? AND owner=? AND attempts=? "
                               f"AND status IN ({_LEASED_MARKS})", (job_id, self.replica, attempt)).fetchone()
            if row is None:
                return None
            status = settled_status(row["status"], outcome)
            check_transition(JobStatus(row["status"]), JobStatus(status))
            update = settle_fields(status, outcome, attempt, fields)
            self._set(conn, job_id, update)
            self._event(conn, job_id, status if status != "queued" else outcome, attempt, fields.get("error_message"))
            return self._one(conn, job_id)

    async def request_cancel(self, job_id: str) -> Job:
        job, notify = await self._call(self._request_cancel, job_id)
        if notify:
            self.notify(NOTE_CANCEL, job_id)
        return job

    def _request_cancel(self, job_id: str) -> tuple[Job, bool]:
        with self._tx() as conn:
            job = self._one(conn, job_id)
            if job.status is JobStatus.QUEUED:
                self._set(conn, job_id, {"status": "cancelled", "completed_at": time.time()})
                self._event(conn, job_id, "cancelled", job.attempts)
            elif job.status is JobStatus.IN_PROGRESS:
                self._set(conn, job_id, {"status": "cancelling"})
                self._event(conn, job_id, "cancel_requested", job.attempts)
            else:
                return job, job.status is JobStatus.CANCELLING
            return self._one(conn, job_id), job.status is JobStatus.IN_PROGRESS

    async def recover(self, max_attempts: int, everyone: bool = False) -> list[Recovered]:
        if self._conn is None:
            return []
        return await self._call(self._recover, max_attempts, everyone)

    def _recover(self, max_attempts: int, everyone: bool) -> list[Recovered]:
        out: list[Recovered] = []
        with self._tx() as conn:
            sql = f"SELECT * FROM jobs WHERE status IN ({_LEASED_MARKS})"
            args: tuple[Any, ...] = ()
            if not everyone:
                sql += " AND COALESCE(lease_expires_at, 0) < ?"
                args = (time.time(),)
            for row in conn.execute(sql, args).fetchall():
                job = row_job(row)
                update, outcome = recovery(job, max_attempts)
                self._set(conn, job.id, update)
                self._event(conn, job.id, f"lease_expired:{outcome}", job.attempts, job.owner)
                out.append(Recovered(self._one(conn, job.id), outcome))
        return out

    async def fail_unserved(self, served: list[str], code: str, message: str) -> int:
        if self._conn is None:
            return 0
        return await self._call(self._fail_unserved, served, code, message)

    def _fail_unserved(self, served: list[str], code: str, message: str) -> int:
        marks = ", ".join("?" * len(served)) or "''"
        with self._tx() as conn:
            rows = conn.execute(f"SELECT id, model FROM jobs WHERE status='queued' AND model NOT IN ({marks})",
                                tuple(served)).fetchall()
            for row in rows:
                self._set(conn, row["id"], {"status": "failed", "completed_at": time.time(), "error_code": code,
                                            "error_message": message.format(model=row["model"])})
                self._event(conn, row["id"], "failed", 0, code)
        return len(rows)

    async def fail(self, job_id: str, code: str, message: str, statuses: tuple[str, ...]) -> Job | None:
        return await self._call(self._fail, job_id, code, message, statuses)

    def _fail(self, job_id: str, code: str, message: str, statuses: tuple[str, ...]) -> Job | None:
        with self._tx() as conn:
            row = conn.execute("SELECT status, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["status"] not in statuses:
                return None
            self._set(conn, job_id, {"status": "failed", "completed_at": time.time(), "error_code": code,
                                     "error_message": message, "lease_expires_at": None})
            self._event(conn, job_id, "failed", row["attempts"], code)
            return self._one(conn, job_id)

    # --- retention ------------------------------------------------------------------------------

    async def stuck(self, before: float) -> list[Job]:
        return [row_job(r) for r in await self._read(
            f"SELECT * FROM jobs WHERE status IN ({_LEASED_MARKS}) AND COALESCE(started_at, created_at) < ?", before)]

    async def expired(self, before: float, limit: int = 1000) -> list[str]:
        return [r["id"] for r in await self._read(
            "SELECT id FROM jobs WHERE completed_at < ? AND status IN (?, ?, ?) LIMIT ?", before, *TERMINAL, limit)]

    async def hold(self, job_id: str, seconds: float) -> bool:
        return await self._call(self._hold, job_id, seconds)

    def _hold(self, job_id: str, seconds: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute("UPDATE jobs SET hold_until=MAX(COALESCE(hold_until, 0), ?) WHERE id=?",
                               (time.time() + seconds, job_id))
        return cur.rowcount > 0

    async def delete_unheld(self, job_id: str, force: bool = False) -> bool:
        return await self._call(self._delete_unheld, job_id, force)

    def _delete_unheld(self, job_id: str, force: bool = False) -> bool:
        with self._tx() as conn:
            held_before = float("inf") if force else time.time()
            cur = conn.execute("DELETE FROM jobs WHERE id=? AND COALESCE(hold_until, 0) < ?", (job_id, held_before))
            if cur.rowcount == 0:
                return False
            for table in ("job_inputs", "job_records", "checkpoints", "artifacts", "job_events"):
                conn.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))
        return True

    # --- records, checkpoints, artifacts, events ------------------------------------------------

    async def add_record(self, job_id: str, kind: str, step: int, data: dict[str, Any]) -> None:
        await self._call(self._write, "INSERT INTO job_records (job_id, kind, step, data) VALUES (?, ?, ?, ?)",
                         (job_id, kind, step, orjson.dumps(data).decode()))

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._tx() as conn:
            conn.execute(sql, args)

    async def records(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        rows = await self._read("SELECT data FROM job_records WHERE job_id=? AND kind=? ORDER BY seq", job_id, kind)
        return [orjson.loads(r["data"]) for r in rows]

    async def forget_after(self, job_id: str, step: int) -> None:
        await self._call(self._forget_after, job_id, step)

    def _forget_after(self, job_id: str, step: int) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM job_records WHERE job_id=? AND kind='metric' AND step>?", (job_id, step))
            conn.execute("DELETE FROM checkpoints WHERE job_id=? AND step>?", (job_id, step))

    async def add_checkpoint(self, job_id: str, ckpt_id: str, step: int, epoch: int, metrics: dict[str, Any],
                             uri: str) -> None:
        await self._call(self._write, "INSERT OR REPLACE INTO checkpoints (job_id, id, step, epoch, metrics, "
                         "created_at, uri) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (job_id, ckpt_id, step, epoch, orjson.dumps(metrics).decode(), time.time(), uri))

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return [row_checkpoint(r) for r in await self._read("SELECT * FROM checkpoints WHERE job_id=? ORDER BY step", job_id)]

    async def checkpoint_uri(self, job_id: str, ckpt_id: str) -> str | None:
        rows = await self._read("SELECT uri FROM checkpoints WHERE job_id=? AND id=?", job_id, ckpt_id)
        return (rows[0]["uri"] or None) if rows else None

    async def add_artifact(self, job_id: str, name: str, uri: str, size: int) -> None:
        await self._call(self._write, "INSERT OR REPLACE INTO artifacts (job_id, name, uri, bytes, created_at) "
                         "VALUES (?, ?, ?, ?, ?)", (job_id, name, uri, size, time.time()))

    async def artifact(self, job_id: str, name: str) -> tuple[str, int] | None:
        rows = await self._read("SELECT uri, bytes FROM artifacts WHERE job_id=? AND name=?", job_id, name)
        return (rows[0]["uri"], int(rows[0]["bytes"])) if rows else None

    async def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT job_id, at, replica, event, attempt, detail FROM job_events"
        rows = await (self._read(sql + " WHERE job_id=? ORDER BY seq", job_id) if job_id
                      else self._read(sql + " ORDER BY seq"))
        return [dict(r) for r in rows]

    async def explain_claim(self, model: str) -> list[str]:
        """The claim's query plan (tests and bench: it must search an index, not scan the table)."""
        return [r["detail"] for r in await self._read("EXPLAIN QUERY PLAN " + CLAIM_SQL, model)]


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
