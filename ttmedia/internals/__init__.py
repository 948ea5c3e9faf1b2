"""The one room for framework internals: every private or undocumented part of Connexion,
Starlette, uvicorn and the standard library that ttmedia relies on, behind small named
functions and classes. Nothing outside this package touches them (tests/test_internals.py
fails on a new one).

Each was written against one exact version, the one pinned in pyproject.toml (WRITTEN_AGAINST;
a test checks that the two agree). Importing a module of this package checks the installed
versions of what that module relies on (`require`): on any other version it raises
RuntimeError, because a private attribute that moved fails late and quietly (a fast path that
stops being taken, a leaked process), not at start-up.
An operator who knowingly runs other versions sets TTMEDIA_ALLOW_UNTESTED_FRAMEWORKS=1 and
gets a warning instead.

On an upgrade: bump the pin in pyproject.toml, re-read each function of the module named in
the error against the new version's source, run the suite, then update WRITTEN_AGAINST.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ALLOW_UNTESTED = "TTMEDIA_ALLOW_UNTESTED_FRAMEWORKS"
PYTHON = "python"


@dataclass(frozen=True)
class Pin:
    package: str  # a distribution name, or PYTHON for the interpreter's major.minor
    version: str
    module: str  # the file of this package that relies on it
    relies_on: str


WRITTEN_AGAINST: tuple[Pin, ...] = (
    Pin("connexion", "3.3.0", "connexion.py",
        "its operation, validator, request and middleware-app privates and its decorator chain"),
    Pin("starlette", "1.10.0", "starlette.py", "starlette._utils.get_route_path and Request._form"),
    Pin("uvicorn", "0.54.0", "uvicorn.py",
        "Server.handle_exit/capture_signals, Config.load calling the factory, and its HTTP protocol classes"),
    Pin(PYTHON, "3.11", "multiprocessing.py",
        "the forkserver singleton, multiprocessing.util's finalizers and Connection's wire framing"),
    Pin(PYTHON, "3.11", "stdlib.py", "atexit._run_exitfuncs and logging._srcfile"),
)


def installed_version(package: str) -> str | None:
    """The installed version: the interpreter's major.minor for PYTHON; else the imported
    module's __version__ (free), or the distribution's metadata (a few milliseconds)."""
    if package == PYTHON:
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    version = getattr(sys.modules.get(package), "__version__", None)
    if isinstance(version, str):
        return version
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def mismatches(module: str | None = None,
               installed: Callable[[str], str | None] = installed_version) -> list[str]:
    """One line for each pin (of one module of this package, or of all) that the installed
    version does not match."""
    lines = []
    for pin in WRITTEN_AGAINST:
        if module is not None and pin.module != module:
            continue
        found = installed(pin.package)
        if found != pin.version:
            lines.append(f"{pin.package} {found or '(not installed)'} is installed, but ttmedia was written "
                         f"against {pin.package} {pin.version}: ttmedia/internals/{pin.module} relies on "
                         f"{pin.relies_on}; re-check it and update the pin")
    return lines


def require(module: str | None = None, installed: Callable[[str], str | None] = installed_version,
            environ: Mapping[str, str] = os.environ) -> None:
    """Raise RuntimeError if a version the module (a file name of this package; None: all of
    them) was written against is not the one installed. With TTMEDIA_ALLOW_UNTESTED_FRAMEWORKS=1,
    a RuntimeWarning instead."""
    lines = mismatches(module, installed)
    if not lines:
        return
    if environ.get(ALLOW_UNTESTED, "") == "1":
        for line in lines:
            warnings.warn(f"{line} ({ALLOW_UNTESTED}=1: running anyway)", RuntimeWarning, stacklevel=2)
        return
    raise RuntimeError("; ".join(lines) + f". (Set {ALLOW_UNTESTED}=1 to run anyway, untested.)")

