"""Storage faults and housekeeping, through HTTP: a full disk under the job store (507
`insufficient_storage`, nothing stuck), a full artifact volume under a running job (the job
fails with that reason), the SQLite WAL checkpointed, and the retention sweep deferred while a
download holds a file.

A full disk is a real one: a small tmpfs mounted for the test (root only; skipped elsewhere)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import app_client, live_server, wait_until
from ttmedia.media.video import probe_mp4

T2V, I2V = "Wan2.2-T2V-A14B-Diffusers", "Wan2.2-I2V-A14B-Diffusers"
TERMINAL = {"completed", "failed", "cancelled"}


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file until the disk is full (or only `leave` bytes are free)."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        block = b"\xff" * 4096
        try:
            while True:
                st = os.statvfs(disk)
                if st.f_bavail * st.f_frsize <= leave:
                    break
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    return filler


def wait_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:  # type: ignore[type-arg]
    seen: dict = {}  # type: ignore[type-arg]

    def done() -> bool:
        seen.update(client.get(f"/v1/videos/generations/{job_id}").json())
        return seen["status"] in TERMINAL

    assert wait_until(done, timeout), seen
    return seen


def test_a_full_disk_under_the_job_store_answers_507_and_recovers(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "1m") as disk, \
            app_client(models=f"{T2V};{I2V}", data_dir=str(disk / "data"), sim_video_frames=9, sim_video_width=64,
                       sim_video_height=48, log_level="warning") as c:
        filler = fill(disk)
        r = c.post("/v1/videos/generations", json={"prompt": "boat", "num_inference_steps": 4})
        assert r.status_code == 507, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["reason"] == "insufficient_storage" and r.json()["status"] == 507
        assert c.get("/health").status_code == 200  # the server keeps serving
        filler.unlink()
        r = c.post("/v1/videos/generations", json={"prompt": "boat", "num_inference_steps": 4})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["id"])["status"] == "completed"
        # Full again while the database exists: a job whose input cannot fit is 507 too.
        fill(disk)
        noise = io.BytesIO()
        Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3)).save(noise, "PNG")  # ~1 MB
        r = c.post("/v1/videos/generations/i2v/upload", data={"prompt": "p", "model": I2V},
                   files={"image": ("noise.png", noise.getvalue(), "image/png")})
        assert r.status_code == 507 and r.json()["reason"] == "insufficient_storage", r.text
        assert c.get("/health").status_code == 200


def test_a_full_artifact_volume_fails_the_running_job_with_insufficient_storage(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "artifacts", "1m") as disk, \
            app_client(models=T2V, artifact_dir=str(disk), data_dir=str(tmp_path / "data"), sim_speed=0.1,
                       sim_video_frames=33, sim_video_width=256, sim_video_height=144, log_level="warning") as c:
        filler = fill(disk)
        r = c.post("/v1/videos/generations", json={"prompt": "a long noisy video", "num_inference_steps": 4})
        assert r.status_code == 202
        failed = wait_job(c, r.json()["id"])
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "insufficient_storage", failed
        assert c.get(f"/v1/videos/generations/{failed['id']}/download").status_code == 409
        filler.unlink()
        again = c.post("/v1/videos/generations", json={"prompt": "a long noisy video", "num_inference_steps": 4})
        done = wait_job(c, again.json()["id"])
        assert done["status"] == "completed", done
        assert probe_mp4(c.get(f"/v1/videos/generations/{done['id']}/download").content)["frames"] == 33


def test_the_sqlite_wal_is_checkpointed_while_serving_and_on_close(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = {"models": T2V, "data_dir": str(data), "job_store_checkpoint_seconds": 0.3,
                "job_lease_seconds": 0.6, "sim_video_frames": 9, "sim_video_width": 64, "sim_video_height": 48,
                "log_level": "warning"}
    with app_client(**settings) as c:
        job_id = c.post("/v1/videos/generations", json={"prompt": "wal", "num_inference_steps": 4}).json()["id"]
        assert wait_job(c, job_id)["status"] == "completed"

        def in_main_file() -> bool:
            # The database file alone (no -wal beside it) holds what a checkpoint moved there.
            copy = tmp_path / f"copy-{time.monotonic_ns()}.db"
            shutil.copyfile(data / "jobs.db", copy)
            with contextlib.closing(sqlite3.connect(copy)) as db:
                try:
                    row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
                except sqlite3.OperationalError:  # not even the table yet: never checkpointed
                    return False
            return row is not None and row[0] == "completed"

        assert wait_until(in_main_file, 10, 0.2)
        c.post("/v1/videos/generations", json={"prompt": "wal 2", "num_inference_steps": 4})
    wal = data / "jobs.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed (TRUNCATE) on close


def test_the_retention_sweep_waits_for_a_download_to_end(tmp_path: Path) -> None:
    env = {"MODELS": T2V, "JOB_RETENTION_SECONDS": "0.2", "JOB_CLEANUP_INTERVAL_SECONDS": "0.2",
           "JOB_DOWNLOAD_HOLD_SECONDS": "3", "SIM_VIDEO_FRAMES": "33", "SIM_VIDEO_WIDTH": "512",
           "SIM_VIDEO_HEIGHT": "288", "DATA_DIR": str(tmp_path / "data")}
    with live_server(env) as server, server.client() as c:
        job_id = c.post("/v1/videos/generations", json={"prompt": "keep me", "num_inference_steps": 4}).json()["id"]
        assert wait_until(lambda: c.get(f"/v1/videos/generations/{job_id}").json().get("status") == "completed",
                          30, 0.02)
        url = f"/v1/videos/generations/{job_id}/download"
        with c.stream("GET", url) as response:
            assert response.status_code == 200
            size = int(response.headers["content-length"])
            chunks = response.iter_bytes(16 * 1024)
            received = bytearray(next(chunks))
            time.sleep(1.5)  # several sweeps pass, all past retention, while the download is open
            assert c.get(f"/v1/videos/generations/{job_id}").status_code == 200
            assert (tmp_path / "data" / "jobs" / job_id / "video.mp4").is_file()
            for chunk in chunks:
                received += chunk
        assert len(received) == size and probe_mp4(bytes(received))["frames"] == 33
        # Once the hold lapses, the next sweep deletes the job and its file.
        assert wait_until(lambda: c.get(f"/v1/videos/generations/{job_id}").status_code == 404, 10, 0.1)
        assert not (tmp_path / "data" / "jobs" / job_id).exists()
        assert c.get(url).status_code == 404
