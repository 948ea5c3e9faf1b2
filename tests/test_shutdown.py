"""SIGTERM under load: in-flight requests finish, new ones are refused, no worker outlives the server."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx

from tests.helpers import live_server, wait_until


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_drains_in_flight_requests_and_leaves_no_children():
    # Each image takes ~1.3 s of simulated device time: requests are in flight when SIGTERM lands.
    env = {"SIM_SPEED": "0.5", "DRAIN_GRACE_SECONDS": "20"}
    with live_server(env, cli=True) as server:
        proc = server.proc
        pids = [w["pid"] for w in httpx.get(server.url + "/tt-liveness").json()["worker_info"].values()]
        body = {"prompt": "drain me", "num_inference_steps": 12, "size": "512x512"}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, server.url + "/v1/images/generations", json=body, timeout=60)
                       for _ in range(3)]
            time.sleep(0.5)
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200, 200, 200], statuses
        # uvicorn re-raises the signal once it has shut down cleanly, as a process killed by it would.
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 20, "exit took longer than the drain grace"
        for pid in pids:
            assert wait_until(lambda pid=pid: not _process_alive(pid), 10), f"worker {pid} outlived the server"
