"""The spec quality gate (contract/spec_gate.py) passes on openapi.yaml, and catches what it should."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from contract import spec_gate

SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))


def scratch() -> dict[str, Any]:
    return copy.deepcopy(_spec())


def _op(spec: dict[str, Any], op_id: str) -> tuple[str, str, dict[str, Any]]:
    for path, method, op, _item in spec_gate.operations(spec):
        if op.get("operationId") == op_id:
            return path, method, op
    raise LookupError(op_id)


MEDIA_OPERATIONS = [op["operationId"] for _p, _m, op, _i in spec_gate.operations(_spec())
                    if op.get("x-ttmedia-family")]


def test_spec_is_valid_openapi() -> None:
    validate(_spec())


def test_spec_passes_the_gate() -> None:
    violations = spec_gate.check(_spec())
    assert not violations, "spec gate:\n" + "\n".join(violations)


def test_there_are_media_operations() -> None:
    assert len(MEDIA_OPERATIONS) >= 10


@pytest.mark.parametrize("op_id", MEDIA_OPERATIONS)
def test_media_operation_without_503_is_caught(op_id: str) -> None:
    spec = scratch()
    path, method, op = _op(spec, op_id)
    del op["responses"]["503"]
    found = spec_gate.check(spec)
    assert f"{method.upper()} {path}: media operation (x-ttmedia-family) declares no 503 response" in found


def test_503_without_required_retry_after_is_caught() -> None:
    spec = scratch()
    spec["components"]["responses"]["NotReady"]["headers"]["Retry-After"] = {
        "description": "optional now", "schema": {"type": "integer"}}
    found = spec_gate.check(spec)
    assert any("POST /v1/completions: response 503 declares Retry-After but not `required: true`" in v
               for v in found), found


def test_missing_summary_is_caught() -> None:
    spec = scratch()
    path, method, op = _op(spec, "create_completion")
    del op["summary"]
    assert f"{method.upper()} {path}: no summary" in spec_gate.check(spec)


def test_non_snake_operation_id_is_caught() -> None:
    spec = scratch()
    path, method, op = _op(spec, "create_completion")
    op["operationId"] = "createCompletion"
    assert f"{method.upper()} {path}: operationId 'createCompletion' is not snake_case" in spec_gate.check(spec)


def test_duplicate_operation_id_is_caught() -> None:
    spec = scratch()
    _path, _method, op = _op(spec, "create_chat_completion")
    op["operationId"] = "create_completion"
    assert any("operationId 'create_completion' is also used by" in v for v in spec_gate.check(spec))


def test_429_without_retry_after_is_caught() -> None:
    spec = scratch()
    del spec["components"]["responses"]["QueueFull"]["headers"]
    found = spec_gate.check(spec)
    assert "POST /v1/completions: response 429 has no Retry-After header" in found


def test_inline_error_response_is_caught() -> None:
    spec = scratch()
    path, method, op = _op(spec, "create_completion")
    op["responses"]["422"] = copy.deepcopy(spec["components"]["responses"]["InvalidRequest"])
    assert any(v.startswith(f"{method.upper()} {path}: response 422 is inline") for v in spec_gate.check(spec))


def test_declared_405_is_caught() -> None:
    spec = scratch()
    path, method, op = _op(spec, "get_health")
    op["responses"]["405"] = {"$ref": "#/components/responses/NotReady"}
    assert any(v.startswith(f"{method.upper()} {path}: response 405: 405 must not be declared")
               for v in spec_gate.check(spec))


def test_example_violating_its_schema_is_caught() -> None:
    spec = scratch()
    path, method, op = _op(spec, "create_completion")
    op["requestBody"]["content"]["application/json"]["example"]["max_tokens"] = "many"
    found = spec_gate.check(spec)
    assert any(v.startswith(f"{method.upper()} {path}: request body application/json example does not match")
               and "max_tokens" in v for v in found), found


def test_nullable_example_is_accepted() -> None:
    spec = scratch()
    path, method, op = _op(spec, "create_embedding")
    op["requestBody"]["content"]["application/json"]["example"]["dimensions"] = None
    assert not [v for v in spec_gate.check(spec) if v.startswith(f"{method.upper()} {path}:")]


def test_missing_response_example_is_caught_and_binary_is_exempt() -> None:
    spec = scratch()
    path, method, op = _op(spec, "get_v2_ready")
    del op["responses"]["200"]["content"]["application/json"]["example"]
    op["responses"]["200"]["content"]["audio/wav"] = {"schema": {"type": "string", "format": "binary"}}
    found = [v for v in spec_gate.check(spec) if v.startswith(f"{method.upper()} {path}:")]
    assert found == [(f"{method.upper()} {path}: response 200 application/json: no example "
                     "(add `example` to the media type or its schema)")]
