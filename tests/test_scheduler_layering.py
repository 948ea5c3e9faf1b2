"""The scheduler knows nothing of HTTP: its modules load without the web stack, its errors carry
no status, and one table (web/scheduler_problems.py) says what a client is told for each."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ttmedia.scheduler
from ttmedia.web import problems
from ttmedia.web.scheduler_problems import TABLE, as_problem
from ttmedia.scheduler import errors

SCHEDULER_DIR = Path(ttmedia.scheduler.__file__).parent
FORBIDDEN = ("ttmedia.web", "ttmedia.handlers", "ttmedia.app", "starlette", "connexion")


def _scheduler_modules() -> list[str]:
    return sorted(f"ttmedia.scheduler.{m.name}" for m in pkgutil.iter_modules([str(SCHEDULER_DIR)]))


def test_scheduler_modules_load_without_the_web_stack() -> None:
    modules = _scheduler_modules()
    assert "ttmedia.scheduler.pool" in modules and "ttmedia.scheduler.errors" in modules
    # A fresh interpreter: this one has the app loaded already.
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = json.loads(out.stdout)
    leaks = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not leaks, f"importing the scheduler loads {leaks}"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_worker_handle_does_not_import_the_pool() -> None:
    # Even under TYPE_CHECKING: the pool owns its dispatch bookkeeping; the worker is a process handle.
    assert not {m for m in _imports(SCHEDULER_DIR / "worker.py") if m.startswith("ttmedia.scheduler.pool")}


def test_scheduler_errors_carry_no_http() -> None:
    source = (SCHEDULER_DIR / "errors.py").read_text()
    for word in ("status", "HTTP", "http", "header", "Retry-After", "problem"):
        assert word not in source.split('"""', 2)[2], word  # the module docstring may say where they map
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.SchedulerError):
            assert not issubclass(cls, problems.Problem)


def _every_error() -> list[errors.SchedulerError]:
    return [
        errors.NotReady("warming", reason="warming_up", retry_after=7.2, model="m", state="warming"),
        errors.WorkerLost("lost", retry_after=0.2, model="m", state="unavailable"),
        errors.DeviceFailed("broke", retry_after=3, model="m", state="degraded"),
        errors.QueueFull("full", retry_after=0.3),
        errors.CallTimedOut("slow"),
        errors.RunnerRejected("bad input"),
        errors.RunnerFailed("diverged"),
        errors.RunnerIncomplete("no tokenizer"),
        errors.ResetFailed("exit 1"),
        errors.UnknownModel("no such model"),
        errors.UnknownDevice("no such device"),
    ]


@pytest.mark.parametrize(("error", "status", "reason", "retry_after"), list(zip(_every_error(), [
    503, 503, 503, 429, 504, 422, 500, 500, 500, 404, 404], [
    "warming_up", "worker_lost", "device_error", "queue_full", "timeout", "invalid_request", "internal",
    "internal", "internal", "model_not_found", "not_found"], [
    "8", "1", "3", "1", None, None, None, None, None, None, None], strict=True)), ids=lambda v: type(v).__name__)
def test_each_scheduler_error_has_its_answer(error: errors.SchedulerError, status: int, reason: str,
                                             retry_after: str | None) -> None:
    problem = as_problem(error)
    assert (problem.status, problem.reason, problem.detail) == (status, reason, error.message)
    assert problem.headers.get("Retry-After") == retry_after
    body = problem.body()
    assert body["type"] == f"https://ttmedia.dev/problems/{reason}" and body["status"] == status
    if isinstance(error, errors.NotReady):
        assert (body["model"], body["state"]) == (error.model, error.state)


def test_every_scheduler_error_class_is_in_the_table() -> None:
    classes = {cls for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.SchedulerError) and cls is not errors.SchedulerError}
    covered = {cls for cls in classes if any(base in TABLE for base in cls.__mro__)}
    assert covered == classes
    assert {type(e) for e in _every_error()} == classes


def test_not_ready_rejects_unknown_reasons() -> None:
    with pytest.raises(ValueError):
        errors.NotReady("x", reason="busy", retry_after=1)
