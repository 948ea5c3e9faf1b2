"""A real server on 127.0.0.1 for tests, contract runs and benchmarks: start, wait, stop, clean up.

`live_server()` starts ttmedia (`ttmedia serve`, or any ASGI server command) on a free loopback
port, in a session of its own so that its process group holds it and every worker it spawns. It
waits until the server answers, and on the way out always stops that whole group and removes the
scratch directory it made (the DATA_DIR and the log file, unless the caller named their own).

    with live_server(env={"MODELS": "mine=my_pkg.runner:MyRunner~family=embedding"}) as server:
        httpx.post(server.url + "/v1/embeddings", json={"input": "hello"})

Stopping signals the server's own PID first, as a container runtime does, so what is tested is
the server's own shutdown (it must stop its workers); whatever is still in the group after the
grace, or after the leader exited, gets SIGKILL. `left_behind` records such leftovers.

Only the standard library is imported here (httpx and uvicorn are imported when used): runner
packages can depend on this module without pulling in the web stack at import time.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

HOST = "127.0.0.1"
#: "ready": /health answers 200; "up": /health answers at all (200, or 503 while models warm);
#: "port": the port accepts connections; "none": return as soon as the process is started.
Wait = Literal["ready", "up", "port", "none"]
#: Where the server's output goes: None, a `server.log` in the scratch directory (read it with
#: `log_text()`; its tail is in every start-up failure); "inherit", this process's stdout/stderr;
#: a path, a file there (kept); a file object or fd (subprocess.PIPE too), the server's stderr.
Log = None | Literal["inherit"] | str | os.PathLike[str] | int | IO[Any]

# Probes go straight to loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerNotUp(RuntimeError):
    """The server exited, or did not answer in time, during start-up (the message has its log's tail)."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status `url` answers with, None if nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def ttmedia_command(*args: str, factory: bool = False) -> list[str]:
    """`ttmedia serve` as operators run it, or with `factory` uvicorn on the app factory (the app
    starts its own workers)."""
    if factory:
        return [sys.executable, "-m", "uvicorn", "ttmedia.app:create_app", "--factory", *args]
    return [sys.executable, "-m", "ttmedia", "serve", *args]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, from /proc; [] where there is no /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


class LiveServer:
    """A started server: `url`, `port`, `pid`, `proc`, `data_dir`, `log_path`; `stop()` it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, port: int, *, data_dir: str | None = None,
                 log_path: Path | None = None, scratch: str | None = None, log_file: IO[Any] | None = None,
                 launched_at: float | None = None) -> None:
        self.proc, self.url, self.port = proc, url, port
        self.data_dir, self.log_path = data_dir, log_path
        self.launched_at = time.monotonic() if launched_at is None else launched_at
        self._scratch, self._log_file = scratch, log_file
        self.returncode: int | None = None
        #: seconds from the stop signal until the server's own process exited
        self.stop_seconds: float | None = None
        #: PIDs still in the server's process group after it exited (killed; a leak if not empty)
        self.left_behind: list[int] = []
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kwargs: Any) -> Any:
        """An httpx.Client on this server (30 s timeout unless given)."""
        import httpx

        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})

    def log_text(self, tail: int | None = None) -> str:
        """The server's log so far (the last `tail` characters), if it writes to a file."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-tail:] if tail else text

    def wait(self, until: Wait = "ready", timeout: float = 60.0, poll: float = 0.05,
             health: str = "/health") -> None:
        """Return once the server is `until`; raise ServerNotUp if it exits first or time runs out."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        while True:
            if self.proc.poll() is not None:
                raise ServerNotUp(self._failure(f"server exited with {self.proc.returncode} during start-up"))
            if until == "none" or (until == "port" and port_open(self.port)):
                return
            if until in ("ready", "up"):
                last = http_status(self.url + health)
                if last == 200 or (until == "up" and last == 503):
                    return
            if time.monotonic() > deadline:
                raise ServerNotUp(self._failure(
                    f"server not {until} within {timeout:.0f} s (last {health}: {last or 'no answer'})"))
            time.sleep(poll)

    def _failure(self, message: str) -> str:
        where = f"; log: {self.log_path}" if self.log_path and self._scratch is None else ""
        tail = self.log_text(3000)
        return f"{message} ({' '.join(map(str, self.proc.args if isinstance(self.proc.args, (list, tuple)) else [self.proc.args]))}){where}" + (
            f"\n--- server log, last lines ---\n{tail}" if tail else "")

    def stop(self, sig: int = signal.SIGTERM, grace: float = 30.0, *, group: bool = False) -> int | None:
        """Send `sig` to the server (to its whole process group with `group`), SIGKILL the group after
        `grace` seconds or once the server exited, remove the scratch directory. Returns the exit
        code (negative: killed by that signal). Safe to call twice."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        try:
            stopped = stop_group(self.proc, sig, grace, group=group)
            self.returncode, self.stop_seconds, self.left_behind = stopped
        finally:
            if self._log_file is not None:
                self._log_file.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
        return self.returncode


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 30.0, *,
               group: bool = False) -> tuple[int | None, float, list[int]]:
    """Stop a process started with `start_new_session=True`: `sig` to it (to its whole group with
    `group`), then SIGKILL to the group after `grace` seconds, or at once when it has exited.
    Returns (exit code or None, seconds until it exited, PIDs its group still held then)."""
    pgid = proc.pid  # start_new_session: the leader's PID is the group's ID
    started = time.monotonic()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    seconds = time.monotonic() - started
    left_behind = [pid for pid in group_members(pgid) if pid != proc.pid]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    code = None
    with contextlib.suppress(subprocess.TimeoutExpired):
        code = proc.wait(10)
    return code, seconds, left_behind


def _command_with_address(command: Sequence[str], host: str, port: int) -> list[str]:
    """`{host}` and `{port}` filled in where the command names them, else `--host H --port P` appended."""
    if any("{port}" in part for part in command):
        return [part.replace("{host}", host).replace("{port}", str(port)) for part in command]
    return [*command, "--host", host, "--port", str(port)]


def start_server(command: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
                 inherit_env: bool = True, wait: Wait = "ready", timeout: float = 60.0, log: Log = None,
                 cwd: str | os.PathLike[str] | None = None, host: str = HOST, port: int | None = None,
                 health: str = "/health", poll: float = 0.05) -> LiveServer:
    """Start `command` (default `ttmedia serve`) and wait for it; the caller must `stop()` it.

    The environment is this process's plus `env` (only `env` without `inherit_env`). DATA_DIR is a
    fresh scratch directory unless `env` names one: a test server never shares the operator's.
    """
    port = free_port(host) if port is None else port
    scratch = tempfile.mkdtemp(prefix="ttmedia-live-")
    try:
        full_env = {**(os.environ if inherit_env else {}), **(env or {})}
        if not (env and "DATA_DIR" in env):
            full_env["DATA_DIR"] = os.path.join(scratch, "data")
            os.mkdir(full_env["DATA_DIR"])
        log_path: Path | None = None
        log_file: IO[Any] | None = None
        stdout: Any = None
        stderr: Any = None
        if log is None or isinstance(log, (str, os.PathLike)) and log != "inherit":
            log_path = Path(scratch, "server.log") if log is None else Path(log)
            log_file = open(log_path, "wb")  # noqa: SIM115 - the server writes it until it stops
            stdout, stderr = log_file, subprocess.STDOUT
        elif log != "inherit":
            stderr = log
        launched = time.monotonic()
        proc = subprocess.Popen(_command_with_address(command or ttmedia_command(), host, port), env=full_env,
                                cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    server = LiveServer(proc, f"http://{host}:{port}", port, data_dir=full_env["DATA_DIR"], log_path=log_path,
                        scratch=scratch, log_file=log_file, launched_at=launched)
    try:
        server.wait(wait, timeout, poll, health)
    except BaseException:
        server.stop(grace=5)
        raise
    return server


@contextlib.contextmanager
def live_server(command: Sequence[str] | None = None, *, grace: float = 30.0,
                **options: Any) -> Iterator[LiveServer]:
    """`start_server(command, **options)` for the `with` block; stopped (SIGTERM, SIGKILL after
    `grace`) and cleaned up however the block ends. If the block fails, the log's tail is written
    to stderr, where pytest shows it beside the failure."""
    server = start_server(command, **options)
    try:
        yield server
    except BaseException:
        tail = server.log_text(3000)
        if tail:
            print(f"--- {server.url} server log, last lines ---\n{tail}", file=sys.stderr)
        raise
    finally:
        server.stop(grace=grace)


class InProcessServer:
    """uvicorn serving an app object on a thread of this process: `url`, `port`, `app`, `data_dir`.

    Only for tests that must reach inside the running app (a spy on its scheduler); everything
    else should use the subprocess `live_server`, which tests start-up and shutdown as deployed.
    """

    def __init__(self, app: Any, url: str, port: int, data_dir: str, server: Any,
                 thread: threading.Thread) -> None:
        self.app, self.url, self.port, self.data_dir = app, url, port, data_dir
        self._server, self._thread = server, thread

    def stop(self, grace: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(grace)
        if self._thread.is_alive():  # connections that do not close: stop waiting for them
            self._server.force_exit = True
            self._thread.join(5)
        if self._thread.is_alive():
            raise RuntimeError(f"in-process server {self.url} did not stop within {grace:.0f} s")


@contextlib.contextmanager
def serve_in_thread(make_app: Callable[[str], Any], *, wait: Wait = "ready", timeout: float = 60.0,
                    host: str = HOST, grace: float = 30.0, log_level: str = "warning",
                    health: str = "/health") -> Iterator[InProcessServer]:
    """Serve `make_app(data_dir)` with uvicorn on a thread, on a free loopback port, with a fresh
    DATA_DIR that is removed afterwards. The thread's server is stopped however the block ends."""
    import uvicorn

    data_dir = tempfile.mkdtemp(prefix="ttmedia-live-")
    try:
        app = make_app(data_dir)
        port = free_port(host)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        live = InProcessServer(app, f"http://{host}:{port}", port, data_dir, server, thread)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(live, wait, health):
                if not thread.is_alive():
                    raise ServerNotUp(f"in-process server on port {port} stopped during start-up")
                if time.monotonic() > deadline:
                    raise ServerNotUp(f"in-process server on port {port} not {wait} within {timeout:.0f} s")
                time.sleep(0.05)
            yield live
        finally:
            live.stop(grace)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _answers(server: InProcessServer, wait: Wait, health: str) -> bool:
    if wait == "none":
        return True
    if wait == "port":
        return port_open(server.port)
    status = http_status(server.url + health)
    return status == 200 or (wait == "up" and status == 503)
