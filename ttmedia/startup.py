"""What a start-up that cannot succeed does: say why in one line, leave no process behind, exit.

Exit codes: 2 for settings that cannot work (a bad value, an open server on a public address),
3 for a start that failed (the port or DATA_DIR in use, a runner that cannot be imported,
worker processes that cannot be started), as uvicorn's own start-up failures.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttmedia.scheduler.devices import ServedModel
    from ttmedia.settings import Settings

EXIT_CONFIG = 2
EXIT_STARTUP = 3


class _Process:
    #: This process is the server (`ttmedia serve`, or the app factory under uvicorn), not a
    #: test or program embedding the app: at shutdown it may end the forkserver and remove the
    #: temp directory multiprocessing made for it.
    owned = False


PROCESS = _Process()


class StartupFailed(RuntimeError):
    """Start-up cannot go on; the message is the one line to show."""


class RunnerUnavailable(StartupFailed):
    pass


class StartupReported(StartupFailed):
    """Start-up failed and the reason is logged: the server need not print the traceback."""


def quiet_lifespan_failure(send: Any) -> Any:
    """Wrap a lifespan `send`: for a failure already reported, uvicorn is handed no traceback to
    print, and its own "Application startup failed" line is left out: the reason is the line."""
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.failed" and StartupReported.__name__ in message.get("message", ""):
            message = {**message, "message": ""}
            logging.getLogger("uvicorn.error").addFilter(_drop_generic_failure_line)
        await send(message)

    return wrapped


def _drop_generic_failure_line(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Application startup failed. Exiting."


def check_runners(models: list[ServedModel]) -> None:
    """Every served model's runner module can be found, without importing it here (a real
    runner's import can take seconds and gigabytes; the worker pays that, not the server)."""
    from ttmedia.runners import registry

    targets: dict[str, str] = {}
    for model in models:
        name = model.info.runner
        if name not in targets:
            # A resolved target if the model has one, an import target given as the name itself,
            # else the registry's entry for the name.
            targets[name] = (getattr(model, "runner_target", "") or (name if ":" in name else "")
                             or registry.BUILTIN.get(name) or registry.available().get(name, ""))
    for name, target in targets.items():
        module = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
            problem = f"module {module} not found"
        except (ImportError, ValueError) as exc:
            found, problem = False, f"{type(exc).__name__}: {exc}"
        if not found:
            users = ", ".join(m.name for m in models if m.info.runner == name)
            raise RunnerUnavailable(f"runner {name!r} of {users} cannot be imported ({problem}); "
                                    "install the package that provides it, or serve other MODELS")


def check_data_dir(settings: Settings) -> None:
    """Fail now, before any worker starts, if another server holds the SQLite job store's
    directory (its lock, taken and released; the app takes it again when it opens the store).
    A shared store (PostgreSQL) is meant to have other servers on it: nothing to check."""
    from ttmedia.jobs.store import StoreLocked, open_store
    from ttmedia.jobs.store_sqlite import SqliteJobStore

    try:
        store = open_store(settings.job_store_url, settings.data_dir, replica="startup-check")
    except ValueError:
        return  # a bad JOB_STORE_URL is the settings' error to report, not this check's
    if not isinstance(store, SqliteJobStore):
        return
    try:
        store.check_unlocked()
    except StoreLocked as exc:
        raise StartupFailed(describe(exc)) from None


def describe(exc: BaseException, doing: str = "") -> str:
    """One line for an exception that ended start-up: what failed, and where for a bug."""
    from ttmedia.jobs.store import StoreLocked

    if isinstance(exc, StartupFailed):
        return str(exc)
    if isinstance(exc, StoreLocked):
        return f"{exc}; stop that server, or set DATA_DIR to a directory of this server's own"
    said = " ".join(str(exc).split())  # one line, whatever the message
    text = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if any(f.filename.endswith(("multiprocessing/forkserver.py", "multiprocessing/popen_forkserver.py"))
           for f in frames):
        text = f"the forkserver (the process worker processes are forked from) did not answer ({text})"
    elif frames and not isinstance(exc, OSError):
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return f"{doing}: {text}" if doing else text


def kill_children() -> None:
    """Kill every worker process of this server: those the scheduler adopted and those started
    early that nothing adopted. They ignore SIGTERM (the scheduler stops them), so without this
    the interpreter's exit would wait for them forever."""
    from ttmedia.scheduler.worker import EARLY_LAUNCH

    EARLY_LAUNCH.kill_unadopted()
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(5)
    _stop_forkserver()


def release_process() -> None:
    """After the last worker has stopped: end the forkserver and remove multiprocessing's temp
    directory (pymp-*, it holds the forkserver's socket) now. Both would go at the
    interpreter's exit, but uvicorn ends the process with the signal it caught (SIGTERM), which
    skips exit handlers and left a pymp-* directory behind for every server start."""
    from ttmedia.internals.multiprocessing import remove_temp_dir_now

    _stop_forkserver()
    remove_temp_dir_now()


def _stop_forkserver() -> None:
    """The forkserver leaves by itself when this process exits, but only once it is done
    importing the worker modules (a second or more): end it now, so no process outlives us."""
    from ttmedia.internals.multiprocessing import stop_forkserver

    stop_forkserver()
