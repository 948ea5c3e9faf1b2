"""Spec quality gate: the rules openapi.yaml keeps beyond "is valid OpenAPI 3.0".

`check(spec)` returns human-readable violations (empty = pass); `python -m contract.spec_gate
[openapi.yaml]` prints them and exits 1 if there are any. The rules:

* every operation has a unique snake_case `operationId`, a `summary`, a `description` and a tag;
* every request body and every 2xx response has an example (`example`/`examples` on the media
  type, or `example` on its schema) and every example validates against its schema with OpenAPI
  3.0 semantics (`nullable`, `$ref`, OAS formats); parameter examples are validated too.
  Exempt from *having* an example (an example is still validated if given) are bodies that are
  bytes or streams, which neither a JSON example nor Swagger UI's "Try it out" can carry:
  `image/*`, `audio/*`, `video/*`, `application/octet-stream`, `application/zip`,
  `text/event-stream`, `application/x-ndjson`, and `multipart/form-data` bodies with a
  `format: binary` field (a file must be picked; the operation's JSON variant carries the example);
* every media operation (`x-ttmedia-family`) declares 503 with a required `Retry-After` header
  and a problem+json body whose schema is `Problem` or built on it (`allOf`);
* no operation declares 405 (405 is produced by routing for a wrong method, with `Allow`; it is
  never a readiness answer, the upstream bug this project exists to fix);
* every 429 has a required `Retry-After` header;
* every 4xx/5xx (and `default`) response is a `$ref` to `#/components/responses/...`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
PROBLEM_JSON = "application/problem+json"
PROBLEM_SCHEMA = "#/components/schemas/Problem"
SHARED_RESPONSES = "#/components/responses/"
#: Bodies made of bytes or streamed events: no example required (see the module docstring).
EXEMPT_MEDIA = re.compile(
    r"^(image/.*|audio/.*|video/.*|application/octet-stream|application/zip|text/event-stream"
    r"|application/x-ndjson)$"
)


# --- small helpers ------------------------------------------------------------------------------

def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local `$ref`s until a non-reference node."""
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported: {ref}")
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    raise ValueError("a $ref cycle")


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(path, method, operation, path item) for every operation."""
    for path, item in (spec.get("paths") or {}).items():
        item = resolve(spec, item)
        for method in HTTP_METHODS:
            if isinstance(item.get(method), dict):
                yield path, method, item[method], item


def _schema_validator(spec: dict[str, Any], schema: dict[str, Any], *, write: bool) -> Any:
    # The schema becomes a document next to the spec's components, so `#/components/...` resolves.
    root = {"allOf": [schema], "components": spec.get("components") or {}}
    cls = OAS30WriteValidator if write else OAS30ReadValidator
    return cls(root, format_checker=oas30_format_checker)


def schema_errors(spec: dict[str, Any], schema: Any, value: Any, *, write: bool) -> list[str]:
    """Why `value` does not validate against `schema` (OpenAPI 3.0 rules), best match first."""
    if not isinstance(schema, dict):
        return []
    validator = _schema_validator(spec, schema, write=write)
    errors = sorted(validator.iter_errors(value), key=lambda e: (len(e.path), str(e.message)))
    return [_describe(e) for e in errors[:3]]


def _describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    message = error.message if len(error.message) < 200 else error.message[:200] + "..."
    return f"at {where}: {message}"


def _examples(spec: dict[str, Any], media: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) of every example of a media type object, including its schema's `example`."""
    found: list[tuple[str, Any]] = []
    if "example" in media:
        found.append(("example", media["example"]))
    for name, example in (media.get("examples") or {}).items():
        example = resolve(spec, example)
        if isinstance(example, dict) and "value" in example:
            found.append((f"examples/{name}", example["value"]))
        elif isinstance(example, dict) and "externalValue" in example:
            found.append((f"examples/{name}", _EXTERNAL))
    schema = resolve(spec, media.get("schema"))
    if isinstance(schema, dict) and "example" in schema:
        found.append(("schema example", schema["example"]))
    return found


_EXTERNAL = object()  # an externalValue example: counts as present, cannot be validated here


def _has_binary_field(spec: dict[str, Any], schema: Any) -> bool:
    schema = resolve(spec, schema)
    if not isinstance(schema, dict):
        return False
    for prop in (schema.get("properties") or {}).values():
        prop = resolve(spec, prop)
        if prop.get("format") == "binary":
            return True
        items = resolve(spec, prop.get("items"))
        if isinstance(items, dict) and items.get("format") == "binary":
            return True
    return any(_has_binary_field(spec, part) for part in schema.get("allOf") or [])


def example_required(spec: dict[str, Any], media_type: str, media: dict[str, Any]) -> bool:
    base = media_type.split(";")[0].strip().lower()
    if EXEMPT_MEDIA.match(base):
        return False
    if base == "multipart/form-data" and _has_binary_field(spec, media.get("schema")):
        return False
    schema = resolve(spec, media.get("schema"))
    return not (isinstance(schema, dict) and schema.get("format") == "binary")


def _is_problem_schema(spec: dict[str, Any], schema: Any, depth: int = 0) -> bool:
    if not isinstance(schema, dict) or depth > 8:
        return False
    if schema.get("$ref") == PROBLEM_SCHEMA:
        return True
    if "$ref" in schema:
        return _is_problem_schema(spec, resolve(spec, schema), depth + 1)
    return any(_is_problem_schema(spec, part, depth + 1) for part in schema.get("allOf") or [])


def _required_header(spec: dict[str, Any], response: dict[str, Any], name: str) -> str | None:
    """None if `response` declares header `name` as required, else what is wrong."""
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    header = resolve(spec, headers.get(name.lower()))
    if not isinstance(header, dict):
        return f"has no {name} header"
    if header.get("required") is not True:
        return f"declares {name} but not `required: true`"
    return None


# --- the rules ----------------------------------------------------------------------------------

def _check_examples(spec: dict[str, Any], label: str, content: dict[str, Any], *, write: bool) -> list[str]:
    out: list[str] = []
    for media_type, media in (content or {}).items():
        media = resolve(spec, media) or {}
        examples = _examples(spec, media)
        if not examples and example_required(spec, media_type, media):
            out.append(f"{label} {media_type}: no example (add `example` to the media type or its schema)")
        schema = media.get("schema")
        for name, value in examples:
            if value is _EXTERNAL:
                continue
            for error in schema_errors(spec, schema, value, write=write):
                out.append(f"{label} {media_type} {name} does not match its schema {error}")
    return out


def _check_operation(spec: dict[str, Any], path: str, method: str, op: dict[str, Any],
                     item: dict[str, Any]) -> list[str]:
    where = f"{method.upper()} {path}"
    out: list[str] = []
    op_id = op.get("operationId")
    if not op_id:
        out.append(f"{where}: no operationId")
    elif not SNAKE_CASE.match(str(op_id)):
        out.append(f"{where}: operationId {op_id!r} is not snake_case")
    for field in ("summary", "description"):
        if not str(op.get(field) or "").strip():
            out.append(f"{where}: no {field}")
    if not op.get("tags"):
        out.append(f"{where}: no tag (the tag names the handler module)")

    for param in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
        param = resolve(spec, param)
        if "example" in param:
            for error in schema_errors(spec, param.get("schema"), param["example"], write=True):
                out.append(f"{where}: parameter {param.get('name')} example does not match its schema {error}")

    body = resolve(spec, op.get("requestBody"))
    if isinstance(body, dict):
        out += _check_examples(spec, f"{where}: request body", body.get("content") or {}, write=True)

    responses = op.get("responses") or {}
    for code, raw in responses.items():
        code = str(code)
        response = resolve(spec, raw) or {}
        label = f"{where}: response {code}"
        if code.startswith("2"):
            out += _check_examples(spec, label, response.get("content") or {}, write=False)
        if code[:1] in {"4", "5"} or code == "default":
            ref = raw.get("$ref", "") if isinstance(raw, dict) else ""
            if not ref.startswith(SHARED_RESPONSES):
                out.append(f"{label} is inline; use a shared response ($ref: '{SHARED_RESPONSES}...')")
        if code == "405":
            out.append(f"{label}: 405 must not be declared (routing answers a wrong method with 405 + "
                       "Allow; a not-ready model is 503, never 405)")
        if code == "429":
            problem = _required_header(spec, response, "Retry-After")
            if problem:
                out.append(f"{label} {problem}")

    if op.get("x-ttmedia-family"):
        raw_503 = responses.get("503", responses.get(503))
        if raw_503 is None:
            out.append(f"{where}: media operation (x-ttmedia-family) declares no 503 response")
        else:
            response = resolve(spec, raw_503) or {}
            problem = _required_header(spec, response, "Retry-After")
            if problem:
                out.append(f"{where}: response 503 {problem}")
            media = (response.get("content") or {}).get(PROBLEM_JSON)
            if not isinstance(media, dict) or not _is_problem_schema(spec, media.get("schema")):
                out.append(f"{where}: response 503 must be {PROBLEM_JSON} with the Problem schema "
                           "(or a schema built on it with allOf)")
    return out


def check(spec: dict[str, Any]) -> list[str]:
    """Every violation of the rules above, one human-readable line each."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for path, method, op, item in operations(spec):
        where = f"{method.upper()} {path}"
        op_id = op.get("operationId")
        if op_id:
            if op_id in seen:
                out.append(f"{where}: operationId {op_id!r} is also used by {seen[op_id]}")
            seen.setdefault(op_id, where)
        try:
            out += _check_operation(spec, path, method, op, item)
        except (KeyError, ValueError) as exc:  # a dangling $ref: report it, keep checking
            out.append(f"{where}: cannot check ({exc!r})")
    for name in ((spec.get("components") or {}).get("responses") or {}):
        if "405" in name or re.search(r"not.?allowed", name, re.IGNORECASE):
            out.append(f"components/responses/{name}: a 405 response must not be declared")
    return out


def main(argv: list[str] | None = None) -> int:
    import yaml

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "openapi.yaml"
    violations = check(yaml.safe_load(path.read_text(encoding="utf-8")))
    for line in violations:
        print(line)
    print(f"{path}: {len(violations)} violation(s)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
