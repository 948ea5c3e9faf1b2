"""Running a server start that is meant to fail (or to be stopped), and looking for what it left.

Every server here runs in its own session, so its process group holds it, its forkserver and
every worker: whatever is left in that group after it exits is a leak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import BASIC_MODELS

#: A sitecustomize for the server's processes: it breaks one module's import, or makes the
#: forkserver die as it starts, as a broken runner package or an OOM-killed forkserver would.
SITECUSTOMIZE = textwrap.dedent('''
    import os, sys
    _broken = os.environ.get("TEST_BROKEN_MODULE")
    if _broken:
        class _Refuse:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == _broken:
                    raise ModuleNotFoundError(f"No module named {name!r} (broken by the test)", name=name)
                return None
        sys.meta_path.insert(0, _Refuse)
    if os.environ.get("TEST_FORKSERVER_DIES"):
        with open("/proc/self/cmdline", "rb") as f:
            if b"multiprocessing.forkserver import main" in f.read():
                os._exit(1)
''')


@dataclass
class Exited:
    code: int | None  # None: still running when we gave up waiting
    seconds: float
    stderr: str
    left: list[int]  # processes of its group still alive afterwards


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def base_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0", "MODELS": BASIC_MODELS,
           "DATA_DIR": tempfile.mkdtemp(prefix="ttmedia-data-"), "LOG_FORMAT": "text"}
    env.update(extra)
    return env


def with_sitecustomize(env: dict[str, str], tmp: Path) -> dict[str, str]:
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp), env.get("PYTHONPATH")]))
    return env


def serve_command(*args: str, factory: bool = False) -> list[str]:
    if factory:
        return [sys.executable, "-m", "uvicorn", "ttmedia.app:create_app", "--factory", *args]
    return [sys.executable, "-m", "ttmedia", "serve", *args]


def run_to_exit(command: list[str], env: dict[str, str], timeout: float = 20.0) -> Exited:
    """Start the command and wait for it to exit by itself (up to `timeout`); then kill its group."""
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code, out = None, ""
    seconds = time.monotonic() - started
    # A leaked process may take a moment to be seen as one (a worker being reaped by now).
    deadline = time.monotonic() + 1.0
    while (left := group_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if code is None:
        out = proc.communicate()[0]
    return Exited(code, seconds, out, left)
