"""Start and stop servers for benchmarks: pinned to core 0 when the machine has two or more cores."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

SERVER_CORE = "0"
LOAD_CORE = "1"


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: list[str], core: str) -> list[str]:
    return ["taskset", "-c", core, *cmd] if pinning_available() else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    launched_at: float

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
        """Signal the server's PID; return seconds until it exited (SIGKILL of its group after timeout)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return time.monotonic() - started


@contextlib.contextmanager
def ttmedia_server(env: dict[str, str], wait: str = "ready", timeout: float = 120.0) -> Iterator[Server]:
    """`ttmedia serve` with the given settings; wait for "port", "ready" (/health 200) or "up" (any answer)."""
    port = free_port()
    full_env = {**os.environ, "LOG_LEVEL": "warning", "DATA_DIR": tempfile.mkdtemp(prefix="ttmedia-bench-"), **env}
    cmd = pinned([sys.executable, "-m", "ttmedia", "serve", "--port", str(port), "--log-level", "warning"], SERVER_CORE)
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, env=full_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, f"http://127.0.0.1:{port}", port, launched)
    try:
        deadline = launched + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} during start-up")
            if wait == "port" and port_open(port):
                break
            status = http_status(server.url + "/health") if port_open(port) else None
            if (wait == "ready" and status == 200) or (wait == "up" and status is not None):
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"server not {wait} within {timeout} s")
        yield server
    finally:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def starlette_server() -> Iterator[Server]:
    port = free_port()
    cmd = pinned([sys.executable, "-m", "uvicorn", "bench.starlette_app:app", "--port", str(port),
                  "--log-level", "warning", "--no-access-log"], SERVER_CORE)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, f"http://127.0.0.1:{port}", port, time.monotonic())
    try:
        deadline = time.monotonic() + 30
        while http_status(server.url + "/health") != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("baseline server did not start")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
