"""Handlers and spec agree: every operationId resolves, every public handler function is an
operation, and each handler takes exactly the arguments Connexion passes. Plus `ttmedia stubs`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import ttmedia.handlers
from ttmedia import stubs
from ttmedia.web import problems
from ttmedia.web.app import load_spec

SPEC = load_spec()
OPERATIONS = stubs.operations(SPEC)


def _handler_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(ttmedia.handlers.__path__) if not m.name.startswith("_")]


def test_every_operation_id_resolves() -> None:
    missing = []
    for path, method, op, _item in OPERATIONS:
        name = f"ttmedia.handlers.{stubs.tag_of(op)}.{op['operationId']}"
        try:
            module = importlib.import_module(f"ttmedia.handlers.{stubs.tag_of(op)}")
            handler = getattr(module, op["operationId"])
        except (ImportError, AttributeError):
            missing.append(f"{method.upper()} {path} -> {name}")
            continue
        assert inspect.iscoroutinefunction(handler) or callable(handler)
    assert not missing, "unresolved operationIds (`ttmedia stubs` adds skeletons):\n" + "\n".join(missing)


def test_every_public_handler_function_is_an_operation() -> None:
    referenced = {(stubs.tag_of(op), op["operationId"]) for _p, _m, op, _i in OPERATIONS}
    orphans = []
    for name in _handler_modules():
        module = importlib.import_module(f"ttmedia.handlers.{name}")
        for attr, value in vars(module).items():
            if attr.startswith("_") or not inspect.isfunction(value) or value.__module__ != module.__name__:
                continue
            if (name, attr) not in referenced:
                orphans.append(f"ttmedia.handlers.{name}.{attr}")
    assert not orphans, ("public functions no operation references (make helpers _private):\n"
                         + "\n".join(orphans))


def _mismatch(handler: Any, expected: list[stubs.Arg]) -> list[str]:
    signature = inspect.signature(handler)
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    wanted = {a.name: a for a in expected}
    out = []
    for name, param in params.items():
        if param.kind is param.VAR_POSITIONAL:
            continue
        if name not in wanted:
            out.append(f"takes `{name}`, which Connexion never passes")
        elif param.default is param.empty and not wanted[name].required:
            out.append(f"`{name}` needs a default: Connexion does not always pass it")
    for name in wanted:
        if name not in params:
            out.append(f"does not take `{name}`")
    return out


@pytest.mark.parametrize("op_id", [op["operationId"] for _p, _m, op, _i in OPERATIONS])
def test_handler_signature_matches_its_operation(op_id: str) -> None:
    path, method, op, item = next(o for o in OPERATIONS if o[2]["operationId"] == op_id)
    module = importlib.import_module(f"ttmedia.handlers.{stubs.tag_of(op)}")
    handler = getattr(module, op_id)
    problems_found = _mismatch(handler, stubs.expected_args(SPEC, op, item))
    assert not problems_found, f"{module.__name__}.{op_id} ({method.upper()} {path}): " + "; ".join(problems_found)


# --- the generator, on a scratch spec and a scratch package ---------------------------------------

SCRATCH_SPEC = """
openapi: 3.0.3
info: {title: scratch, version: '1'}
tags:
  - {name: widgets, description: Widgets.}
paths:
  /v1/widgets/{widget_id}/parts:
    parameters:
      - {name: widget_id, in: path, required: true, schema: {type: string}}
    get:
      tags: [widgets]
      operationId: list_parts
      summary: List parts
      description: Lists.
      parameters:
        - {name: limit, in: query, schema: {type: integer, default: 20}}
        - {name: after, in: query, schema: {type: string}}
        - {name: kind, in: query, required: true, schema: {type: string}}
        - {name: X-TT-Organization, in: header, required: true, schema: {type: string}}
      responses:
        '200': {description: ok}
    post:
      tags: [widgets]
      operationId: upload_part
      summary: Upload a part
      description: Uploads.
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema:
              type: object
              required: [file]
              properties:
                file: {type: string, format: binary}
                extras: {type: array, items: {type: string, format: binary}}
                label: {type: string}
      responses:
        '201': {description: ok}
  /v1/health:
    get:
      tags: [system]
      operationId: get_health
      summary: Health
      description: Health.
      responses:
        '200': {description: ok}
    post:
      tags: [system]
      operationId: poke
      summary: Poke
      description: Poke.
      requestBody:
        content:
          application/json:
            schema: {type: object}
      responses:
        '200': {description: ok}
"""

EXISTING_SYSTEM = '''"""System handlers."""

from __future__ import annotations

from starlette.responses import Response


async def get_health() -> Response:
    return Response(b"{}")
'''


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_stub_generator_on_a_scratch_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "openapi.yaml"
    spec_file.write_text(SCRATCH_SPEC)
    spec = yaml.safe_load(SCRATCH_SPEC)
    package = tmp_path / "scratch_handlers"
    package.mkdir()
    (package / "system.py").write_text(EXISTING_SYSTEM)

    def cli(*extra: str) -> int:
        parser = argparse.ArgumentParser()
        stubs.add_arguments(parser)
        return stubs.run(parser.parse_args(["--spec", str(spec_file), "--package-dir", str(package), *extra]))

    assert cli("--check") == 1
    out = capsys.readouterr().out
    assert "widgets.list_parts" in out and "widgets.upload_part" in out and "system.poke" in out
    assert "get_health" not in out
    assert cli("--dry-run") == 0
    assert "async def upload_part(" in capsys.readouterr().out
    assert not (package / "widgets.py").exists(), "--dry-run wrote a file"

    assert cli() == 0
    assert cli("--check") == 0, "after generating, nothing is missing"
    system_text = (package / "system.py").read_text()
    assert 'async def get_health() -> Response:\n    return Response(b"{}")\n' in system_text
    assert "from ttmedia.web import problems\n" in system_text  # the missing import was added

    widgets = _load(package / "widgets.py", "scratch_widgets")
    system = _load(package / "system.py", "scratch_system")
    assert str(inspect.signature(widgets.list_parts)) == (
        "(widget_id: 'str', kind: 'str', limit: 'int' = 20, after: 'str | None' = None) -> 'Response'")
    assert str(inspect.signature(widgets.upload_part)) == (
        "(widget_id: 'str', body: 'dict[str, Any]', file: 'UploadFile', extras: 'list[UploadFile] | None' = None) -> 'Response'")
    assert str(inspect.signature(system.poke)) == "(body: 'dict[str, Any] | None' = None) -> 'Response'"
    assert "X-TT-Organization" in (widgets.list_parts.__doc__ or "")
    for handler in (widgets.list_parts, widgets.upload_part, system.poke):
        _path, _method, op, item = next(o for o in stubs.operations(spec) if o[2]["operationId"] == handler.__name__)
        assert _mismatch(handler, stubs.expected_args(spec, op, item)) == []
        assert inspect.iscoroutinefunction(handler)

    import asyncio

    with pytest.raises(problems.NotImplementedYet) as raised:
        asyncio.run(widgets.list_parts(widget_id="w1", kind="bolt"))
    assert raised.value.status == 501
    assert "list_parts (GET /v1/widgets/{widget_id}/parts)" in raised.value.detail
