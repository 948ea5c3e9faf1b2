"""The served spec: openapi.yaml narrowed to a deployment (ttmedia/web/served_spec.py).

It must always be a valid OpenAPI document (openapi-spec-validator, Redocly lint) and a narrowing
of the general contract: the same operations or fewer, the same responses, and request schemas
that accept nothing the general one refuses. The narrowing check below is structural: keyword by
keyword, a served schema may only add or tighten constraints.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator
from openapi_spec_validator import validate

from contract.run import CONTRACT_MODELS
from tests.helpers import app_client
from ttmedia.web.app import load_spec
from ttmedia.runners.sim import tokenizer
from ttmedia.web.served_spec import Deployment, ModelFacts, _nullable_as_type, _object, narrow

ROOT = Path(__file__).resolve().parent.parent
GENERAL = load_spec()
UPPER = ("maximum", "maxItems", "maxLength", "maxProperties")
LOWER = ("minimum", "minItems", "minLength", "minProperties")
EXACT = ("type", "pattern", "format", "uniqueItems", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
PROSE = ("description", "example", "examples", "default", "title")


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def narrowing_errors(g: Any, s: Any, gspec: dict[str, Any], sspec: dict[str, Any], where: str) -> list[str]:
    """Why served schema `s` may accept something general schema `g` refuses (empty: it cannot)."""
    g, s = _resolve(gspec, g), _resolve(sspec, s)
    if s == g:
        return []
    if not isinstance(g, dict) or not isinstance(s, dict):
        return [f"{where}: {s!r} is not {g!r}"]
    if "allOf" in g:
        g = _object(gspec, g)
    if "anyOf" in s and "anyOf" not in g:
        if set(s) == {"anyOf"}:  # one complete schema per model: each must narrow the general one
            return [e for i, v in enumerate(s["anyOf"]) for e in narrowing_errors(g, v, gspec, sspec, f"{where}/anyOf/{i}")]
        # An added constraint: the rest must narrow on its own.
        return narrowing_errors(g, {k: v for k, v in s.items() if k != "anyOf"}, gspec, sspec, where)
    errors: list[str] = []
    for key, value in g.items():
        if key in PROSE:
            continue
        if key not in s:
            if key == "properties":
                errors.append(f"{where}: properties dropped")
            elif key != "nullable":
                errors.append(f"{where}: `{key}` dropped")
            continue
        mine = s[key]
        if key in UPPER and mine > value or key in LOWER and mine < value:
            errors.append(f"{where}: {key} {mine} is looser than {value}")
        elif key in EXACT and mine != value:
            errors.append(f"{where}: {key} {mine!r} differs from {value!r}")
        elif key == "enum" and not set(map(repr, mine)) <= set(map(repr, value)):
            errors.append(f"{where}: enum {mine} is not within {value}")
        elif key == "nullable" and mine and not value:
            errors.append(f"{where}: made nullable")
        elif key == "required" and not set(mine) >= set(value):
            errors.append(f"{where}: required {mine} drops some of {value}")
        elif key == "additionalProperties":
            if value is False and mine is not False:
                errors.append(f"{where}: additionalProperties loosened")
            elif isinstance(value, dict):
                errors += narrowing_errors(value, mine, gspec, sspec, f"{where}/additionalProperties")
        elif key == "items":
            errors += narrowing_errors(value, mine, gspec, sspec, f"{where}/items")
        elif key == "properties":
            forbids_extra = s.get("additionalProperties") is False
            for name, prop in value.items():
                if name in mine:
                    errors += narrowing_errors(prop, mine[name], gspec, sspec, f"{where}/{name}")
                elif not forbids_extra and name not in (s.get("not") or {}).get("required", []):
                    errors.append(f"{where}/{name}: dropped without being forbidden")
        elif key == "anyOf":
            for i, branch in enumerate(mine):
                if all(narrowing_errors(gb, branch, gspec, sspec, "") for gb in value):
                    errors.append(f"{where}/anyOf/{i}: narrows no general branch")
        elif key == "not" and mine != value:
            errors.append(f"{where}: `not` changed")
    for key in set(s) - set(g) - set(PROSE):
        if key not in (*UPPER, *LOWER, "enum", "not", "required", "properties", "anyOf", "nullable"):
            errors.append(f"{where}: added `{key}`, which may loosen")
    return errors


def spec_narrowing_errors(general: dict[str, Any], served: dict[str, Any]) -> list[str]:
    errors = []
    for name, value in served.get("components", {}).items():
        for entry, schema in value.items():
            if general["components"][name].get(entry) != schema:
                errors.append(f"components/{name}/{entry} differs from the general spec's")
    for path, item in served["paths"].items():
        if path not in general["paths"]:
            errors.append(f"{path}: not in the general spec")
            continue
        for method, op in item.items():
            gop = general["paths"][path].get(method)
            if gop is None:
                errors.append(f"{method} {path}: not in the general spec")
                continue
            where = f"{method.upper()} {path}"
            if op["operationId"] != gop["operationId"] or op["responses"] != gop["responses"]:
                errors.append(f"{where}: operationId or responses differ")
            for gp, sp in zip(gop.get("parameters", []), op.get("parameters", []), strict=True):
                gp, sp = _resolve(general, gp), _resolve(served, sp)
                errors += narrowing_errors(gp["schema"], sp["schema"], general, served, f"{where} {gp['name']}")
            if "requestBody" in gop:
                gbody = _resolve(general, gop["requestBody"])["content"]
                sbody = op["requestBody"]["content"]
                if set(sbody) != set(gbody):
                    errors.append(f"{where}: request media types differ")
                for media_type, media in sbody.items():
                    errors += narrowing_errors(gbody[media_type]["schema"], media["schema"], general, served,
                                               f"{where} {media_type}")
    return errors


def _valid(schema: dict[str, Any], spec: dict[str, Any], value: Any) -> bool:
    root = {**_nullable_as_type(copy.deepcopy(schema)), "definitions": {}}
    return not list(Draft4Validator(root).iter_errors(value))


def _body_schema(spec: dict[str, Any], path: str, media: str = "application/json") -> dict[str, Any]:
    return spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]


# --- a server with every family -------------------------------------------------------------------

@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    with app_client(models=CONTRACT_MODELS) as client:
        as_json = client.get("/openapi.json")
        as_yaml = client.get("/openapi.yaml")
        assert as_json.status_code == as_yaml.status_code == 200
        spec = as_json.json()
        assert yaml.safe_load(as_yaml.content) == spec
        general = client.get("/openapi.yaml", params={"contract": "general"})
        assert general.content == (ROOT / "openapi.yaml").read_bytes()
        assert client.get("/openapi.json", params={"contract": "general"}).json() == GENERAL
        yield spec


def test_served_spec_is_valid_and_a_narrowing_of_the_general_one(served: dict[str, Any]) -> None:
    validate(served)
    validate(GENERAL)
    assert spec_narrowing_errors(GENERAL, served) == []
    assert served["info"]["x-ttmedia-deployment"]["models"][0]["name"] == "stable-diffusion-xl-base-1.0"


def test_the_checker_catches_a_loosening(served: dict[str, Any]) -> None:
    loose = copy.deepcopy(served)
    props = _body_schema(loose, "/v1/completions")["properties"]
    props["max_tokens"]["minimum"] = 0
    props["n"]["maximum"] = 100
    assert len(spec_narrowing_errors(GENERAL, loose)) == 2


def test_served_spec_states_the_models_limits(served: dict[str, Any]) -> None:
    vocab = tokenizer.vocab_size()
    completion = _body_schema(served, "/v1/completions")
    flat = next(b for b in completion["properties"]["prompt"]["anyOf"] if b.get("items", {}).get("type") == "integer")
    assert flat["items"]["maximum"] == vocab - 1 and flat["maxItems"] == 4095
    assert completion["properties"]["max_tokens"]["maximum"] == 4096
    assert not _valid(completion, served, {"prompt": [vocab]})
    assert _valid(completion, served, {"prompt": [vocab - 1], "model": "anything at all"})
    assert not _valid(completion, served, {"prompt": ["a", "b"], "stream": True})  # a batched stream is 422
    assert _valid(completion, served, {"prompt": ["a"], "stream": True})
    detok = _body_schema(served, "/v1/detokenize")
    assert not _valid(detok, served, {"tokens": [vocab]}) and _valid(detok, served, {"tokens": [vocab - 1]})
    image = _body_schema(served, "/v1/images/generations")
    assert image["properties"]["num_inference_steps"]["minimum"] == 12  # SDXL
    embedding = _body_schema(served, "/v1/embeddings")
    assert embedding["properties"]["dimensions"]["maximum"] == 1024
    training = _body_schema(served, "/v1/jobs")
    assert training["properties"]["device_type"]["enum"] == ["n150"]
    assert not _valid(training, served, {"dataset_loader": "Custom", "file_type": "jsonl"})
    assert _valid(training, served, {"dataset_loader": "Custom", "file_type": "jsonl", "template": "{text}",
                                     "train_dataset_path": "/data/train.jsonl"})
    # Text-to-video reaches the only T2V model whatever its name, except the I2V model's names.
    t2v = _body_schema(served, "/v1/videos/generations")
    assert _valid(t2v, served, {"prompt": "x", "model": "sora-2"})
    assert not _valid(t2v, served, {"prompt": "x", "model": "Wan2.2-I2V-A14B-Diffusers"})
    openai_create = _body_schema(served, "/v1/videos")
    assert _valid(openai_create, served, {"prompt": "x", "input_reference": {"image_url": "data:..."}})
    assert served["paths"]["/v2/models/{model}/ready"]["get"]["parameters"][0]["schema"]["enum"][0] == \
        "stable-diffusion-xl-base-1.0"


def test_served_spec_passes_the_redocly_lint(served: dict[str, Any]) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH (Redocly CLI is installed from contract/lint/package.json with npm ci)")
    target = ROOT / "contract" / "lint" / "served-openapi.yaml"
    target.write_text(yaml.safe_dump(served, sort_keys=False, allow_unicode=True), encoding="utf-8")
    result = subprocess.run([str(ROOT / "contract" / "lint.sh")], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "LINT_SPEC": str(target)})
    assert result.returncode == 0, result.stdout + result.stderr


# --- other deployments, built directly ------------------------------------------------------------

def _facts(name: str, family: str, *names: str, **options: Any) -> ModelFacts:
    return ModelFacts(name, family, (name, *names), options,
                      vocab_size=1000 if family in ("llm", "embedding") else None,
                      context=2048 if family == "llm" else None)


def test_models_with_different_limits_get_one_body_schema_each() -> None:
    deployment = Deployment((_facts("stable-diffusion-xl-base-1.0", "image", min_steps=12),
                             _facts("FLUX.1-schnell", "image", "black-forest-labs/FLUX.1-schnell", min_steps=4)))
    spec = narrow(GENERAL, deployment)
    validate(spec)
    assert spec_narrowing_errors(GENERAL, spec) == []
    body = _body_schema(spec, "/v1/images/generations")
    assert len(body["anyOf"]) == 2
    assert _valid(body, spec, {"prompt": "x", "num_inference_steps": 5, "model": "FLUX.1-schnell"})
    assert not _valid(body, spec, {"prompt": "x", "num_inference_steps": 5})  # the default is SDXL
    assert not _valid(body, spec, {"prompt": "x", "num_inference_steps": 5, "model": "stable-diffusion-xl-base-1.0"})
    assert _valid(body, spec, {"prompt": "x", "num_inference_steps": 12, "model": None})
    assert not _valid(body, spec, {"prompt": "x", "model": "sora-2"})  # two candidates: names matter
    assert "/v1/completions" not in spec["paths"] and "/tokenize" not in spec["paths"]


def test_routes_a_deployment_cannot_serve_are_left_out() -> None:
    t2v_only = Deployment((_facts("Wan2.2-T2V-A14B-Diffusers", "video", t2v=True, i2v=False),))
    spec = narrow(GENERAL, t2v_only)
    validate(spec)
    assert spec_narrowing_errors(GENERAL, spec) == []
    assert "/v1/videos/generations" in spec["paths"]
    assert "/v1/videos/generations/i2v" not in spec["paths"] and "/video/generations/i2v/upload" not in spec["paths"]
    create = _body_schema(spec, "/v1/videos")
    assert not _valid(create, spec, {"prompt": "x", "input_reference": {"image_url": "data:..."}})
    upload = _body_schema(spec, "/v1/videos", "multipart/form-data")
    assert "input_reference" not in upload["properties"]
    i2v_only = narrow(GENERAL, Deployment((_facts("Wan2.2-I2V-A14B-Diffusers", "video", t2v=False, i2v=True),)))
    assert "/v1/videos/generations" not in i2v_only["paths"]
    assert not _valid(_body_schema(i2v_only, "/v1/videos"), i2v_only, {"prompt": "x"})  # needs an image


def test_strict_names_are_an_enum_even_for_one_model() -> None:
    spec = narrow(GENERAL, Deployment((_facts("Qwen3-8B", "llm", "Qwen/Qwen3-8B"),), strict=True))
    assert _body_schema(spec, "/v1/chat/completions")["properties"]["model"]["enum"] == ["Qwen3-8B", "Qwen/Qwen3-8B",
                                                                                         None]
