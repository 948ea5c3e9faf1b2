"""The spec this deployment serves: openapi.yaml narrowed to the models this server runs.

`openapi.yaml` is the general contract (SDKs are generated from it). `GET /openapi.json` and
`/openapi.yaml` serve it narrowed, once per server, from the scheduler's served models:

* `model` fields: an enum of the served names (served name, catalog name, Hugging Face id) of
  the models that can answer that operation; where exactly one can (and matching is lenient),
  any name reaches it, so the field stays free, except for the names of the family's other
  models (an image-to-video model named on the text-to-video route is 422).
* Limits of the model: token ids below its vocabulary size, `max_tokens` and token-id prompts
  within its context, `num_inference_steps` from its minimum, embedding `dimensions` up to its
  size, the server's `device_type`; rules OpenAPI can state in a schema that the general spec
  leaves to prose (a stream takes one prompt and n=1; a Custom dataset names its file, type and
  template). Where the served models of one operation differ in a limit, the body is an anyOf
  of one complete schema per model.
* Operations this deployment cannot serve are left out (a family with no served model, image-
  to-video without an image-to-video model).

Every narrowing only tightens (tests/test_served_spec.py checks that the result is a valid
OpenAPI document and a narrowing of the general one), and every request it calls invalid is
still refused by the server with a declared 4xx: the handlers apply the same rules. The one
limit it cannot state is a text prompt's token count against the context (it depends on the
tokenizer); a prompt too long for the context is answered 400 `context_length_exceeded`.
`?contract=general` returns the file as written.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from ttmedia.web.spec_refs import resolve as _resolve

log = logging.getLogger("ttmedia")

Scope = dict[str, Any]
Schema = dict[str, Any]

YAML_TYPE = b"application/yaml"
#: Where Swagger UI is served (app.py: swagger_ui_path); nothing else is Swagger UI's.
SWAGGER_UI_PREFIX = "/ui"
JSON_TYPE = b"application/json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

#: Operations that pick a model without passing the readiness gate (no `x-ttmedia-family`).
MODEL_OPERATIONS = {"tokenize": "llm", "detokenize": "llm"}
#: Video operations by the mode they need: text-to-video, image-to-video, or either (OpenAI's).
VIDEO_MODES = {"create_video_generation": ("t2v",), "create_video_generation_i2v": ("i2v",),
               "create_video_generation_i2v_upload": ("i2v",), "create_video": ("t2v", "i2v")}
#: An LLM whose tokenizer and options say nothing of its context (ttmedia.handlers.text).
DEFAULT_CONTEXT = 4096
DEFAULT_EMBEDDING_TOKENS = 8192


def parse_spec(text: str) -> dict[str, Any]:
    """The spec as data. The C loader parses it in a twentieth of the pure-Python loader's
    time (0.3 s of start-up otherwise)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # type: ignore[no-any-return]  # noqa: S506 - a safe loader


# --- what this deployment serves ------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFacts:
    """One served model, as far as its requests' schemas are concerned."""

    name: str
    family: str
    names: tuple[str, ...]  # every name a request may give for it
    options: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    context: int | None = None  # llm: max_model_length; embedding: tokens per input
    min_prompt_tokens: int = 0  # tokens of the shortest prompt ("" for completions)
    min_chat_tokens: int = 1  # tokens of the chat template around an empty conversation

    def can(self, mode: str) -> bool:
        return bool(self.options.get(mode, mode == "t2v"))


@dataclass(frozen=True)
class Deployment:
    models: tuple[ModelFacts, ...]
    strict: bool = False
    device: str = "n150"


async def deployment_of(runtime: Any) -> tuple[Deployment, bool]:
    """The facts of `runtime`'s served models, and whether they are complete (every tokenizer
    loaded; a spec built without one is served but built again next time)."""
    from ttmedia.scheduler.scheduler import model_names

    scheduler = runtime.scheduler
    strict = scheduler.settings.strict_model_names
    complete = True
    models = []
    for pool in scheduler.pools.values():
        info = pool.model.info
        facts: dict[str, Any] = {}
        if pool.model.family in ("llm", "embedding") and not pool.model.missing:
            try:
                tok = await pool.maybe_tokenizer()
            except Exception:  # noqa: BLE001 - a failed tokenizer: serve the looser spec
                tok, complete = None, False
            option = info.options.get("max_model_length")
            if pool.model.family == "llm":
                facts["context"] = int(option or (tok.max_model_length if tok else None) or DEFAULT_CONTEXT)
            else:
                facts["context"] = int(option or (tok.max_model_length if tok else None) or DEFAULT_EMBEDDING_TOKENS)
            if tok is not None:
                facts["vocab_size"] = int(tok.vocab_size)
                facts["min_prompt_tokens"] = len(tok.encode(""))
                try:
                    facts["min_chat_tokens"] = len(tok.encode(tok.apply_chat_template([], continue_final_message=False)))
                except Exception:  # noqa: BLE001 - a template that refuses an empty chat: stay loose
                    facts["min_chat_tokens"] = 1
        models.append(ModelFacts(pool.name, pool.model.family, tuple(model_names(pool, strict)),
                                 dict(info.options), **facts))
    settings = scheduler.settings
    return Deployment(tuple(models), strict, settings.device), complete


# --- narrowing --------------------------------------------------------------------------------------

def _object(spec: dict[str, Any], schema: Any) -> Schema:
    """A request body schema as one object schema: its $ref followed, an allOf of object
    schemas merged (properties and required united), as a copy of its own."""
    schema = copy.deepcopy(_resolve(spec, schema))
    if "allOf" not in schema:
        return schema  # type: ignore[no-any-return]
    merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _object(spec, part)
        for key, value in part.items():
            if key == "properties":
                merged.setdefault("properties", {}).update(value)
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged.setdefault(key, value)
    return merged


def _int_branches(schema: Schema) -> list[Schema]:
    """The branches of an `anyOf` prompt/input schema whose items are integers (token ids)."""
    return [b for b in schema.get("anyOf", []) if b.get("type") == "array" and b.get("items", {}).get("type") == "integer"]


def _nested_branches(schema: Schema) -> list[Schema]:
    return [b for b in schema.get("anyOf", []) if b.get("type") == "array" and b.get("items", {}).get("type") == "array"]


def _cap(schema: Schema, key: str, value: int) -> None:
    """Tighten a bound: maximum/maxItems down to `value`, minimum/minItems up to it."""
    if key in ("maximum", "maxItems", "maxLength"):
        schema[key] = min(schema.get(key, value), value)
    else:
        schema[key] = max(schema.get(key, value), value)


def _token_ids(schema: Schema, vocab: int | None, max_items: int | None) -> None:
    """Token-id arrays (flat, or lists of them): ids below the vocabulary, at most `max_items` each."""
    for branch in _int_branches(schema):
        if vocab:
            _cap(branch["items"], "maximum", vocab - 1)
        if max_items:
            _cap(branch, "maxItems", max_items)
    for branch in _nested_branches(schema):
        inner = branch["items"]
        if vocab:
            _cap(inner["items"], "maximum", vocab - 1)
        if max_items:
            _cap(inner, "maxItems", max_items)


def _narrow_for(op_id: str, body: Schema, model: ModelFacts, deployment: Deployment) -> None:
    """Tighten `body` (an object schema, in place) to what `model` accepts on `op_id`."""
    props = body.get("properties", {})
    if op_id == "create_completion":
        context = model.context or DEFAULT_CONTEXT
        for name in ("max_tokens",):
            _cap(props[name], "maximum", max(1, context - model.min_prompt_tokens))
        _token_ids(props["prompt"], model.vocab_size, max(1, context - 1))
        # A stream takes one prompt and n = 1 (a batched stream is 422).
        body["anyOf"] = [
            {"properties": {"stream": {"type": "boolean", "enum": [False]}}},
            {"properties": {"n": {"type": "integer", "enum": [1]},
                            "prompt": {"anyOf": [{"type": "string"},
                                                 {"type": "array", "items": {"type": "integer"}},
                                                 {"type": "array", "maxItems": 1}]}}},
        ]
    elif op_id == "create_chat_completion":
        room = max(1, (model.context or DEFAULT_CONTEXT) - model.min_chat_tokens)
        for name in ("max_tokens", "max_completion_tokens"):
            _cap(props[name], "maximum", room)
    elif op_id == "detokenize":
        if model.vocab_size:
            _cap(props["tokens"]["items"], "maximum", model.vocab_size - 1)
    elif op_id == "create_embedding":
        dims = int(model.options.get("dimensions", 1024))
        _cap(props["dimensions"], "maximum", dims)
        if model.vocab_size is None:  # no tokenizer: token-id inputs are 422
            props["input"]["anyOf"] = [b for b in props["input"]["anyOf"]
                                       if b not in _int_branches(props["input"]) + _nested_branches(props["input"])]
        else:
            _token_ids(props["input"], model.vocab_size, model.context)
    elif op_id in ("create_image", "create_image_to_image", "create_image_edit"):
        _cap(props["num_inference_steps"], "minimum", int(model.options.get("min_steps", 1)))
    elif op_id == "create_fine_tuning_job":
        props["device_type"]["enum"] = [deployment.device]
        # dataset_loader Custom names its file, its type and the template (upstream's rule).
        text = {"type": "string", "minLength": 1}
        body["anyOf"] = [
            {"properties": {"dataset_loader": {"type": "string", "enum": ["SST2", "Alpaca"]}}},
            {"required": ["train_dataset_path", "file_type", "template"],
             "properties": {"train_dataset_path": text, "template": text,
                            "file_type": {"type": "string", "enum": [e for e in props["file_type"]["enum"] if e]}}},
        ]


def _name_rule(prop: Schema, candidates: list[ModelFacts], others: list[ModelFacts], strict: bool,
               default: bool, conditionals: bool = True) -> None:
    """The `model` property for `candidates` (the rule of ttmedia.scheduler.Scheduler.pool).
    Without `conditionals` (multipart bodies) the other models' names are not excluded by `not`."""
    nullable = bool(prop.get("nullable"))
    names = [n for m in candidates for n in m.names]
    if len(candidates) == 1 and not strict:
        excluded = [n for m in others for n in m.names if n not in names]
        prop["description"] = (f"Any value reaches {candidates[0].name}, the only model serving this operation here"
                               + (f", except the names of {', '.join(m.name for m in others)}." if excluded else "."))
        if excluded and conditionals:
            prop["not"] = {"enum": excluded}
        return
    prop["enum"] = names + ([None] if nullable and default else [])
    if not default:
        prop.pop("nullable", None)
    prop["description"] = f"One of the models serving this operation here ({', '.join(m.name for m in candidates)})."


def _variants(op_id: str, body: Schema, candidates: list[ModelFacts], others: list[ModelFacts],
              deployment: Deployment, multipart: bool = False) -> list[Schema]:
    """Complete body schemas for `candidates`: one if they share every limit, else one per model
    (the first, the default, also without a `model`)."""
    narrowed = []
    for model in candidates:
        variant = copy.deepcopy(body)
        _narrow_for(op_id, variant, model, deployment)
        narrowed.append(variant)
    if all(v == narrowed[0] for v in narrowed):
        if "model" in narrowed[0].get("properties", {}):
            _name_rule(narrowed[0]["properties"]["model"], candidates, others, deployment.strict, default=True,
                       conditionals=not multipart)
        return [narrowed[0]]
    for index, (variant, model) in enumerate(zip(narrowed, candidates, strict=True)):
        prop = variant.get("properties", {}).get("model")
        if prop is not None:
            _name_rule(prop, [model], [m for m in candidates + others if m is not model], True, default=index == 0)
            if index > 0:
                variant["required"] = sorted({*variant.get("required", []), "model"})
    return narrowed


def _with_mode(body: Schema, mode: str, multipart: bool) -> Schema:
    """OpenAI's create: text-to-video has no `input_reference`; image-to-video needs one. A
    multipart body states it without conditionals (see _multipart_video): its file needs the
    image as a file there."""
    body = copy.deepcopy(body)
    props = body.get("properties", {})
    keys = ("input_reference", "input_reference[image_url]")
    if mode == "t2v":
        for key in keys:
            props.pop(key, None)
        if not multipart:  # multipart bodies have additionalProperties: false already
            # "has input_reference", whatever its value (the empty schema names it for linters).
            body["not"] = {"required": ["input_reference"], "properties": {"input_reference": {}}}
    else:
        if multipart:
            props.pop("input_reference[image_url]", None)
        body["required"] = sorted({*body.get("required", []), "input_reference"})
    return body


def _multipart_video(body: Schema, family_models: list[ModelFacts], deployment: Deployment) -> Schema:
    """OpenAI's create as multipart, when both modes are served: one schema, the image optional.
    (Schemathesis 4.32 cannot generate multipart bodies with binary fields under anyOf/not.) A
    name reaches the only model of its mode, so `model` stays free unless names are strict."""
    body = copy.deepcopy(body)
    prop = body.get("properties", {}).get("model")
    if prop is not None and deployment.strict:
        _name_rule(prop, family_models, [], True, default=True, conditionals=False)
    return body


def _family(op: dict[str, Any]) -> str | None:
    base = op["operationId"].removeprefix("legacy_")
    return op.get("x-ttmedia-family") or MODEL_OPERATIONS.get(base)


def narrow(general: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """The spec of `deployment` (see the module docstring); `general` is not changed."""
    spec = copy.deepcopy(general)
    served = {m.family for m in deployment.models}
    for path in list(spec["paths"]):
        item = spec["paths"][path]
        for method in [m for m in HTTP_METHODS if m in item]:
            op = item[method]
            if not _narrow_operation(spec, general, op, deployment, served):
                del item[method]
        if not any(m in item for m in HTTP_METHODS):
            del spec["paths"][path]
    ready = spec["paths"].get("/v2/models/{model}/ready", {}).get("get")
    if ready is not None:
        param = next(p for p in ready["parameters"] if p.get("name") == "model")
        param["schema"] = {**param["schema"], "enum": [n for m in deployment.models for n in m.names]}
        param["example"] = deployment.models[0].name if deployment.models else param.get("example")
    _describe(spec, deployment)
    _prune_components(spec)
    return spec


def _narrow_operation(spec: dict[str, Any], general: dict[str, Any], op: dict[str, Any], deployment: Deployment,
                      served: set[str]) -> bool:
    """Narrow one operation in place; False when this deployment cannot serve it."""
    family = _family(op)
    if family is None:
        return True
    if family not in served:
        return False
    base = op["operationId"].removeprefix("legacy_")
    family_models = [m for m in deployment.models if m.family == family]
    modes: tuple[str | None, ...] = VIDEO_MODES.get(base, (None,))
    modes = tuple(mode for mode in modes if mode is None or any(m.can(mode) for m in family_models))
    if not modes:
        return False  # e.g. image-to-video with no image-to-video model
    body = op.get("requestBody")
    if body is None:
        return True
    body = _resolve(general, body)
    content: dict[str, Any] = {}
    for media_type, media in body["content"].items():
        schema = _object(general, media["schema"])
        multipart = media_type.startswith("multipart/")
        variants = []
        if base == "create_video" and multipart and len(modes) == 2:
            variants = [_multipart_video(schema, family_models, deployment)]
        for mode in modes if not variants else ():
            candidates = [m for m in family_models if mode is None or m.can(mode)]
            others = [m for m in family_models if m not in candidates]
            shaped = _with_mode(schema, mode, multipart) if base == "create_video" and mode is not None else schema
            variants += _variants(base, shaped, candidates, others, deployment, multipart)
        narrowed = {**media, "schema": variants[0] if len(variants) == 1 else {"anyOf": variants}}
        content[media_type] = _example_within(narrowed, media)
    op["requestBody"] = {**{k: v for k, v in body.items() if k != "content"}, "content": content}
    return True


def _example_within(narrowed: dict[str, Any], media: dict[str, Any]) -> dict[str, Any]:
    """Keep the general example only if it still validates (a model name it gives may not be served)."""
    example = media.get("example")
    if example is None:
        return narrowed
    from jsonschema import Draft4Validator

    probe = json.loads(json.dumps(narrowed["schema"]))
    try:
        valid = not any(True for _ in Draft4Validator(_nullable_as_type(probe)).iter_errors(example))
    except Exception:  # noqa: BLE001 - an example we cannot check is dropped, not served wrong
        valid = False
    if not valid:
        narrowed = {k: v for k, v in narrowed.items() if k != "example"}
        if isinstance(example, dict) and "model" in example:
            trimmed = {k: v for k, v in example.items() if k != "model"}
            try:
                ok = not any(True for _ in Draft4Validator(_nullable_as_type(probe)).iter_errors(trimmed))
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                narrowed["example"] = trimmed
    return narrowed


def _nullable_as_type(schema: Any) -> Any:
    """OpenAPI 3.0 `nullable` as JSON Schema (for checking examples)."""
    if isinstance(schema, dict):
        out = {k: _nullable_as_type(v) for k, v in schema.items() if k not in ("nullable", "$ref")}
        if "$ref" in schema:
            return {}
        if schema.get("nullable") and "type" in schema:
            out["type"] = [schema["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(schema, list):
        return [_nullable_as_type(v) for v in schema]
    return schema


def _describe(spec: dict[str, Any], deployment: Deployment) -> None:
    lines = [f"* `{m.name}` ({m.family})" + (f", also named {', '.join(f'`{n}`' for n in m.names[1:])}"
                                             if len(m.names) > 1 else "") for m in deployment.models]
    spec["info"]["description"] = (
        "**Served by this deployment** (the general contract, from which SDKs are generated, is "
        "`?contract=general`): request schemas are narrowed to these models and their limits, and "
        "operations they cannot serve are left out.\n\n" + "\n".join(lines) + "\n\n" + spec["info"]["description"])
    spec["info"]["x-ttmedia-deployment"] = {"device": deployment.device, "strict_model_names": deployment.strict,
                                            "models": [{"name": m.name, "family": m.family} for m in deployment.models]}


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            out.add(ref)
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def _prune_components(spec: dict[str, Any]) -> None:
    """Drop the components nothing refers to any more (inlined bodies, left-out operations)."""
    components = spec.get("components", {})
    while True:
        used: set[str] = set()
        _refs({k: v for k, v in spec.items() if k != "components"}, used)
        for kind, entries in components.items():
            for name, value in entries.items():
                if f"#/components/{kind}/{name}" in used or kind == "securitySchemes":
                    _refs(value, used)
        removed = False
        for kind, entries in components.items():
            if kind == "securitySchemes":
                continue
            for name in list(entries):
                if f"#/components/{kind}/{name}" not in used:
                    del entries[name]
                    removed = True
        if not removed:
            return


# --- serving ------------------------------------------------------------------------------------------

class ServeSpecFile:
    """/openapi.yaml and /openapi.json: the deployment's spec (built at the first request, when the
    models' tokenizers are there); `?contract=general`: the file as written."""

    def __init__(self, app: Any, spec_file: Path, runtime: Any = None) -> None:
        self.app = app
        self.yaml = Path(spec_file).read_bytes()
        self.runtime = runtime
        self._general_json: bytes | None = None
        self._served: tuple[bytes, bytes] | None = None

    @property
    def general_json(self) -> bytes:
        if self._general_json is None:  # our own copy: Connexion edits the one it is given
            parsed = parse_spec(self.yaml.decode("utf-8"))
            self._general_json = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self._general_json

    async def served(self) -> tuple[bytes, bytes]:
        if self._served is not None:
            return self._served
        deployment, complete = await deployment_of(self.runtime)
        spec = narrow(parse_spec(self.yaml.decode("utf-8")), deployment)
        built = (json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                 yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=110).encode("utf-8"))
        if complete:
            self._served = built
        return built

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path not in ("/openapi.yaml", "/openapi.json") or scope.get("method") not in ("GET", "HEAD"):
            if path is not None and not path.startswith(SWAGGER_UI_PREFIX) and isinstance(self.app, SwaggerUIMiddleware):
                # Nothing for Swagger UI's router (its routes all live under /ui): pass it by.
                await self.app.app(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        general = b"contract=general" in scope.get("query_string", b"") or self.runtime is None
        if general:
            body = self.yaml if path == "/openapi.yaml" else self.general_json
        else:
            as_json, as_yaml = await self.served()
            body = as_yaml if path == "/openapi.yaml" else as_json
        content_type = YAML_TYPE if path == "/openapi.yaml" else JSON_TYPE
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type + b"; charset=utf-8"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
