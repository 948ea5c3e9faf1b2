"""The runner SDK through HTTP: synchronous runners that block their thread, explicit hang
detection (call deadline, warmup deadline, idle canary), device errors, declared batching, and
runner selection by MODELS (import target and entry point)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import LiveServer, live_server, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = "tests.runner_fixtures"


def serve(tmp_path: Path, runner: str, name: str = "probe", options: str = "", **env: str) -> Any:
    models = f"{name}={FIXTURES}:{runner}~family=embedding~dimensions=8~log_dir={tmp_path}{options}"
    return live_server(env={"MODELS": models, "PYTHONPATH": str(ROOT), **env}, wait_ready=False)


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def worker(server: LiveServer, model: str = "probe") -> dict[str, Any]:
    body = httpx.get(server.url + "/tt-liveness", timeout=10).json()
    return next(iter(body["models"][model]["worker_info"].values()))


def embed(server: LiveServer, text: str = "hello", **extra: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/embeddings", json={"input": text, **extra}, timeout=30)


def test_a_warmup_that_blocks_its_thread_past_the_heartbeat_timeout_is_not_killed(tmp_path: Path) -> None:
    # 3 s of blocked warmup against a 1 s heartbeat timeout: the old worker was killed for silence.
    with serve(tmp_path, "SlowWarmupRunner", options="~warmup_s=3", WORKER_HEARTBEAT_TIMEOUT_SECONDS="1",
               WORKER_HEARTBEAT_SECONDS="0.2") as server:
        assert httpx.get(server.url + "/health", timeout=5).status_code == 503
        assert wait_until(lambda: httpx.get(server.url + "/health", timeout=5).status_code == 200, 30)
        info = worker(server)
        assert info["restart_count"] == 0 and info["state"] == "ready"
        assert len(lines(tmp_path / "warmed.jsonl")) == 1  # one warmup: never restarted
        assert embed(server).status_code == 200


def test_a_run_that_blocks_past_the_request_timeout_is_504_and_the_worker_is_replaced(tmp_path: Path) -> None:
    with serve(tmp_path, "HangingRunner", REQUEST_PROCESSING_TIMEOUT_SECONDS="2") as server:
        assert wait_until(lambda: httpx.get(server.url + "/health", timeout=5).status_code == 200, 30)
        old_pid = worker(server)["pid"]
        (tmp_path / "hang").touch()
        started = time.monotonic()
        r = embed(server)
        assert r.status_code == 504 and r.json()["reason"] == "timeout", r.text
        assert time.monotonic() - started < 10
        (tmp_path / "hang").unlink()
        assert wait_until(lambda: worker(server)["pid"] not in (None, old_pid) and worker(server)["is_ready"], 30)
        assert "no progress" in (worker(server)["last_error"] or "")
        assert embed(server).status_code == 200


def test_a_failing_canary_is_caught_while_idle(tmp_path: Path) -> None:
    interval = 1.0
    with serve(tmp_path, "CanaryRunner", CANARY_INTERVAL_SECONDS=str(interval)) as server:
        assert wait_until(lambda: httpx.get(server.url + "/health", timeout=5).status_code == 200, 30)
        assert wait_until(lambda: worker(server)["last_canary_ok"] is not None, 10)  # canaries pass
        old_pid = worker(server)["pid"]
        (tmp_path / "broken").touch()
        broken_at = time.monotonic()
        # No traffic at all: only the canary can find out.
        assert wait_until(lambda: worker(server)["pid"] != old_pid or worker(server)["restart_count"] > 0,
                          interval + 10)
        caught_after = time.monotonic() - broken_at
        info = worker(server)
        assert "canary" in (info["last_error"] or ""), info
        assert info["restart_count"] >= 1
        print(f"\n[canary] failure caught {caught_after:.2f} s after the device broke (interval {interval:g} s)")


def test_a_device_error_is_503_device_error_and_the_device_is_reset_before_the_restart(tmp_path: Path) -> None:
    marker = tmp_path / "resets"
    with serve(tmp_path, "BrokenDeviceRunner", RESET_DEVICE_COMMAND=f"echo reset >> {marker}",
               WORKER_RESTART_BACKOFF_SECONDS="0.1") as server:
        assert wait_until(lambda: httpx.get(server.url + "/health", timeout=5).status_code == 200, 30)
        old_pid = worker(server)["pid"]
        r = embed(server, "break the device")
        assert r.status_code == 503, r.text
        assert r.json()["reason"] == "device_error" and int(r.headers["Retry-After"]) >= 1
        assert "stopped answering" in r.json()["detail"]
        assert wait_until(lambda: worker(server)["is_ready"] and worker(server)["pid"] != old_pid, 30)
        assert marker.read_text().split() == ["reset"]
        assert embed(server).status_code == 200


def test_the_scheduler_forms_only_the_batches_a_runner_declares(tmp_path: Path) -> None:
    import concurrent.futures

    with serve(tmp_path, "FixedShapeRunner") as server:
        assert wait_until(lambda: httpx.get(server.url + "/health", timeout=5).status_code == 200, 30)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: embed(server, f"text {i}", dimensions=4 if i % 2 else 8).status_code,
                                    range(24)))
        assert answers == [200] * 24
    batches = lines(tmp_path / "shapes.jsonl")
    assert batches, "the runner saw no batch"
    for batch in batches:
        assert len(batch) in (1, 2, 4), batch
        assert len({dims for _, dims in batch}) == 1, f"a batch mixed dimensions: {batch}"
    assert sum(len(b) for b in batches) >= 24 and max(len(b) for b in batches) > 1


def test_runners_are_chosen_by_import_target_and_by_entry_point(tmp_path: Path) -> None:
    # An installed distribution that registers a runner: a dist-info with entry points on the path.
    site = tmp_path / "site"
    dist = site / "acme_runners-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-runners\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[ttmedia.runners]\nacme-embed = {FIXTURES}:SlowWarmupRunner\n")
    models = (f"by-target={FIXTURES}:CanaryRunner~family=embedding~log_dir={tmp_path};"
              f"by-name=acme-embed~family=embedding~warmup_s=0~log_dir={tmp_path}")
    env = {"MODELS": models, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    with live_server(env=env) as server:
        listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
        assert listed["by-target"]["runner_target"] == f"{FIXTURES}:CanaryRunner"
        assert listed["by-name"]["runner"] == "acme-embed"
        assert listed["by-name"]["runner_target"] == f"{FIXTURES}:SlowWarmupRunner"
        assert listed["by-target"]["simulated"] is False
        for name in ("by-target", "by-name"):
            r = embed(server, model=name)
            assert r.status_code == 200 and r.json()["model"] == name


def test_an_unknown_runner_fails_at_start_up_naming_the_known_ones(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "MODELS": "probe=no-such-runner~family=llm", "DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ttmedia", "serve", "--port", "0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "no-such-runner" in done.stderr and "sim-llm" in done.stderr


def test_a_warmup_past_its_deadline_fails_the_worker_with_the_reason(tmp_path: Path) -> None:
    with serve(tmp_path, "SlowWarmupRunner", options="~warmup_s=30", WARMUP_TIMEOUT_SECONDS="1.5",
               MAX_WORKER_RESTART_COUNT="0") as server:
        assert wait_until(lambda: worker(server)["state"] == "failed", 20)
        info = worker(server)
        assert "WARMUP_TIMEOUT_SECONDS" in (info["last_error"] or ""), info
        r = httpx.get(server.url + "/health", timeout=5)
        assert r.status_code == 503 and r.json()["reason"] == "init_failed"
