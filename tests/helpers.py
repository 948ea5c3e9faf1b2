"""Shared test helpers: in-process apps with real workers, and live servers on loopback (ttmedia.testing)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ttmedia.web.app import create_app
from ttmedia.settings import Settings
from ttmedia.testing import LiveServer, free_port, ttmedia_command
from ttmedia.testing import live_server as harness_live_server

__all__ = ["BASIC_MODELS", "FAST", "LiveServer", "app_client", "free_port", "live_server", "wait_until"]

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
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ttmedia-data-",
                                                                   ignore_cleanup_errors=True))
        app = create_app(Settings(**{**FAST, "models": BASIC_MODELS, "data_dir": data_dir, **overrides}))
        client = stack.enter_context(app.test_client())
        if ready:
            assert wait_until(lambda: client.get("/health").status_code == 200), "server never became ready"
        client.app_runtime = app.runtime
        yield client


@contextlib.contextmanager
def live_server(env: dict[str, str] | None = None, wait_ready: bool = True, timeout: float = 60.0,
                cli: bool = False, stderr: Any = None, args: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """ttmedia on 127.0.0.1 and a free port, by ttmedia.testing's harness, with the tests' defaults:
    instant simulated devices, BASIC_MODELS, warnings only, a fresh DATA_DIR. With `cli`, started
    as operators do, by `ttmedia serve` (which also starts the workers before the app); else by
    uvicorn on the app factory. `stderr`: where its log goes (a file, a pipe); the test's own
    stderr if None."""
    full_env = {"SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0", "LOG_LEVEL": "warning", "MODELS": BASIC_MODELS,
                **(env or {})}
    command = ttmedia_command("--log-level", full_env["LOG_LEVEL"].lower(), *args, factory=not cli)
    with harness_live_server(command, env=full_env, wait="ready" if wait_ready else "up", timeout=timeout,
                             log="inherit" if stderr is None else stderr) as server:
        yield server
