"""The job store's contract, run on both engines: embedded SQLite and a real PostgreSQL
(started by the tests, tests/conftest.py). Claims, leases and fencing, recovery, cancels and
their notification, idempotency, MAX_JOBS, holds, paging, the event log, migrations, and that the
claim searches an index."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ttmedia.jobs.models import Job, JobStatus, JobType, new_job_id
from ttmedia.jobs.store import (
    CANCELLED,
    COMPLETED,
    NOTE_CANCEL,
    NOTE_NEW,
    REQUEUE_FREE,
    JobStore,
    TooManyJobs,
    UnknownCursor,
    open_store,
)

MODEL, OTHER_MODEL = "Wan2.2-T2V-A14B-Diffusers", "mochi-1-preview"


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], JobStore]:
    """A factory of stores on one fresh backend: each call is another replica (PostgreSQL) or,
    for SQLite, the one store (a second would be refused: one server per DATA_DIR)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    made: list[JobStore] = []

    def make(replica: str = "r1") -> JobStore:
        if url == "" and made:
            return made[0]
        store = open_store(url, tmp_path, replica)
        made.append(store)
        return store

    return make


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def new_job(model: str = MODEL, key: str | None = None, org: str = "", digest: str = "h",
            job_type: JobType = JobType.VIDEO) -> Job:
    return Job(id=new_job_id(), job_type=job_type, model=model, created_at=time.time(),
               request_parameters={"prompt": "p"}, org_id=org, idempotency_key=key, request_hash=digest)


async def opened(store: JobStore) -> JobStore:
    if not store.is_open:
        # SQLite opens lazily on the first job; PostgreSQL connects and migrates.
        await store.open_if_exists()
    return store


def test_create_get_idempotency_and_max_jobs(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        store = await opened(make_store("r1"))
        first, created = await store.create(new_job(key="k"), [b"\x00" * 10], max_unfinished=3)
        assert created and (await store.get(first.id)) is not None
        again, created = await store.create(new_job(key="k"), [], max_unfinished=3)
        assert not created and again.id == first.id
        other_org, created = await store.create(new_job(key="k", org="acme"), [], max_unfinished=3)
        assert created and other_org.id != first.id
        assert await store.inputs(first.id) == [b"\x00" * 10]
        await store.create(new_job(), [], max_unfinished=3)
        with pytest.raises(TooManyJobs):
            await store.create(new_job(), [], max_unfinished=3)
        assert await store.count_unfinished() == 3
        await store.close()

    run(scenario())


def test_claims_are_fifo_per_model_and_never_shared(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        a, b = await opened(make_store("a")), await opened(make_store("b"))
        ids = [(await a.create(new_job(), [], 1000))[0].id for _ in range(30)]
        other = (await a.create(new_job(model=OTHER_MODEL), [], 1000))[0].id

        async def drain(store: JobStore) -> list[str]:
            taken = []
            while (job := await store.claim(MODEL, 30)) is not None:
                assert job.status is JobStatus.IN_PROGRESS and job.attempts == 1 and job.owner == store.replica
                taken.append(job.id)
            return taken

        got_a, got_b = await asyncio.gather(drain(a), drain(b))
        assert sorted(got_a + got_b) == sorted(ids) and not set(got_a) & set(got_b)
        assert got_a == [i for i in ids if i in got_a]  # each replica took them oldest first
        assert (await a.get(other)).status is JobStatus.QUEUED  # type: ignore[union-attr]
        for s in {a, b}:
            await s.close()

    run(scenario())


def test_leases_fencing_and_recovery(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        a = await opened(make_store("a"))
        b = await opened(make_store("b"))
        job, _ = await a.create(new_job(), [], 100)
        run1 = await a.claim(MODEL, 0.3)
        assert run1 is not None and run1.id == job.id
        assert await a.renew([job.id], 0.3) == {job.id: "in_progress"}
        assert await b.recover(3) == []  # renewed: not expired
        await asyncio.sleep(0.5)
        recovered = await b.recover(3)
        assert [(r.job.id, r.outcome) for r in recovered] == [(job.id, "requeued")]
        # The old run is fenced off: its writes change nothing, its renewal says it lost the job.
        assert not await a.progress(job.id, 1, 50)
        assert await a.renew([job.id], 30) == {}
        run2 = await b.claim(MODEL, 30)
        assert run2 is not None and run2.attempts == 2 and run2.owner == b.replica
        assert await a.settle(job.id, 1, COMPLETED, result={"x": 1}) is None or a is b
        done = await b.settle(job.id, 2, COMPLETED, progress=100, result={"ok": True})
        assert done is not None and done.status is JobStatus.COMPLETED and done.result == {"ok": True}
        events = [(e["event"], e["attempt"]) for e in await b.events(job.id)]
        assert events == [("created", 0), ("claimed", 1), ("lease_expired:requeued", 1), ("claimed", 2),
                          ("completed", 2)]
        for s in {a, b}:
            await s.close()

    run(scenario())


def test_recovery_bounds_attempts_and_settles_cancels(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        store = await opened(make_store("a"))
        job, _ = await store.create(new_job(), [], 100)
        for _attempt in range(2):
            assert await store.claim(MODEL, 0.01) is not None
            await asyncio.sleep(0.05)
            await store.recover(2)
        failed = await store.get(job.id)
        assert failed is not None and failed.status is JobStatus.FAILED and failed.error_code == "server_restart"
        cancelling, _ = await store.create(new_job(), [], 100)
        await store.claim(MODEL, 0.01)
        assert (await store.request_cancel(cancelling.id)).status is JobStatus.CANCELLING
        await asyncio.sleep(0.05)
        assert [r.outcome for r in await store.recover(2)] == ["cancelled"]
        await store.close()

    run(scenario())


def test_settle_outcomes_and_cancel_notification(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        a, b = await opened(make_store("a")), await opened(make_store("b"))
        heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        b.listener = lambda kind, arg: heard.put_nowait((kind, arg))
        if hasattr(b, "listening"):
            await asyncio.wait_for(b.listening.wait(), 10)  # type: ignore[attr-defined]
        queued, _ = await a.create(new_job(), [], 100)
        assert await asyncio.wait_for(heard.get(), 5) == (NOTE_NEW, MODEL)
        assert (await a.request_cancel(queued.id)).status is JobStatus.CANCELLED
        running, _ = await a.create(new_job(), [], 100)
        await asyncio.wait_for(heard.get(), 5)
        claimed = await b.claim(MODEL, 30)
        assert claimed is not None and claimed.id == running.id
        assert (await a.request_cancel(running.id)).status is JobStatus.CANCELLING
        assert await asyncio.wait_for(heard.get(), 5) == (NOTE_CANCEL, running.id)
        # A cancel request wins over the run's own outcome.
        settled = await b.settle(running.id, 1, COMPLETED, result={"late": True})
        assert settled is not None and settled.status is JobStatus.CANCELLED and settled.result is None
        # A graceful shutdown re-queues without charging the attempt.
        free, _ = await a.create(new_job(), [], 100)
        await b.claim(MODEL, 30)
        requeued = await b.settle(free.id, 1, REQUEUE_FREE)
        assert requeued is not None and requeued.status is JobStatus.QUEUED and requeued.attempts == 0
        assert (await b.request_cancel(free.id)).status is JobStatus.CANCELLED
        assert await b.settle(free.id, 1, CANCELLED) is None  # not running any more
        for s in {a, b}:
            await s.close()

    run(scenario())


def test_holds_defer_deletion(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        store = await opened(make_store("a"))
        job, _ = await store.create(new_job(), [b"x"], 100)
        await store.claim(MODEL, 30)
        await store.add_artifact(job.id, "video.mp4", f"file:jobs/{job.id}/video.mp4", 3)
        await store.settle(job.id, 1, COMPLETED, result={})
        assert await store.expired(time.time() + 1) == [job.id]
        assert await store.hold(job.id, 0.3)
        assert not await store.delete_unheld(job.id)
        await asyncio.sleep(0.4)
        assert await store.delete_unheld(job.id)
        assert await store.get(job.id) is None and await store.artifact(job.id, "video.mp4") is None
        assert not await store.hold(job.id, 1)  # gone: a download now answers 404
        await store.close()

    run(scenario())


def test_paging_newest_first(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        store = await opened(make_store("a"))
        ids = [(await store.create(new_job(), [], 100))[0].id for _ in range(5)]
        await store.create(new_job(job_type=JobType.TRAINING, org="acme"), [], 100)
        page, more = await store.page(JobType.VIDEO, None, 2, None)
        assert [j.id for j in page] == ids[::-1][:2] and more
        rest, more = await store.page(JobType.VIDEO, None, 10, page[-1].id)
        assert [j.id for j in rest] == ids[::-1][2:] and not more
        assert len((await store.page(JobType.TRAINING, "acme", 10, None))[0]) == 1
        assert (await store.page(JobType.TRAINING, "globex", 10, None))[0] == []
        with pytest.raises(UnknownCursor):
            await store.page(JobType.VIDEO, None, 2, new_job_id())
        await store.close()

    run(scenario())


def test_the_claim_searches_an_index(make_store: Callable[[str], JobStore]) -> None:
    async def scenario() -> None:
        store = await opened(make_store("a"))
        for i in range(300):
            await store.create(new_job(model=MODEL if i % 3 else OTHER_MODEL), [], 10_000)
        plans = ["\n".join(await store.explain_claim(MODEL))]  # type: ignore[attr-defined]
        if store.backend == "postgresql":
            # Whatever the statistics say: none, a table of queued jobs, a table of history.
            async with store.pool.connection() as conn:  # type: ignore[attr-defined]
                await conn.execute("ANALYZE jobs")
                plans.append("\n".join(await store.explain_claim(MODEL)))  # type: ignore[attr-defined]
                await conn.execute("UPDATE jobs SET status='completed' WHERE seq % 4 <> 0")
                await conn.execute("ANALYZE jobs")
            plans.append("\n".join(await store.explain_claim(MODEL)))  # type: ignore[attr-defined]
        for plan in plans:
            assert "jobs_queued" in plan, plan
            assert "Seq Scan" not in plan and "SCAN jobs" not in plan and "TEMP B-TREE" not in plan, plan
            assert "Sort" not in plan, plan  # the index gives the order
        await store.close()

    run(scenario())


def test_large_inputs_and_every_sqlite_statement_run_off_the_event_loop(tmp_path: Path) -> None:
    store = open_store("", tmp_path, "a")
    blob = bytes(range(256)) * (10 * 1024 * 1024 // 256)  # 10 MB, the largest upload

    async def scenario() -> int:
        job, _ = await store.create(new_job(), [blob], 100)
        assert await store.inputs(job.id) == [blob]
        await store.claim(MODEL, 30)
        await store.close()
        return threading.get_ident()

    loop_thread = run(scenario())
    assert store.thread_ids and loop_thread not in store.thread_ids  # type: ignore[attr-defined]


def test_sqlite_migrates_a_first_release_database(tmp_path: Path) -> None:
    from ttmedia.jobs.store_sqlite import MIGRATIONS

    with sqlite3.connect(tmp_path / "jobs.db") as db:  # the schema the first release wrote
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO jobs (id, job_type, status, model, created_at, request_parameters, payload) "
                   "VALUES (?, 'video', 'queued', ?, 1, '{}', '{}')", (job_id := new_job_id(), MODEL))
    store = open_store("", tmp_path, "a")

    async def scenario() -> None:
        assert await store.open_if_exists()
        claimed = await store.claim(MODEL, 30)
        assert claimed is not None and claimed.id == job_id
        await store.close()
        assert await store.open_if_exists()  # again: nothing left to apply
        await store.close()

    run(scenario())
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_postgres_replicas_starting_at_once_migrate_once(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    async def scenario() -> None:
        stores = [open_store(pg_url, tmp_path, f"r{i}") for i in range(4)]
        await asyncio.gather(*(s.open_if_exists() for s in stores))
        await asyncio.gather(*(s.close() for s in stores))

    run(scenario())
    from ttmedia.jobs.store_postgres import MIGRATIONS

    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM ttmedia_schema ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_job_store_url_is_checked() -> None:
    from pydantic import ValidationError

    from ttmedia.settings import Settings

    with pytest.raises(ValidationError):
        Settings(job_store_url="mysql://x")
    with pytest.raises(ValueError):
        open_store("redis://x", ".", "a")
    assert open_store("sqlite:///tmp/x/jobs.db", ".", "a").db_path == Path("/tmp/x/jobs.db")  # type: ignore[attr-defined]


def test_max_jobs_holds_across_replicas_creating_at_once(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        stores = [open_store(pg_url, tmp_path, f"r{i}") for i in range(4)]
        for s in stores:
            await s.open_if_exists()

        async def fill(store: JobStore) -> int:
            made = 0
            for _ in range(10):
                try:
                    await store.create(new_job(), [], max_unfinished=15)
                    made += 1
                except TooManyJobs:
                    pass
            return made

        made = await asyncio.gather(*(fill(s) for s in stores))
        assert sum(made) == 15 and await stores[0].count_unfinished() == 15, made
        for s in stores:
            await s.close()

    run(scenario())
