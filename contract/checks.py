"""Project-specific Schemathesis checks: the readiness and back-pressure contract of docs/architecture.md.

Loaded by `st run` through `hooks = "contract.checks"` in contract/schemathesis.toml (or
`SCHEMATHESIS_HOOKS=contract.checks`); the working directory must be the repository root.
Registered checks run on every response, next to the built-in `--checks all`.

* `retry_after_on_503`: every 503 carries an integer `Retry-After` >= 1 and is a problem+json
  body with a string `reason` (warming_up, no_workers, ...).
* `no_405_for_declared_method`: 405 never answers a method the spec declares on that path
  (the upstream bug this project exists to fix: "not ready" reported as 405), and every 405
  lists all of the path's declared methods in `Allow`.
* `retry_after_on_429`: every 429 carries an integer `Retry-After` >= 1.

One generation hook (`filter_case`) keeps the fuzzer within a rule OpenAPI 3.0 cannot express;
it narrows generated data only and never drops a failure or a check (see its docstring).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from schemathesis.generation import GenerationMode

from ttmedia.runners.catalog import CATALOG

PROBLEM_JSON = "application/problem+json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def _header(response: Any, name: str) -> str | None:
    values = response.headers.get(name.lower())
    if not values:
        return None
    return values[0] if isinstance(values, list) else str(values)


def _assert_retry_after(response: Any) -> None:
    status = response.status_code
    value = _header(response, "Retry-After")
    if value is None:
        raise AssertionError(f"{status} without a Retry-After header")
    try:
        seconds = int(value.strip())
    except ValueError:
        raise AssertionError(f"{status} Retry-After is not an integer number of seconds: {value!r}") from None
    if seconds < 1:
        raise AssertionError(f"{status} Retry-After must be at least 1 second, got {seconds}")


def _resolve(raw: dict[str, Any], node: Any) -> Any:
    """Follow local `$ref`s (the served spec is usually already resolved)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 16:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = raw
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        node = target
        seen += 1
    return node


def _path_item(case: Any) -> dict[str, Any]:
    raw = case.operation.schema.raw_schema
    return _resolve(raw, raw.get("paths", {}).get(case.operation.path, {})) or {}


def _declared_503_media_types(case: Any) -> set[str]:
    """Media types the spec declares for this operation's 503 (empty if not declared)."""
    raw = case.operation.schema.raw_schema
    operation = _path_item(case).get(case.operation.method.lower(), {})
    response = _resolve(raw, (operation.get("responses") or {}).get("503"))
    if not isinstance(response, dict):
        return set()
    return {m.split(";")[0].strip().lower() for m in (response.get("content") or {})}


@schemathesis.check
def retry_after_on_503(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 503 means "not ready, come back later": say when, and why."""
    if response.status_code != 503:
        return None
    _assert_retry_after(response)
    # /tt-liveness keeps the upstream status body on 503 (docs/architecture.md, Readiness) and declares it
    # as its only 503 media type; everything else answers 503 with problem+json. Both carry a
    # string `reason`.
    declared = _declared_503_media_types(case)
    content_type = (_header(response, "Content-Type") or "").split(";")[0].strip().lower()
    if not (declared and PROBLEM_JSON not in declared) and content_type != PROBLEM_JSON:
        raise AssertionError(f"503 must be {PROBLEM_JSON}, got {content_type or 'no Content-Type'!r}")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError("503 body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("reason"), str) or not body["reason"]:
        raise AssertionError(f"503 problem has no string `reason`: {response.content[:200]!r}")
    return True


@schemathesis.check
def no_405_for_declared_method(ctx: Any, response: Any, case: Any) -> bool | None:
    """405 only ever means "this path does not support this method", never "not ready"."""
    if response.status_code != 405:
        return None
    declared = {m.upper() for m in _path_item(case) if m in HTTP_METHODS}
    method = str(case.method).upper()
    if method in declared:
        raise AssertionError(
            f"405 for {method} {case.operation.path}, a method the spec declares on this path "
            f"(declared: {', '.join(sorted(declared))})"
        )
    allow = _header(response, "Allow")
    if allow is None:
        raise AssertionError("405 without an Allow header")
    allowed = {m.strip().upper() for m in allow.split(",") if m.strip()}
    missing = declared - allowed - {"HEAD", "OPTIONS"}
    if missing:
        raise AssertionError(f"405 Allow: {allow!r} misses declared methods: {', '.join(sorted(missing))}")
    return True


@schemathesis.check
def retry_after_on_429(ctx: Any, response: Any, case: Any) -> bool | None:
    """A full queue is back-pressure: tell the client when to retry."""
    if response.status_code != 429:
        return None
    _assert_retry_after(response)
    return True


# --- generation: stay within model rules that OpenAPI 3.0 cannot express -------------------------
#
# Some limits depend on the model that serves a request, so the general spec (openapi.yaml)
# cannot state them and the server rightly refuses breaking requests (422 `invalid_request` "by
# the model's rules", 400 `context_length_exceeded`), all declared:
#   * image: num_inference_steps >= 12 for SDXL, >= 4 for FLUX, >= 1 for Z-Image (upstream rule);
#   * llm: prompt tokens + max_tokens must fit the model's context (max_model_length);
#   * llm: token-id prompts and /v1/detokenize ids must be ids of the model's vocabulary;
#   * llm: streaming completions take one prompt and n = 1 (upstream: 501 for batched streams);
#   * embedding: `dimensions` at most the model's size; inputs within its token limit.
#   * video: an image-to-video-only model refuses text-to-video, a text-to-video model images;
#     image_prompts' frame_pos values must be unique;
#   * training: `device_type` must be the server's DEVICE, and dataset_loader Custom needs
#     train_dataset_path, file_type and template.
# A server's *served* spec (GET /openapi.json, ttmedia/web/served_spec.py) states all of these but
# two, which no JSON Schema can: a text prompt's token count against the context (it depends on
# the tokenizer; a token-id prompt's sum with max_tokens neither), and unique frame_pos values
# across list items. `positive_data_acceptance` would report those refusals as "schema-valid
# request rejected". This filter skips only *positive* cases that break such a rule (on the
# served spec, only the two it cannot state); negative cases, every check and every operation
# stay in. The rules themselves are tested in tests/ (e.g. test_http_basics.py).

IMAGE_MIN_STEPS = max(int(m.options.get("min_steps", 1)) for m in CATALOG.values() if m.family == "image")
LLM_CONTEXT = min(int(m.options.get("max_model_length", 4096)) for m in CATALOG.values() if m.family == "llm")
EMBEDDING_DIMENSIONS = min(
    [int(m.options.get("dimensions", 1 << 30)) for m in CATALOG.values() if m.family == "embedding"] or [1 << 30])
EMBEDDING_TOKENS = 8192


def _breaks_context(path: str, body: dict[str, Any], served: bool) -> bool:
    """Prompt tokens + max_tokens over the context (every spec), or, on the general spec, a
    token id outside the vocabulary or a batched stream."""
    from ttmedia.runners.sim import tokenizer

    if path.endswith("/chat/completions"):
        messages = body.get("messages") or []
        continuing = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"
        prompt = tokenizer.SimTokenizer().apply_chat_template(messages, continue_final_message=continuing)
        requested = body.get("max_completion_tokens") or body.get("max_tokens") or 1
        return len(tokenizer.encode(prompt)) + requested > LLM_CONTEXT
    if not path.endswith("/completions"):
        return False
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    max_tokens = body.get("max_tokens") or 16
    if not served and body.get("stream") and (len(prompts or []) > 1 or (body.get("n") or 1) > 1):
        return True
    for item in prompts or []:
        if isinstance(item, str):
            count = len(tokenizer.encode(item))
        else:
            if not served and any(not 0 <= i < tokenizer.vocab_size() for i in item):
                return True
            count = len(item)
        if count + max_tokens > LLM_CONTEXT:
            return True
    return False


def _breaks_model_rule(family: str, path: str, body: dict[str, Any], served: bool = False) -> bool:
    from ttmedia.runners.sim import tokenizer

    if family == "llm" or path.endswith("completions"):
        return _breaks_context(path, body, served)
    if family == "video":
        prompts = body.get("image_prompts")
        if isinstance(prompts, list):
            positions = [p.get("frame_pos", 0) for p in prompts if isinstance(p, dict)]
            if len(positions) != len(set(positions)):
                return True  # upstream rule: frame_pos values are unique
    if family == "embedding":
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [i for i in inputs or [] if isinstance(i, str)]
        if any(len(tokenizer.encode(t)) > EMBEDDING_TOKENS for t in texts):
            return True
    if served:
        return False  # the served spec states the rest
    if path.endswith("/detokenize"):
        tokens = body.get("tokens")
        # Negative ids are not a model rule (no model has them): those cases stay in.
        return isinstance(tokens, list) and any(isinstance(i, int) and i >= tokenizer.vocab_size() for i in tokens)
    if family == "embedding":
        dims = body.get("dimensions")
        inputs = body.get("input")
        rows = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], list) else [inputs]
        vocab = tokenizer.vocab_size()
        out_of_vocab = any(isinstance(row, list) and any(isinstance(i, int) and i >= vocab for i in row)
                           for row in rows)
        return out_of_vocab or (isinstance(dims, int) and dims > EMBEDDING_DIMENSIONS)
    if family == "image":
        steps = body.get("num_inference_steps")
        return isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps < IMAGE_MIN_STEPS
    if family == "training":
        custom_incomplete = body.get("dataset_loader") == "Custom" and not all(
            body.get(f) for f in ("train_dataset_path", "file_type", "template"))
        return custom_incomplete or body.get("device_type") not in (None, os.environ.get("DEVICE") or "n150")
    if family == "video":
        if path == "/v1/videos":  # OpenAI's create: an image makes it image-to-video
            has_image = any(k in body for k in ("input_reference", "input_reference[image_url]"))
            path = "/i2v" if has_image else path
        info = CATALOG.get(str(body.get("model") or ""))
        return info is not None and not info.options.get("i2v" if "/i2v" in path else "t2v", True)
    return False


def _is_served_spec(operation: Any) -> bool:
    """A deployment's served spec says so in info (ttmedia/web/served_spec.py)."""
    raw = getattr(operation.schema, "raw_schema", None) or {}
    return bool((raw.get("info") or {}).get("x-ttmedia-deployment"))


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """Keep a case unless it is positive and breaks a model rule its spec cannot express."""
    operation = ctx.operation
    if operation is None:
        return True
    family = operation.definition.raw.get("x-ttmedia-family") or ""
    meta = getattr(case, "meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return True
    if not isinstance(case.body, dict):
        return True
    try:
        skip = _breaks_model_rule(family, operation.path, case.body, _is_served_spec(operation))
    except Exception:  # noqa: BLE001 - when unsure, send the case and let the checks judge
        return True
    if skip and os.environ.get("CONTRACT_FILTER_LOG"):  # how much the filter still does (a count)
        with open(os.environ["CONTRACT_FILTER_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{case.operation.method.upper()} {operation.path}\n")
    return not skip


# --- real media in positive cases -------------------------------------------------------------
# A schema can say "base64 string" or "binary", not "a decodable PNG" or "a WAV file": random
# bytes there are rightly refused (422 undecodable image, 415 unsupported audio). Positive cases
# get small real files in those fields instead, so the fuzzer reaches the model behind them;
# negative cases keep whatever the fuzzer made.

def _sample_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def _sample_wav() -> bytes:
    import io
    import math
    import struct
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(8000)))
    return buffer.getvalue()


_PNG = _sample_png()
_WAV = _sample_wav()
#: operation path → body fields that must hold real media: (kind, encoding)
_MEDIA_FIELDS: dict[str, dict[str, str]] = {
    "/v1/images/image-to-image": {"image": "png"},
    "/v1/images/edits": {"image": "png", "mask": "png"},
    "/v1/cnn/search-image": {"prompt": "png", "file": "png"},
    "/v1/audio/transcriptions": {"file": "wav"},
    "/v1/audio/translations": {"file": "wav"},
    "/v1/videos/generations/i2v/upload": {"image": "png"},
    "/v1/videos": {"input_reference": "png", "input_reference[image_url]": "png"},
}
#: Upstream's unversioned aliases take the same media (ttmedia.web.deprecation).
_MEDIA_FIELDS.update({old: _MEDIA_FIELDS[new] for old, new in (
    ("/image/image-to-image", "/v1/images/image-to-image"), ("/image/edits", "/v1/images/edits"),
    ("/cnn/search-image", "/v1/cnn/search-image"), ("/audio/transcriptions", "/v1/audio/transcriptions"),
    ("/audio/translations", "/v1/audio/translations"),
    ("/video/generations/i2v/upload", "/v1/videos/generations/i2v/upload"))})
_I2V_JSON = ("/v1/videos/generations/i2v", "/video/generations/i2v")


def _media(kind: str, as_text: bool) -> str | bytes:
    import base64

    data = _PNG if kind == "png" else _WAV
    return base64.b64encode(data).decode("ascii") if as_text else data


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """Put real media into the media fields of positive cases (see above)."""
    meta = getattr(case, "meta", None)
    operation = ctx.operation
    if operation is None or meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if not isinstance(case.body, dict):
        return case
    multipart = (getattr(case, "media_type", "") or "").startswith("multipart/")
    for field, kind in _MEDIA_FIELDS.get(operation.path, {}).items():
        if field in case.body:
            if isinstance(case.body[field], dict):  # OpenAI's JSON input_reference: {image_url}
                case.body[field] = {"image_url": _media(kind, as_text=True)}
            else:  # a file in multipart, except text fields (`input_reference[image_url]`)
                case.body[field] = _media(kind, as_text=not multipart or field.endswith("]"))
    if operation.path in _I2V_JSON and isinstance(case.body.get("image_prompts"), list):
        for item in case.body["image_prompts"]:
            if isinstance(item, dict) and "image" in item:
                item["image"] = _media("png", as_text=True)
    return case
