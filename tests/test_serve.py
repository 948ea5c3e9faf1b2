"""`ttmedia serve` starts every worker before it imports the web stack, and the scheduler adopts
those processes: each device group has exactly one worker process, and restarts still work."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, live_server, wait_until

pytestmark = pytest.mark.timeout(120)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _worker_processes(server_pid: int) -> set[int]:
    """Workers are the children of the server's forkserver."""
    forkservers = [c for c in _children(server_pid) if "forkserver" in _cmdline(c)]
    return {w for f in forkservers for w in _children(f)}


def _liveness_pids(server: LiveServer) -> dict[str, int | None]:
    info = httpx.get(server.url + "/tt-liveness", timeout=10).json()["worker_info"]
    return {wid: w["pid"] for wid, w in info.items()}


def test_serve_starts_each_worker_once_and_the_scheduler_adopts_it() -> None:
    with live_server({"MODELS": "bge-m3@(0),(1),(2)", "SIM_WARMUP_SECONDS": "0.5"}, cli=True) as server:
        proc = server.proc
        assert wait_until(lambda: all(w["is_ready"] for w in httpx.get(server.url + "/tt-liveness").json()
                                      ["worker_info"].values()), 20)
        pids = _liveness_pids(server)
        assert len(pids) == 3 and None not in pids.values()
        # Exactly the adopted processes exist: none was launched a second time by the scheduler.
        assert _worker_processes(proc.pid) == set(pids.values())
        r = httpx.post(server.url + "/v1/embeddings", json={"input": "adopted"}, timeout=30)
        assert r.status_code == 200, r.text

        # A restart after adoption launches a fresh process through the forkserver.
        os.kill(pids["0"], signal.SIGKILL)
        assert wait_until(lambda: _liveness_pids(server)["0"] not in (None, pids["0"]), 30), "never restarted"
        assert wait_until(lambda: _worker_processes(proc.pid) == set(_liveness_pids(server).values()), 10)
        info = httpx.get(server.url + "/tt-liveness").json()["worker_info"]["0"]
        assert info["restart_count"] == 1
