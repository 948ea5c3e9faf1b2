"""A start that cannot succeed exits promptly, non-zero, with one clear line, and leaves no process.

Both entry points: `ttmedia serve`, and `uvicorn ttmedia.app:create_app --factory`.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.startup_support import base_env, run_to_exit, serve_command, with_sitecustomize

pytestmark = pytest.mark.timeout(120)

#: The acceptance bound for a failed start, from launch to exit.
PROMPT_S = 5.0


def _assert_failed_cleanly(result, code: int, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert result.code == code, (result.code, result.stderr)
    assert result.seconds < PROMPT_S, f"took {result.seconds:.1f} s: {result.stderr}"
    assert result.left == [], f"processes left behind: {result.left}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    reason = [line for line in lines if all(w in line for w in words)]
    assert reason, f"no line says {words}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def locked_data_dir() -> str:
    """A DATA_DIR whose job store another server holds (its lock taken, as that server's is)."""
    data_dir = tempfile.mkdtemp(prefix="ttmedia-data-")
    sqlite3.connect(Path(data_dir) / "jobs.db").close()
    holder = open(Path(data_dir) / ".lock", "ab")  # noqa: SIM115 - held for the test
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield data_dir
    holder.close()


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "uvicorn-factory"])
def test_data_dir_in_use(locked_data_dir: str, factory: bool) -> None:
    result = run_to_exit(serve_command("--port", str(free_port()), factory=factory),
                         base_env(DATA_DIR=locked_data_dir))
    _assert_failed_cleanly(result, 3, ["DATA_DIR", locked_data_dir.rstrip("/"), "another ttmedia server"])
    if not factory:  # found before anything started: no worker ever ran
        assert "serving" not in result.stderr and "Started server process" not in result.stderr


def test_port_in_use_is_said_before_anything_else() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(serve_command("--port", str(port)), base_env())
    _assert_failed_cleanly(result, 3, ["already in use", f"127.0.0.1:{port}"])
    assert "serving" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_port_in_use_under_the_uvicorn_factory() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(serve_command("--port", str(port), factory=True), base_env())
    assert result.code not in (0, None), result.stderr
    assert result.seconds < PROMPT_S + 3, result.stderr  # the factory path drains the started workers
    assert result.left == [], result.left
    assert "address already in use" in result.stderr


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "uvicorn-factory"])
def test_bad_settings_are_one_line_each_with_exit_code_2(factory: bool) -> None:
    env = base_env(DEVICE="n15", SIM_SPEED="fast", LOG_FORMAT="pretty", MAX_BATCH_SIZE="0")
    result = run_to_exit(serve_command("--port", str(free_port()), factory=factory), env)
    assert result.code == 2, result.stderr
    assert result.seconds < PROMPT_S and result.left == []
    assert "Traceback" not in result.stderr and "pydantic" not in result.stderr
    said = result.stderr
    assert "DEVICE='n15' is not accepted; expected one of: n150, n300" in said
    assert "SIM_SPEED='fast' is not accepted; expected a number >= 0" in said
    assert "LOG_FORMAT='pretty' is not accepted; expected one of: auto, json, text" in said
    assert "MAX_BATCH_SIZE='0' is not accepted; expected an integer >= 1 and <= 256" in said


def test_bad_models_setting_is_a_configuration_error() -> None:
    result = run_to_exit(serve_command("--port", str(free_port())), base_env(MODELS="gpt-9"))
    _assert_failed_cleanly(result, 2, ["configuration error", "gpt-9"])


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "uvicorn-factory"])
def test_runner_that_cannot_be_imported(tmp_path: Path, factory: bool) -> None:
    env = with_sitecustomize(base_env(MODELS="bge-m3", TEST_BROKEN_MODULE="ttmedia.runners.sim.embedding"), tmp_path)
    result = run_to_exit(serve_command("--port", str(free_port()), factory=factory), env)
    # The runner a model names is part of MODELS: a setting to fix, so exit code 2.
    _assert_failed_cleanly(result, 2, ["sim-embedding", "bge-m3", "cannot be imported"])


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "uvicorn-factory"])
def test_a_forkserver_that_dies(tmp_path: Path, factory: bool) -> None:
    env = with_sitecustomize(base_env(MODELS="bge-m3", TEST_FORKSERVER_DIES="1"), tmp_path)
    result = run_to_exit(serve_command("--port", str(free_port()), factory=factory), env)
    _assert_failed_cleanly(result, 3, ["cannot start the worker processes", "forkserver"])


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "uvicorn-factory"])
def test_both_entry_points_refuse_a_public_address_without_a_key(factory: bool) -> None:
    result = run_to_exit(serve_command("--host", "0.0.0.0", "--port", str(free_port()), factory=factory),
                         base_env())
    _assert_failed_cleanly(result, 2, ["refusing to listen on 0.0.0.0 without an API key", "NO_AUTH=1"])


def test_ipv6_loopback_is_printed_as_a_url() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    proc = subprocess.Popen(serve_command("--host", "::1", "--port", str(port)), env=base_env(MODELS="bge-m3"),
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()  # type: ignore[union-attr]
        assert f"on http://[::1]:{port} " in line, line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0


def test_processes_launched_early_that_nothing_adopts_are_killed() -> None:
    from ttmedia.runners.faults import parse_faults
    from ttmedia.scheduler.devices import served_models
    from ttmedia.scheduler.scheduler import worker_spec
    from ttmedia.scheduler.worker import EarlyLaunch
    from ttmedia.settings import Settings

    settings = Settings(models="bge-m3@(0),(1)", sim_speed=0, sim_warmup_seconds=0)
    model = served_models(settings)[0]
    faults = tuple(parse_faults(""))
    early = EarlyLaunch()
    early.start([worker_spec(settings, faults, model, group, incarnation=1) for group in model.groups])
    adopted = early.take(worker_spec(settings, faults, model, model.groups[0], incarnation=1))
    assert adopted is not None and adopted.process.is_alive()
    left = [launched for _spec, launched in early._launched]
    assert len(left) == 1 and left[0].process.is_alive()
    early.kill_unadopted()
    assert not left[0].process.is_alive()
    assert adopted.process.is_alive()  # a worker's own process is not the launcher's to kill
    adopted.process.kill()
    adopted.process.join(5)
