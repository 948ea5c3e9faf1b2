"""Start and stop servers for benchmarks: pinned to core 0 when the machine has two or more cores.

ttmedia runs as a service does: its default logging configuration (one JSON line per request),
stderr written to a file. `logging="off"` (LOG_LEVEL=warning) is only for a comparison row.
`source` runs the server from another checkout (bench.ab: interleaved A/B runs of two commits).
"""

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
    log_path: str | None = None

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
def ttmedia_server(env: dict[str, str], wait: str = "ready", timeout: float = 120.0, logging: str = "default",
                   source: str | None = None) -> Iterator[Server]:
    """`ttmedia serve` with the given settings; wait for "port", "ready" (/health 200) or "up" (any
    answer). Its stderr goes to a log file in its DATA_DIR, kept only if the server fails."""
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="ttmedia-bench-")
    full_env = {**os.environ, "DATA_DIR": data_dir, **env}
    for inherited in ("LOG_LEVEL", "LOG_FORMAT", "LOG_REQUESTS"):
        if inherited not in env:
            full_env.pop(inherited, None)
    if logging == "off":
        full_env["LOG_LEVEL"] = "warning"
    if source is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    cmd = pinned([sys.executable, "-m", "ttmedia", "serve", "--port", str(port)], SERVER_CORE)
    log_path = os.path.join(data_dir, "server.log")
    log_file = open(log_path, "wb")  # noqa: SIM115 - the server writes it until it stops
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, env=full_env, start_new_session=True, stdout=log_file, stderr=log_file,
                            cwd=source or None)
    server = Server(proc, f"http://127.0.0.1:{port}", port, launched, log_path)
    failed = True
    try:
        deadline = launched + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} during start-up (log: {log_path})")
            if wait == "port" and port_open(port):
                break
            status = http_status(server.url + "/health") if port_open(port) else None
            if (wait == "ready" and status == 200) or (wait == "up" and status is not None):
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"server not {wait} within {timeout} s (log: {log_path})")
        yield server
        failed = False
    finally:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log_file.close()
        if not failed:
            shutil.rmtree(data_dir, ignore_errors=True)


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
