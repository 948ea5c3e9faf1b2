"""Shared test helpers: in-process apps with real workers, and live uvicorn servers on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx

from ttmedia.web.app import create_app
from ttmedia.settings import Settings

#: Fast, instant simulated devices for tests that are not about timing.
FAST = {"sim_speed": 0.0, "sim_warmup_seconds": 0.0, "validate_responses": True,
        "worker_restart_backoff_seconds": 0.1}
#: The foundation's two families; route-family tests name their own MODELS.
BASIC_MODELS = "stable-diffusion-xl-base-1.0;Qwen3-8B"


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@contextlib.contextmanager
def app_client(ready: bool = True, **overrides: Any) -> Iterator[Any]:
    """A Connexion test client with real worker processes; waits for /health 200 if `ready`."""
    # A fresh DATA_DIR per app: the jobs store locks its directory (one server per DATA_DIR).
    data_dir = tempfile.mkdtemp(prefix="ttmedia-data-")
    app = create_app(Settings(**{**FAST, "models": BASIC_MODELS, "data_dir": data_dir, **overrides}))
    with app.test_client() as client:
        if ready:
            assert wait_until(lambda: client.get("/health").status_code == 200), "server never became ready"
        client.app_runtime = app.runtime
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc, self.url = proc, url

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kw})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server's PID (as Kubernetes does), then SIGKILL its whole group if it lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)


@contextlib.contextmanager
def live_server(env: dict[str, str] | None = None, wait_ready: bool = True, timeout: float = 60.0,
                cli: bool = False, stderr: Any = None, args: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """uvicorn on 127.0.0.1 and a random free port, in its own process group; with `cli`, started
    as operators do, by `ttmedia serve` (which also starts the workers before the app). `stderr`:
    where its log goes (a file, a pipe); the test's own stderr if None."""
    port = free_port()
    full_env = {**os.environ, "SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0", "LOG_LEVEL": "warning",
                "DATA_DIR": tempfile.mkdtemp(prefix="ttmedia-data-"),
                "MODELS": BASIC_MODELS, **(env or {})}
    command = ([sys.executable, "-m", "ttmedia", "serve"] if cli else
               [sys.executable, "-m", "uvicorn", "ttmedia.app:create_app", "--factory"])
    log_level = ["--log-level", full_env["LOG_LEVEL"].lower()]
    proc = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port), *log_level, *args],
                            env=full_env, start_new_session=True, stderr=stderr)
    server = LiveServer(proc, f"http://127.0.0.1:{port}")
    try:
        def up() -> bool:
            try:
                r = httpx.get(server.url + "/health", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 or (not wait_ready and r.status_code == 503)
        assert wait_until(up, timeout, 0.1), "live server did not come up"
        yield server
    finally:
        server.stop()
