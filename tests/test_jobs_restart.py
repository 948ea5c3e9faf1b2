"""Jobs survive restarts: kill -9 of a live server (and its workers), graceful shutdown,
the attempts bound, stale-job and retention sweeps."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import app_client, live_server, wait_until
from ttmedia.jobs.kinds import VIDEO_FILE
from ttmedia.jobs.manager import JobManager
from ttmedia.jobs.models import Job, JobStatus, JobType, new_job_id
from ttmedia.media.video import probe_mp4
from ttmedia.settings import Settings

T2V = "Wan2.2-T2V-A14B-Diffusers"
FRAMES = 17


def _env(data_dir: Path) -> dict[str, str]:
    # ×0.1 simulated time: a Wan step is 0.04 s; 60 steps ≈ 2.5 s of device time.
    return {"DATA_DIR": str(data_dir), "MODELS": T2V, "SIM_SPEED": "0.1", "SIM_VIDEO_FRAMES": str(FRAMES),
            "SIM_VIDEO_WIDTH": "128", "SIM_VIDEO_HEIGHT": "72"}


def _job(c: httpx.Client, job_id: str) -> dict[str, Any]:
    return c.get(f"/v1/videos/generations/{job_id}").json()  # type: ignore[no-any-return]


def _create(c: httpx.Client, steps: int) -> str:
    r = c.post("/v1/videos/generations", json={"prompt": f"boat {steps}", "num_inference_steps": steps})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie runs nothing
    except FileNotFoundError:
        return True


def test_kill_9_then_restart_runs_queued_and_running_jobs_and_keeps_outputs(tmp_path: Path) -> None:
    with live_server(_env(tmp_path)) as server, server.client() as c:
        done = _create(c, 4)
        assert wait_until(lambda: _job(c, done)["status"] == "completed", 30)
        running = _create(c, 50)
        queued = [_create(c, 4), _create(c, 4)]
        assert wait_until(lambda: _job(c, running)["progress"] > 0, 30)
        workers = [w["pid"] for w in c.get("/tt-liveness").json()["worker_info"].values() if w["pid"]]
        assert workers
        # kill -9 of the server and its workers (its process group), mid-job.
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        assert wait_until(lambda: all(_gone(pid) for pid in workers), 10)
    assert _job_state(tmp_path, running) == ("in_progress", 1)
    assert all(_job_state(tmp_path, q)[0] == "queued" for q in queued)

    with live_server(_env(tmp_path)) as server, server.client() as c:
        video = c.get(f"/v1/videos/generations/{done}/download")
        assert video.status_code == 200 and probe_mp4(video.content)["frames"] == FRAMES
        for job_id in (running, *queued):
            assert wait_until(lambda j=job_id: _job(c, j)["status"] == "completed", 60), _job(c, job_id)
            assert probe_mp4(c.get(f"/v1/videos/generations/{job_id}/download").content)["frames"] == FRAMES
        assert _job(c, running)["attempts"] == 2  # its first run died with the server
        assert [_job(c, q)["attempts"] for q in queued] == [1, 1]
        assert _job(c, done)["attempts"] == 1


def _job_state(data_dir: Path, job_id: str) -> tuple[str, int]:
    import sqlite3

    with sqlite3.connect(data_dir / "jobs.db") as db:
        status, attempts = db.execute("SELECT status, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
    return str(status), int(attempts)


def test_graceful_shutdown_requeues_without_charging_an_attempt(tmp_path: Path) -> None:
    settings = {"models": T2V, "sim_speed": 0.1, "data_dir": str(tmp_path), "sim_video_frames": FRAMES,
                "sim_video_width": 128, "sim_video_height": 72, "log_level": "warning"}
    with app_client(**settings) as c:
        job_id = c.post("/v1/videos/generations", json={"prompt": "p", "num_inference_steps": 50}).json()["id"]
        assert wait_until(lambda: c.get(f"/v1/videos/generations/{job_id}").json()["progress"] > 0)
        started = time.monotonic()
    assert time.monotonic() - started < 10  # the drain did not wait for the video
    assert _job_state(tmp_path, job_id) == ("queued", 0)
    with app_client(**settings) as c:
        assert wait_until(lambda: c.get(f"/v1/videos/generations/{job_id}").json()["status"] == "completed", 30)
        assert c.get(f"/v1/videos/generations/{job_id}").json()["attempts"] == 1


# --- the manager's recovery and sweeps, on the store directly -------------------------------------

def _manager(tmp_path: Path, **overrides: Any) -> JobManager:
    return JobManager(Settings(data_dir=str(tmp_path), **overrides), scheduler=None)  # type: ignore[arg-type]


async def _insert(manager: JobManager, status: JobStatus, attempts: int = 1, **fields: Any) -> str:
    job = Job(id=new_job_id(), job_type=JobType.VIDEO, model=T2V, created_at=time.time(),
              request_parameters={"prompt": "p"}, status=status, attempts=attempts, **fields)
    await manager.store.create(job, [], max_unfinished=100)
    return job.id


def test_recovery_bounds_attempts(tmp_path: Path) -> None:
    async def run() -> None:
        manager = _manager(tmp_path, job_max_attempts=2)
        retry = await _insert(manager, JobStatus.IN_PROGRESS, attempts=1, started_at=time.time())
        exhausted = await _insert(manager, JobStatus.IN_PROGRESS, attempts=2, started_at=time.time())
        cancelling = await _insert(manager, JobStatus.CANCELLING)
        queued = await _insert(manager, JobStatus.QUEUED, attempts=0)
        await manager.store.recover(2, everyone=True)  # what start() does on the embedded store
        get = manager.store.get
        assert (await get(retry)).status is JobStatus.QUEUED  # type: ignore[union-attr]
        failed = await get(exhausted)
        assert failed is not None and failed.status is JobStatus.FAILED and failed.error_code == "server_restart"
        assert (await get(cancelling)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        assert (await get(queued)).status is JobStatus.QUEUED  # type: ignore[union-attr]
        await manager.store.close()

    asyncio.run(run())


def test_sweep_fails_stale_jobs_and_deletes_expired_ones(tmp_path: Path) -> None:
    async def run() -> None:
        manager = _manager(tmp_path, job_max_stuck_time_seconds=60, job_retention_seconds=3600)
        now = time.time()
        stale = await _insert(manager, JobStatus.IN_PROGRESS, started_at=now - 120)
        fresh = await _insert(manager, JobStatus.IN_PROGRESS, started_at=now - 5)
        expired = await _insert(manager, JobStatus.COMPLETED, completed_at=now - 7200)
        kept = await _insert(manager, JobStatus.COMPLETED, completed_at=now - 60)
        output = manager.artifacts.staging_dir(expired) / VIDEO_FILE
        output.parent.mkdir(parents=True)
        output.write_bytes(b"mp4")
        await manager.sweep()
        failed = await manager.store.get(stale)
        assert failed is not None and failed.status is JobStatus.FAILED and failed.error_code == "stale_job"
        assert (await manager.store.get(fresh)).status is JobStatus.IN_PROGRESS  # type: ignore[union-attr]
        assert await manager.store.get(expired) is None and not output.parent.exists()
        assert await manager.store.get(kept) is not None
        await manager.store.close()

    asyncio.run(run())


def test_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    import pytest

    from ttmedia.jobs.store import StoreLocked
    from ttmedia.jobs.store_sqlite import SqliteJobStore

    async def run() -> None:
        first = _manager(tmp_path)
        await _insert(first, JobStatus.QUEUED)
        with pytest.raises(StoreLocked):
            await SqliteJobStore(tmp_path, "second").open_if_exists()
        await first.store.close()
        again = SqliteJobStore(tmp_path, "third")
        assert await again.open_if_exists()
        await again.close()

    asyncio.run(run())
