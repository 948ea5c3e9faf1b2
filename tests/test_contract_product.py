"""The contract as a product: it lints clean, ships in the wheel, is served byte-for-byte, and the
examples Swagger UI's "Try it out" sends are answered with a declared 2xx."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.spec_gate import operations, resolve
from tests.helpers import app_client
from ttmedia import cli

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILE = ROOT / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
API_KEY = "try-it-out-key"
#: The default models plus one per job family, so every operation's example has a model to run on.
MODELS = ("stable-diffusion-xl-base-1.0;Qwen3-8B;bge-m3;resnet-50;whisper-large-v3;speecht5_tts;"
          "Wan2.2-T2V-A14B-Diffusers;Wan2.2-I2V-A14B-Diffusers;Llama-3.2-3B-Instruct")


# --- lint ---------------------------------------------------------------------------------------

def test_redocly_lint_passes() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH (Redocly CLI is installed from contract/lint/package.json with npm ci)")
    result = subprocess.run([str(ROOT / "contract" / "lint.sh")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the spec ships -----------------------------------------------------------------------------

def test_wheel_contains_the_spec(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("ttmedia-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "ttmedia/openapi.yaml" in archive.namelist()
        assert archive.read("ttmedia/openapi.yaml") == SPEC_FILE.read_bytes()


def test_cli_prints_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spec"]) == 0
    assert capsys.readouterr().out == SPEC_FILE.read_text(encoding="utf-8")
    assert cli.main(["spec", "--format", "yaml"]) == 0
    assert capsys.readouterr().out == SPEC_FILE.read_text(encoding="utf-8")
    assert cli.main(["spec", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == SPEC


def test_cli_stubs_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stubs", "--check"]) == 0, capsys.readouterr().out


# --- served spec and "Try it out" (one app with every family) ------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with app_client(models=MODELS, api_key=API_KEY) as c:
        yield c


def test_general_contract_is_the_file(client: Any) -> None:
    """`?contract=general` is the file byte for byte; without it, the deployment's narrowing
    (tests/test_served_spec.py)."""
    general = {"contract": "general"}
    as_yaml = client.get("/openapi.yaml", params=general)
    assert as_yaml.status_code == 200
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert as_yaml.content == SPEC_FILE.read_bytes()
    as_json = client.get("/openapi.json", params=general)
    assert as_json.status_code == 200
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json() == SPEC
    head = client.head("/openapi.yaml", params=general)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(SPEC_FILE.read_bytes())
    served = client.get("/openapi.json")
    assert served.status_code == 200 and served.json()["info"]["x-ttmedia-deployment"]["models"]
    assert client.head("/openapi.json").headers["content-length"] == str(len(served.content))


def test_swagger_ui_loads_the_served_spec(client: Any) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
    config = client.get("/ui/swagger-ui-config.json")
    url = config.json()["url"] if config.status_code == 200 else None
    assert url == "/openapi.json" or '"/openapi.json"' in page.text


def _needs_created_resource(path: str) -> bool:
    return bool(re.search(r"\{[a-z_]*_id\}", path))


def _media_example(media: dict[str, Any]) -> tuple[bool, Any]:
    if "example" in media:
        return True, media["example"]
    for example in (media.get("examples") or {}).values():
        example = resolve(SPEC, example)
        if "value" in example:
            return True, example["value"]
    schema = resolve(SPEC, media.get("schema")) or {}
    if "example" in schema:
        return True, schema["example"]
    return False, None


def _request(path: str, method: str, op: dict[str, Any], item: dict[str, Any]) -> dict[str, Any] | None:
    """The request Swagger UI sends with the examples filled in (None: it needs a file)."""
    url, query, headers = path, {}, {}
    for param in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
        param = resolve(SPEC, param)
        if "example" not in param:
            assert not param.get("required"), f"{method.upper()} {path}: required {param['name']} has no example"
            continue
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", str(param["example"]))
        elif param["in"] == "query":
            query[param["name"]] = param["example"]
        elif param["in"] == "header" and param.get("required"):
            headers[param["name"]] = str(param["example"])
    if op.get("security", SPEC.get("security")):
        headers["Authorization"] = f"Bearer {API_KEY}"
    request: dict[str, Any] = {"method": method.upper(), "url": url, "params": query, "headers": headers}
    body = resolve(SPEC, op.get("requestBody"))
    if body:
        for media_type, media in body["content"].items():
            found, value = _media_example(resolve(SPEC, media))
            if found and "json" in media_type:
                request["content"] = json.dumps(value)
                headers["Content-Type"] = media_type
                return request
        return None
    return request


TRY_IT_OUT = [pytest.param(path, method, op, item, id=op["operationId"])
              for path, method, op, item in operations(SPEC)
              # the reset operations restart workers under the other tests' feet: they run last
              if not path.startswith("/tt-") or "reset" not in path]
RESETS = [(path, method, op, item) for path, method, op, item in operations(SPEC)
          if path.startswith("/tt-") and "reset" in path]


def _try(client: Any, path: str, method: str, op: dict[str, Any], item: dict[str, Any]) -> None:
    if _needs_created_resource(path):
        pytest.skip("needs the id of a resource created by another call")
    request = _request(path, method, op, item)
    if request is None:
        pytest.skip("the body is a file upload: Swagger UI asks for the file")
    response = client.request(**request)
    declared = sorted(code for code in op["responses"] if str(code).startswith("2"))
    assert str(response.status_code) in declared, (
        f"{method.upper()} {path} with its examples: {response.status_code} (declared 2xx: {declared}) "
        f"{response.text[:300]}")


@pytest.mark.parametrize(("path", "method", "op", "item"), TRY_IT_OUT)
def test_try_it_out_with_the_examples(client: Any, path: str, method: str, op: dict[str, Any],
                                      item: dict[str, Any]) -> None:
    _try(client, path, method, op, item)


def test_try_it_out_resets_last(client: Any) -> None:
    from tests.helpers import wait_until

    assert RESETS, "the spec has reset operations"
    for path, method, op, item in RESETS:
        _try(client, path, method, op, item)
        assert wait_until(lambda: client.get("/health").status_code == 200, timeout=60)
