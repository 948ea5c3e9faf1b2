"""The shared job store: PostgreSQL through psycopg 3 (async, pooled), for N replicas.

* **Migrations** are versioned (`MIGRATIONS`, recorded in `ttmedia_schema`) and applied by every
  server on start, inside one transaction holding an advisory lock: replicas that start at once
  wait for each other, and the second finds nothing left to do.
* **Claims** take the oldest queued job of a model with `FOR UPDATE SKIP LOCKED` through the
  partial index `jobs_queued (model, seq) WHERE status = 'queued'`: replicas never wait for each
  other's claims and never take the same job; the cost does not grow with the queue.
* **Leases** use the database's clock (`clock_timestamp()`), so replicas' clocks do not matter.
* **Cancels** are sent with `pg_notify` in the cancelling transaction; every replica LISTENs on
  one dedicated connection and stops its run at once (renewals are the backstop if a
  notification is lost with a connection).
* **Idempotency-Key** is the unique index `jobs_idempotency`; **MAX_JOBS** is counted under a
  transaction-scoped advisory lock, so two replicas cannot both admit the last slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ttmedia.web import problems
from ttmedia.jobs.models import Job, JobStatus, JobType, check_transition
from ttmedia.jobs.store import (
    NOTE_CANCEL,
    NOTE_NEW,
    TERMINAL,
    JobStore,
    Recovered,
    StorageFull,
    TooManyJobs,
    UnknownCursor,
    encode_fields,
    job_row,
    recovery,
    row_checkpoint,
    row_job,
    settle_fields,
    settled_status,
)

log = logging.getLogger("ttmedia.jobs")

CHANNEL = "ttmedia_jobs"
#: Advisory lock keys (arbitrary, fixed): schema migrations, and job admission (MAX_JOBS).
MIGRATION_LOCK = 7_202_611_601
ADMISSION_LOCK = 7_202_611_602
NOW = "extract(epoch from clock_timestamp())"
POOL_TIMEOUT_S = 3.0

MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        seq bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order; no index of its own (see CLAIM_SQL)
        id text PRIMARY KEY, job_type text NOT NULL, org_id text NOT NULL DEFAULT '',
        status text NOT NULL, model text NOT NULL, created_at double precision NOT NULL,
        started_at double precision, completed_at double precision, progress integer NOT NULL DEFAULT 0,
        error_code text, error_message text, attempts integer NOT NULL DEFAULT 0,
        request_parameters text NOT NULL, payload text NOT NULL, result text,
        idempotency_key text, request_hash text,
        owner text, lease_expires_at double precision, hold_until double precision);
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (job_type, org_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_queued ON jobs (model, seq) WHERE status = 'queued';
    CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE status IN ('in_progress', 'cancelling');
    CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL;
    CREATE INDEX jobs_page ON jobs (job_type, seq);
    CREATE INDEX jobs_page_org ON jobs (job_type, org_id, seq);
    CREATE TABLE job_inputs (
        job_id text NOT NULL, idx integer NOT NULL, data bytea NOT NULL, PRIMARY KEY (job_id, idx));
    CREATE TABLE job_records (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id text NOT NULL, kind text NOT NULL,
        step integer NOT NULL, data text NOT NULL);
    CREATE INDEX job_records_job ON job_records (job_id, kind, seq);
    CREATE TABLE checkpoints (
        job_id text NOT NULL, id text NOT NULL, step integer NOT NULL, epoch integer NOT NULL,
        metrics text, created_at double precision NOT NULL, uri text, PRIMARY KEY (job_id, id));
    CREATE TABLE artifacts (
        job_id text NOT NULL, name text NOT NULL, uri text NOT NULL, bytes bigint NOT NULL,
        created_at double precision NOT NULL, PRIMARY KEY (job_id, name));
    CREATE TABLE job_events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id text NOT NULL,
        at double precision NOT NULL, replica text NOT NULL, event text NOT NULL,
        attempt integer NOT NULL, detail text);
    CREATE INDEX job_events_job ON job_events (job_id, seq);
    """,
]

#: Unfinished jobs, counted through the two partial indexes (queued; leased), never the table.
COUNT_UNFINISHED = ("((SELECT COUNT(*) FROM jobs WHERE status = 'queued') + (SELECT COUNT(*) FROM jobs "
                    "WHERE status IN ('in_progress', 'cancelling')))")
#: The claim's search. Only the partial index jobs_queued (model, seq) gives this order: `seq`
#: has no index of its own, so the planner cannot walk every finished and running job in seq
#: order looking for a queued one (it would, with statistics that say most rows are queued).
CLAIM_SQL = ("SELECT id FROM jobs WHERE status = 'queued' AND model = %s ORDER BY model, seq LIMIT 1 "
             "FOR UPDATE SKIP LOCKED")
#: The whole claim in one statement (one round trip, its own transaction): take the row, own it
#: with a lease, log the event.
CLAIM = f"""
WITH next AS ({CLAIM_SQL}),
claimed AS (
    UPDATE jobs SET status = 'in_progress', owner = %s, lease_expires_at = {NOW} + %s, attempts = attempts + 1,
        started_at = %s, progress = 0, error_code = NULL, error_message = NULL
    FROM next WHERE jobs.id = next.id RETURNING jobs.*),
logged AS (
    INSERT INTO job_events (job_id, at, replica, event, attempt)
    SELECT id, {NOW}, owner, 'claimed', attempts FROM claimed)
SELECT * FROM claimed
"""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """psycopg's errors in the store's vocabulary: a full disk (507 on creation) and an
    unreachable database (503 job_store_unavailable, with Retry-After) are not bugs."""
    try:
        yield
    except psycopg.errors.DiskFull as exc:
        raise StorageFull(f"the job store's disk is full: {exc}") from exc
    except psycopg.OperationalError as exc:  # connection refused or lost, pool exhausted
        raise problems.JobStoreUnavailable(
            f"The job store (PostgreSQL) cannot be reached: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}."
        ) from exc


class PostgresJobStore(JobStore):
    backend = "postgresql"
    exclusive = False

    def __init__(self, url: str, replica: str, pool_size: int = 5) -> None:
        super().__init__(replica)
        self.url = url
        # A request waits at most POOL_TIMEOUT_S for a connection (then 503 job_store_unavailable),
        # not psycopg's default 30 s.
        self.pool = AsyncConnectionPool(url, min_size=1, max_size=max(1, pool_size), open=False,
                                        timeout=POOL_TIMEOUT_S,
                                        kwargs={"autocommit": True, "row_factory": dict_row,
                                                "connect_timeout": int(POOL_TIMEOUT_S)})
        self._open = False
        self._listen_task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._open

    async def open_if_exists(self) -> bool:
        """Connect, apply migrations, start listening. (The database always 'exists'.)"""
        if self._open:
            return True
        await self.pool.open(wait=True, timeout=30)
        await self._migrate()
        self._open = True
        self.listening = asyncio.Event()
        self._listen_task = asyncio.ensure_future(self._listen())
        return True

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(BaseException):
                await self._listen_task
            self._listen_task = None
        if self._open:
            await self.pool.close()
            self._open = False

    async def _migrate(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS ttmedia_schema (version integer PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            row: Any = await (await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM ttmedia_schema")).fetchone()
            current = int(row["v"]) if row else 0
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > current:
                    await conn.execute(script)  # type: ignore[arg-type]
                    await conn.execute("INSERT INTO ttmedia_schema (version) VALUES (%s)", (number,))
                    log.info("job store: applied schema migration %d", number)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, reconnecting with a backoff."""
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    backoff = 0.2
                    async for note in conn.notifies():
                        kind, _, arg = note.payload.partition(":")
                        try:
                            self.notify(kind, arg)
                        except Exception:
                            log.exception("job store notification %r failed", note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("job store LISTEN connection lost (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with _translated():
            async with self.pool.connection() as conn, conn.transaction():
                yield conn

    async def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with _translated():
            async with self.pool.connection() as conn:
                return await (await conn.execute(sql, args)).fetchall()  # type: ignore[return-value]

    @staticmethod
    async def _one(conn: psycopg.AsyncConnection[Any], job_id: str) -> Job:
        row = await (await conn.execute("SELECT * FROM jobs WHERE id=%s", (job_id,))).fetchone()
        return row_job(row)

    @staticmethod
    async def _set(conn: psycopg.AsyncConnection[Any], job_id: str, fields: dict[str, Any]) -> None:
        values = encode_fields(fields)
        await conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=%s' for k in values)} WHERE id=%s",  # type: ignore[arg-type]
                           (*values.values(), job_id))

    async def _event(self, conn: psycopg.AsyncConnection[Any], job_id: str, event: str, attempt: int,
                     detail: str | None = None) -> None:
        await conn.execute("INSERT INTO job_events (job_id, at, replica, event, attempt, detail) "
                           f"VALUES (%s, {NOW}, %s, %s, %s, %s)", (job_id, self.replica, event, attempt, detail))

    # --- jobs -----------------------------------------------------------------------------------

    async def create(self, job: Job, inputs: list[bytes], max_unfinished: int) -> tuple[Job, bool]:
        values = job_row(job)
        async with self._tx() as conn:
            if inputs:
                # Written before the admission lock is taken, so a 10 MB upload does not hold up
                # every other replica's creations; a refused job's rows roll back with it.
                async with conn.cursor() as cur:
                    await cur.executemany("INSERT INTO job_inputs (job_id, idx, data) VALUES (%s, %s, %b)",
                                          [(job.id, i, data) for i, data in enumerate(inputs)])
            # One admission at a time across the fleet: the count and the insert are one decision.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
            found = await (await conn.execute(
                f"SELECT {COUNT_UNFINISHED} AS n, "
                "(SELECT id FROM jobs WHERE job_type=%s AND org_id=%s AND idempotency_key=%s) AS existing",
                (job.job_type.value, job.org_id, job.idempotency_key))).fetchone()
            assert found is not None
            if found["existing"] is not None:
                await conn.execute("DELETE FROM job_inputs WHERE job_id=%s", (job.id,))
                return await self._one(conn, found["existing"]), False
            if int(found["n"]) >= max_unfinished:
                raise TooManyJobs(str(found["n"]))
            columns = ", ".join(values)
            inserted = await (await conn.execute(
                f"WITH inserted AS (INSERT INTO jobs ({columns}) VALUES ({', '.join(['%s'] * len(values))}) "  # type: ignore[arg-type]
                "ON CONFLICT (job_type, org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
                "RETURNING id, model), "
                f"logged AS (INSERT INTO job_events (job_id, at, replica, event, attempt) "
                f"SELECT id, {NOW}, %s, 'created', 0 FROM inserted) "
                "SELECT id, pg_notify(%s, %s || model) FROM inserted",
                (*values.values(), self.replica, CHANNEL, f"{NOTE_NEW}:"))).fetchone()
            if inserted is None:  # the unique index decided (a concurrent create with this key)
                await conn.execute("DELETE FROM job_inputs WHERE job_id=%s", (job.id,))
                return row_job(await (await conn.execute(
                    "SELECT * FROM jobs WHERE job_type=%s AND org_id=%s AND idempotency_key=%s",
                    (job.job_type.value, job.org_id, job.idempotency_key))).fetchone()), False
        return job, True

    async def get(self, job_id: str) -> Job | None:
        rows = await self._all("SELECT * FROM jobs WHERE id=%s", job_id)
        return row_job(rows[0]) if rows else None

    async def find_by_key(self, job_type: JobType, org_id: str, key: str) -> Job | None:
        rows = await self._all("SELECT * FROM jobs WHERE job_type=%s AND org_id=%s AND idempotency_key=%s",
                               job_type.value, org_id, key)
        return row_job(rows[0]) if rows else None

    async def inputs(self, job_id: str) -> list[bytes]:
        with _translated():
            async with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                await cur.execute("SELECT data FROM job_inputs WHERE job_id=%s ORDER BY idx", (job_id,))
                rows: list[Any] = await cur.fetchall()  # dict rows: the pool's row_factory
                return [bytes(r["data"]) for r in rows]

    async def page(self, job_type: JobType, org_id: str | None, limit: int, after: str | None,
                   ascending: bool = False) -> tuple[list[Job], bool]:
        where, args = ["job_type=%s"], [job_type.value]
        if org_id is not None:
            where.append("org_id=%s")
            args.append(org_id)
        if after:
            cursor = await self._all(f"SELECT seq FROM jobs WHERE id=%s AND {' AND '.join(where)}", after, *args)
            if not cursor:
                raise UnknownCursor(after)
            where.append("seq > %s" if ascending else "seq < %s")
            args.append(cursor[0]["seq"])
        order = "ASC" if ascending else "DESC"
        rows = await self._all(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT %s",
                               *args, limit + 1)
        return [row_job(r) for r in rows[:limit]], len(rows) > limit

    async def count_unfinished(self) -> int:
        rows = await self._all(f"SELECT {COUNT_UNFINISHED} AS n")
        return int(rows[0]["n"])

    # --- claims and leases ----------------------------------------------------------------------

    async def claim(self, model: str, lease_s: float) -> Job | None:
        rows = await self._all(CLAIM, model, self.replica, lease_s, time.time())
        return row_job(rows[0]) if rows else None

    async def renew(self, job_ids: list[str], lease_s: float) -> dict[str, str]:
        if not job_ids:
            return {}
        rows = await self._all(f"UPDATE jobs SET lease_expires_at={NOW} + %s WHERE owner=%s AND id = ANY(%s) "
                               "AND status IN ('in_progress', 'cancelling') RETURNING id, status",
                               lease_s, self.replica, job_ids)
        return {r["id"]: r["status"] for r in rows}

    async def progress(self, job_id: str, attempt: int, progress: int) -> bool:
        rows = await self._all("UPDATE jobs SET progress=%s WHERE id=%s AND owner=%s AND attempts=%s "
                               "AND status IN ('in_progress', 'cancelling') RETURNING id",
                               progress, job_id, self.replica, attempt)
        return bool(rows)

    async def settle(self, job_id: str, attempt: int, outcome: str, **fields: Any) -> Job | None:
        async with self._tx() as conn:
            row = await (await conn.execute(
                "SELECT status FROM jobs WHERE id=%s AND owner=%s AND attempts=%s "
                "AND status IN ('in_progress', 'cancelling') FOR UPDATE", (job_id, self.replica, attempt))).fetchone()
            if row is None:
                return None
            status = settled_status(row["status"], outcome)
            check_transition(JobStatus(row["status"]), JobStatus(status))
            await self._set(conn, job_id, settle_fields(status, outcome, attempt, dict(fields)))
            await self._event(conn, job_id, status if status != "queued" else outcome, attempt,
                              fields.get("error_message"))
            return await self._one(conn, job_id)

    async def request_cancel(self, job_id: str) -> Job:
        async with self._tx() as conn:
            row = await (await conn.execute("SELECT * FROM jobs WHERE id=%s FOR UPDATE", (job_id,))).fetchone()
            job = row_job(row)
            if job.status is JobStatus.QUEUED:
                await self._set(conn, job_id, {"status": "cancelled", "completed_at": time.time()})
                await self._event(conn, job_id, "cancelled", job.attempts)
            elif job.status is JobStatus.IN_PROGRESS:
                await self._set(conn, job_id, {"status": "cancelling"})
                await self._event(conn, job_id, "cancel_requested", job.attempts)
            if job.status in (JobStatus.IN_PROGRESS, JobStatus.CANCELLING):
                # Delivered when this transaction commits, to every replica; the owner stops the run.
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{NOTE_CANCEL}:{job_id}"))
            return await self._one(conn, job_id)

    async def recover(self, max_attempts: int, everyone: bool = False) -> list[Recovered]:
        out: list[Recovered] = []
        async with self._tx() as conn:
            condition = "" if everyone else f" AND COALESCE(lease_expires_at, 0) < {NOW}"
            rows = await (await conn.execute(
                f"SELECT * FROM jobs WHERE status IN ('in_progress', 'cancelling'){condition} "  # type: ignore[arg-type]
                "FOR UPDATE SKIP LOCKED")).fetchall()
            for row in rows:
                job = row_job(row)
                update, outcome = recovery(job, max_attempts)
                await self._set(conn, job.id, update)
                await self._event(conn, job.id, f"lease_expired:{outcome}", job.attempts, job.owner)
                out.append(Recovered(await self._one(conn, job.id), outcome))
        return out

    async def fail_unserved(self, served: list[str], code: str, message: str) -> int:
        return 0  # another replica may serve the model: the job waits for it

    async def fail(self, job_id: str, code: str, message: str, statuses: tuple[str, ...]) -> Job | None:
        async with self._tx() as conn:
            row = await (await conn.execute("SELECT status, attempts FROM jobs WHERE id=%s FOR UPDATE",
                                            (job_id,))).fetchone()
            if row is None or row["status"] not in statuses:
                return None
            await self._set(conn, job_id, {"status": "failed", "completed_at": time.time(), "error_code": code,
                                           "error_message": message, "lease_expires_at": None})
            await self._event(conn, job_id, "failed", row["attempts"], code)
            return await self._one(conn, job_id)

    # --- retention ------------------------------------------------------------------------------

    async def stuck(self, before: float) -> list[Job]:
        return [row_job(r) for r in await self._all(
            "SELECT * FROM jobs WHERE status IN ('in_progress', 'cancelling') "
            "AND COALESCE(started_at, created_at) < %s", before)]

    async def expired(self, before: float, limit: int = 1000) -> list[str]:
        return [r["id"] for r in await self._all(
            "SELECT id FROM jobs WHERE completed_at < %s AND status IN (%s, %s, %s) LIMIT %s",
            before, *TERMINAL, limit)]

    async def hold(self, job_id: str, seconds: float) -> bool:
        rows = await self._all(f"UPDATE jobs SET hold_until=GREATEST(COALESCE(hold_until, 0), {NOW} + %s) "
                               "WHERE id=%s RETURNING id", seconds, job_id)
        return bool(rows)

    async def delete_unheld(self, job_id: str, force: bool = False) -> bool:
        async with self._tx() as conn:
            # The row lock a concurrent `hold` takes makes this wait and re-check hold_until.
            gone = await (await conn.execute(
                f"DELETE FROM jobs WHERE id=%s AND (%s OR COALESCE(hold_until, 0) < {NOW}) RETURNING id",
                (job_id, force))).fetchone()
            if gone is None:
                return False
            for table in ("job_inputs", "job_records", "checkpoints", "artifacts", "job_events"):
                await conn.execute(f"DELETE FROM {table} WHERE job_id=%s", (job_id,))  # type: ignore[arg-type]
        return True

    # --- records, checkpoints, artifacts, events ------------------------------------------------

    async def add_record(self, job_id: str, kind: str, step: int, data: dict[str, Any]) -> None:
        await self._all("INSERT INTO job_records (job_id, kind, step, data) VALUES (%s, %s, %s, %s) RETURNING seq",
                        job_id, kind, step, orjson.dumps(data).decode())

    async def records(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        rows = await self._all("SELECT data FROM job_records WHERE job_id=%s AND kind=%s ORDER BY seq", job_id, kind)
        return [orjson.loads(r["data"]) for r in rows]

    async def forget_after(self, job_id: str, step: int) -> None:
        async with self._tx() as conn:
            await conn.execute("DELETE FROM job_records WHERE job_id=%s AND kind='metric' AND step>%s", (job_id, step))
            await conn.execute("DELETE FROM checkpoints WHERE job_id=%s AND step>%s", (job_id, step))

    async def add_checkpoint(self, job_id: str, ckpt_id: str, step: int, epoch: int, metrics: dict[str, Any],
                             uri: str) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO checkpoints (job_id, id, step, epoch, metrics, created_at, uri) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, id) DO UPDATE SET step=EXCLUDED.step, "
                "epoch=EXCLUDED.epoch, metrics=EXCLUDED.metrics, created_at=EXCLUDED.created_at, uri=EXCLUDED.uri",
                (job_id, ckpt_id, step, epoch, orjson.dumps(metrics).decode(), time.time(), uri))

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return [row_checkpoint(r) for r in await self._all("SELECT * FROM checkpoints WHERE job_id=%s ORDER BY step", job_id)]

    async def checkpoint_uri(self, job_id: str, ckpt_id: str) -> str | None:
        rows = await self._all("SELECT uri FROM checkpoints WHERE job_id=%s AND id=%s", job_id, ckpt_id)
        return (rows[0]["uri"] or None) if rows else None

    async def add_artifact(self, job_id: str, name: str, uri: str, size: int) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO artifacts (job_id, name, uri, bytes, created_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (job_id, name) DO UPDATE SET uri=EXCLUDED.uri, bytes=EXCLUDED.bytes, "
                "created_at=EXCLUDED.created_at", (job_id, name, uri, size, time.time()))

    async def artifact(self, job_id: str, name: str) -> tuple[str, int] | None:
        rows = await self._all("SELECT uri, bytes FROM artifacts WHERE job_id=%s AND name=%s", job_id, name)
        return (rows[0]["uri"], int(rows[0]["bytes"])) if rows else None

    async def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT job_id, at, replica, event, attempt, detail FROM job_events"
        return await (self._all(sql + " WHERE job_id=%s ORDER BY seq", job_id) if job_id
                      else self._all(sql + " ORDER BY seq"))

    async def explain_claim(self, model: str) -> list[str]:
        async with self.pool.connection() as conn, conn.transaction():
            rows: list[Any] = await (await conn.execute("EXPLAIN " + CLAIM_SQL, (model,))).fetchall()  # type: ignore[operator]
        return [r["QUERY PLAN"] for r in rows]
