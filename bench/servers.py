"""Start and stop servers for benchmarks: pinned to core 0 when the machine has two or more cores.

ttmedia runs as a service does: its default logging configuration (one JSON line per request),
stderr written to a file. `logging="off"` (LOG_LEVEL=warning) is only for a comparison row.
`source` runs the server from another checkout (bench.ab: interleaved A/B runs of two commits).
Starting, waiting and stopping (by process group) is ttmedia/testing/harness.py's, as in the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator

from ttmedia.testing.harness import (
    LiveServer,
    ServerNotUp,
    Wait,
    free_port,
    http_status,
    port_open,
    start_server,
)

__all__ = ["LOAD_CORE", "SERVER_CORE", "LiveServer", "free_port", "http_status", "pinned",
           "pinning_available", "port_open", "starlette_server", "ttmedia_server"]

SERVER_CORE = "0"
LOAD_CORE = "1"


def compile_bytecode(source: str | None = None) -> None:
    """Measure the server as deployed: `pip install` and the Docker image compile its bytecode,
    while a checkout run with PYTHONDONTWRITEBYTECODE=1 would recompile it at every start (and
    in the workers, and on the first use of each lazily imported module, inside a window).
    `source`: the tree that `ttmedia_server(source=...)` serves, else the installed package."""
    import compileall

    if source is None:
        import ttmedia

        compileall.compile_dir(os.path.dirname(ttmedia.__file__), quiet=1)
    else:
        compileall.compile_dir(os.path.join(source, "ttmedia"), quiet=1)


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: list[str], core: str) -> list[str]:
    return ["taskset", "-c", core, *cmd] if pinning_available() else cmd


@contextlib.contextmanager
def ttmedia_server(env: dict[str, str], wait: Wait = "ready", timeout: float = 120.0,
                   logging: str = "default", source: str | None = None) -> Iterator[LiveServer]:
    """`ttmedia serve` with the given settings, pinned to SERVER_CORE; wait for "port", "ready"
    (/health 200) or "up" (/health answers). Its output goes to a log file in a scratch directory
    (with its DATA_DIR), removed when it stops; a failed start-up raises with the log's tail."""
    full_env = dict(os.environ)
    for inherited in ("DATA_DIR", "LOG_LEVEL", "LOG_FORMAT", "LOG_REQUESTS"):
        if inherited not in env:
            full_env.pop(inherited, None)
    full_env.update(env)
    if logging == "off":
        full_env["LOG_LEVEL"] = "warning"
    if source is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    command = pinned([sys.executable, "-m", "ttmedia", "serve"], SERVER_CORE)
    try:
        server = start_server(command, env=full_env, inherit_env=False, wait=wait, timeout=timeout,
                              cwd=source, poll=0.01)
    except ServerNotUp as exc:
        raise RuntimeError(str(exc)) from None
    try:
        yield server
    finally:
        server.stop(grace=60)


@contextlib.contextmanager
def starlette_server() -> Iterator[LiveServer]:
    command = pinned([sys.executable, "-m", "uvicorn", "bench.starlette_app:app", "--log-level", "warning",
                      "--no-access-log"], SERVER_CORE)
    try:
        server = start_server(command, timeout=30)
    except ServerNotUp as exc:
        raise RuntimeError(f"baseline server did not start: {exc}") from None
    try:
        yield server
    finally:
        server.stop(grace=60)
