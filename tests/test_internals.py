"""Framework internals live in ttmedia/internals/ only, and only on the versions they were read
against.

The guard (test_no_framework_internals_outside_the_internals_package) flags, in ttmedia/ outside
ttmedia/internals/:

1. an import of a private module or name (a dotted part starting with "_") from a watched
   package (connexion, starlette, uvicorn, h11, httptools, multiprocessing);
2. `x._name` where `x` is a name this file imported from a watched package, or the stdlib
   modules sys, atexit and logging (`sys._getframe`, `atexit._run_exitfuncs`, `logging._srcfile`);
3. `anything._name` where `_name` is a private attribute the watched packages define (a
   `def _name`, a `self._name =`, or a class-level `_name` in their source) and ttmedia does not
   define itself (a def, a `self._name =` or a class-level or module-level assignment; a bare
   annotation does not count): `operation._operation`, `app._middleware_app`, `self._schema`;
4. a class of ours that overrides a private attribute of a watched base class (`def _parse` in a
   Connexion validator subclass), found at run time through each class's MRO.

Rule 3 cannot see a private name that ttmedia also uses for its own (`_form`, `_body`): the
version check is the net under those.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

import ttmedia
from ttmedia import internals

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ttmedia"
INTERNALS = PACKAGE / "internals"
WATCHED = ("connexion", "starlette", "uvicorn", "h11", "httptools", "multiprocessing")
WATCHED_STDLIB = ("sys", "atexit", "logging")


# --- the version check ------------------------------------------------------------------------


def _as_pinned(package: str) -> str | None:
    return next((p.version for p in internals.WRITTEN_AGAINST if p.package == package), None)


def test_the_pinned_versions_pass():
    assert internals.mismatches() == []
    internals.require()  # nothing raised


def test_another_version_fails_loudly_naming_package_versions_and_file():
    def fake(package: str) -> str | None:
        return "3.4.0" if package == "connexion" else _as_pinned(package)

    with pytest.raises(RuntimeError) as raised:
        internals.require("connexion.py", installed=fake, environ={})
    message = str(raised.value)
    assert "connexion 3.4.0 is installed" in message
    assert "written against connexion 3.3.0" in message
    assert "ttmedia/internals/connexion.py relies on" in message
    assert "re-check it and update the pin" in message
    assert internals.ALLOW_UNTESTED in message  # the way out is named
    # Another module's pins are not this module's business.
    internals.require("uvicorn.py", installed=fake, environ={})


def test_a_missing_package_and_another_python_fail_too():
    def fake(package: str) -> str | None:
        return {"uvicorn": None, internals.PYTHON: "3.14"}.get(package, _as_pinned(package))

    with pytest.raises(RuntimeError, match=r"uvicorn \(not installed\) is installed"):
        internals.require("uvicorn.py", installed=fake, environ={})
    with pytest.raises(RuntimeError, match=r"python 3\.14 is installed, but .* python 3\.11: "
                                           r"ttmedia/internals/multiprocessing\.py relies on"):
        internals.require("multiprocessing.py", installed=fake, environ={})


def test_the_escape_hatch_warns_instead():
    with pytest.warns(RuntimeWarning, match="starlette 2.0.0 is installed.*running anyway"):
        internals.require(None, installed=lambda p: "2.0.0" if p == "starlette" else _as_pinned(p),
                          environ={internals.ALLOW_UNTESTED: "1"})
    with pytest.raises(RuntimeError):  # only "1" opens it
        internals.require(None, installed=lambda p: "2.0.0" if p == "starlette" else _as_pinned(p),
                          environ={internals.ALLOW_UNTESTED: "yes"})


_FAKE_CONNEXION = """
import importlib.metadata as m
real = m.version
m.version = lambda name: "9.9.9" if name == "connexion" else real(name)
import ttmedia.web.app
print("imported")
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if k != internals.ALLOW_UNTESTED}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**environ, **env})


def test_importing_the_app_on_an_unpinned_connexion_fails_at_import():
    result = _run(_FAKE_CONNEXION)
    assert result.returncode != 0
    assert "imported" not in result.stdout
    assert "RuntimeError: connexion 9.9.9 is installed, but ttmedia was written against connexion 3.3.0: " \
           "ttmedia/internals/connexion.py relies on" in result.stderr


def test_the_escape_hatch_lets_the_app_import_with_a_warning():
    result = _run(_FAKE_CONNEXION, **{internals.ALLOW_UNTESTED: "1"})
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout
    assert "RuntimeWarning: connexion 9.9.9 is installed" in result.stderr


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)", requirement.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    pins[internals.PYTHON] = project["requires-python"].removeprefix(">=")
    return pins


def test_every_version_the_internals_expect_is_the_pin_in_pyproject():
    pins = _pyproject_pins()
    for pin in internals.WRITTEN_AGAINST:
        assert pins.get(pin.package) == pin.version, (
            f"pyproject.toml pins {pin.package} {pins.get(pin.package)}, ttmedia/internals/{pin.module} "
            f"expects {pin.version}: re-check the module against the pin and update WRITTEN_AGAINST")
    assert all((INTERNALS / pin.module).is_file() for pin in internals.WRITTEN_AGAINST)


def test_every_internals_module_checks_its_versions_at_import():
    for path in INTERNALS.glob("*.py"):
        if path.name != "__init__.py":
            assert f'require("{path.name}")' in path.read_text(), path.name
            assert any(pin.module == path.name for pin in internals.WRITTEN_AGAINST), path.name


# --- no internals outside the room -----------------------------------------------------------


def _our_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if INTERNALS not in p.parents]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


_DEFINES = re.compile(r"(?:def\s+|(?:self|cls)\.)(_[A-Za-z]\w*)|^\s*(_[A-Za-z]\w*)\s*[:=]", re.MULTILINE)


def _watched_privates() -> set[str]:
    names: set[str] = set()
    for package in WATCHED:
        module = importlib.import_module(package)
        for path in Path(module.__file__ or "").parent.rglob("*.py"):
            for match in _DEFINES.finditer(path.read_text(encoding="utf-8", errors="replace")):
                names.add(match.group(1) or match.group(2))
    return {n for n in names if _private(n)}


def _our_privates(trees: dict[Path, ast.Module]) -> set[str]:
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            names.add(leaf.id)
                        elif (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name)
                              and leaf.value.id in ("self", "cls")):
                            names.add(leaf.attr)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target = node.target
                names.add(target.id if isinstance(target, ast.Name) else getattr(target, "attr", ""))
    return {n for n in names if _private(n)}


def _root(module: str | None) -> str:
    return (module or "").split(".")[0]


def _static_findings(extra: tuple[Path, ...] = ()) -> list[str]:
    files = _our_files() + list(extra)
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in files}
    suspects = _watched_privates() - _our_privates(trees)
    findings = []
    for path, tree in trees.items():
        where = path.relative_to(ROOT) if ROOT in path.parents else path
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _root(alias.name) in WATCHED + WATCHED_STDLIB:
                        imported.add((alias.asname or alias.name).split(".")[0])
                        if any(_private(part) for part in alias.name.split(".")):
                            findings.append(f"{where}:{node.lineno}: import {alias.name}")
            elif isinstance(node, ast.ImportFrom) and _root(node.module) in WATCHED + WATCHED_STDLIB:
                if any(_private(part) for part in (node.module or "").split(".")):
                    findings.append(f"{where}:{node.lineno}: from {node.module} import ...")
                for alias in node.names:
                    imported.add(alias.asname or alias.name)
                    if _private(alias.name):
                        findings.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                on_import = isinstance(node.value, ast.Name) and node.value.id in imported
                if on_import or node.attr in suspects:
                    findings.append(f"{where}:{node.lineno}: .{node.attr}")
    return findings


def _our_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(ttmedia.__path__, "ttmedia."):
        if not info.name.startswith(("ttmedia.internals", "ttmedia.runners.cpu.", "ttmedia.__main__")):
            names.append(info.name)
    return names


#: Set on every class by the machinery of abc, not by the class's author.
_NOT_OVERRIDES = {"_abc_impl"}


def _override_findings() -> list[str]:
    findings = []
    for name in _our_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if not (isinstance(value, type) and value.__module__ == name):
                continue
            theirs = [c for c in value.__mro__ if _root(c.__module__) in WATCHED]
            for attr in vars(value):
                if _private(attr) and attr not in _NOT_OVERRIDES and any(attr in vars(c) for c in theirs):
                    findings.append(f"{name}.{value.__qualname__}.{attr} overrides a private of "
                                    f"{next(c for c in theirs if attr in vars(c)).__qualname__}")
    return findings


def test_no_framework_internals_outside_the_internals_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        findings = _static_findings() + _override_findings()
    assert not findings, ("framework internals outside ttmedia/internals/ (put them behind a named function "
                          "there, with a comment and a pin):\n" + "\n".join(findings))


def test_the_guard_sees_each_kind_of_internal(tmp_path, monkeypatch):
    """The guard is not blind: each of its rules catches the code it was written for."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import sys\n"
        "from starlette._utils import get_route_path\n"
        "from multiprocessing import forkserver\n"
        "def f(app, operation):\n"
        "    sys._getframe(1)\n"
        "    forkserver._forkserver\n"
        "    app._middleware_app\n"
        "    return operation._operation, get_route_path\n")
    findings = "\n".join(_static_findings((sample,)))
    for expected in ("from starlette._utils import", "._getframe", "._forkserver", "._middleware_app",
                     "._operation"):
        assert expected in findings, expected

    from connexion.validators import FormDataValidator

    class Sneaky(FormDataValidator):
        def _parse(self, *args, **kwargs):  # a private hook of Connexion's
            return None

    Sneaky.__module__ = "ttmedia.sneaky"
    fake = type(sys)("ttmedia.sneaky")
    fake.Sneaky = Sneaky
    monkeypatch.setitem(sys.modules, "ttmedia.sneaky", fake)
    monkeypatch.setattr(sys.modules[__name__], "_our_modules", lambda: ["ttmedia.sneaky"])
    assert any("Sneaky._parse overrides a private of FormDataValidator" in f for f in _override_findings())
