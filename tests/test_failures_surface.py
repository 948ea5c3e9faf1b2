"""Failures never vanish: sibling sub-requests are withdrawn together, mid-stream failures are
logged and counted, and a long reset command does not stop the server from serving."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import live_server, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def test_a_failed_sub_request_withdraws_its_siblings_before_they_reach_the_device(tmp_path: Path) -> None:
    env = {"MODELS": f"img=tests.runner_fixtures:FailingImageRunner~family=image~log_dir={tmp_path}",
           "PYTHONPATH": str(ROOT)}
    with live_server(env=env) as server:
        r = httpx.post(server.url + "/v1/images/generations",
                       json={"prompt": "four at once", "n": 4, "seed": 0, "size": "512x512"}, timeout=30)
        assert r.status_code == 500 and "diverged" in r.json()["detail"], r.text
        time.sleep(0.5)  # anything left in the queue would have reached the device by now
        calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
        assert calls == [[0]], f"the siblings reached the device: {calls}"
        # The worker is fine and serves the next request.
        ok = httpx.post(server.url + "/v1/images/generations",
                        json={"prompt": "fine", "n": 2, "seed": 5, "size": "512x512"}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["images"]) == 2


def test_a_mid_stream_failure_is_logged_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"MODELS": f"gen=tests.runner_fixtures:StreamBreaksRunner~family=llm~log_dir={tmp_path}",
           "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json"}
    with open(log, "wb") as log_file, live_server(env=env, stderr=log_file) as server:
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                          json={"prompt": "go", "max_tokens": 10, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        error = json.loads(events[-1][len("data: "):])["error"]
        assert error["type"] == "internal" and "lost the KV cache" in error["message"], events
        assert sum('"text":" t' in e for e in events) == 3  # the tokens before the failure arrived
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'ttmedia_stream_failures_total{reason="internal"} 1.0' in metrics, metrics[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    failed = [entry for entry in lines if entry.get("msg", "").startswith("stream failed")]
    assert len(failed) == 1 and "lost the KV cache" in failed[0]["msg"], lines[-5:]
    assert failed[0]["reason"] == "internal" and failed[0]["level"] == "warning"


def test_a_slow_reset_command_does_not_stop_livez_or_a_stream(tmp_path: Path) -> None:
    env = {"MODELS": "Qwen3-8B@(0);stable-diffusion-xl-base-1.0@(1)", "SIM_SPEED": "0.4",
           "RESET_DEVICE_COMMAND": "sleep 2"}
    with live_server(env=env) as server:
        liveness = httpx.get(server.url + "/tt-liveness", timeout=10).json()
        image_pid = liveness["models"]["stable-diffusion-xl-base-1.0"]["worker_info"]["1"]["pid"]
        answer: dict[str, Any] = {}

        def reset() -> None:
            started = time.monotonic()
            answer["response"] = httpx.post(server.url + "/tt-reset-device", params={"device_id": "1"}, timeout=30)
            answer["seconds"] = time.monotonic() - started

        resetting = threading.Thread(target=reset)
        resetting.start()
        gaps, livez = [], []
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                          json={"prompt": "keep talking", "max_tokens": 150, "stream": True}) as r:
            last = time.monotonic()
            for n, line in enumerate(r.iter_lines()):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                if n % 20 == 0:
                    t0 = time.monotonic()
                    assert httpx.get(server.url + "/livez", timeout=5).status_code == 200
                    livez.append(time.monotonic() - t0)
        resetting.join(30)
        assert answer["response"].status_code == 202 and answer["seconds"] >= 2.0, answer
        print(f"\n[reset] {answer['seconds']:.2f} s; stream max gap {max(gaps) * 1000:.0f} ms, "
              f"livez max {max(livez) * 1000:.0f} ms over {len(livez)} probes")
        # A reset run on the event loop would stall both for the command's whole 2 s; below that
        # is the shared machine's own scheduling noise, not the reset.
        assert max(gaps) < 2.0 and max(livez) < 2.0
        assert wait_until(lambda: httpx.get(server.url + "/tt-liveness", timeout=5).json()["models"][
            "stable-diffusion-xl-base-1.0"]["worker_info"]["1"]["pid"] not in (None, image_pid), 30)


def test_a_failing_reset_command_is_500_with_its_stderr_and_restarts_nothing(tmp_path: Path) -> None:
    env = {"MODELS": "Qwen3-8B@(0)", "RESET_DEVICE_COMMAND": "echo 'tt-smi: no device at 0000:01' >&2; exit 3"}
    with live_server(env=env) as server:
        before = httpx.get(server.url + "/tt-liveness", timeout=10).json()["worker_info"]["0"]["pid"]
        r = httpx.post(server.url + "/tt-deep-reset", timeout=30)
        assert r.status_code == 500, r.text
        assert "exited with code 3" in r.json()["detail"] and "no device at 0000:01" in r.json()["detail"]
        time.sleep(0.5)
        after = httpx.get(server.url + "/tt-liveness", timeout=10).json()["worker_info"]["0"]
        assert after["pid"] == before and after["restart_count"] == 0
