"""Request validators plugged into Connexion's validator_map.

Connexion answers every request problem with 400; our contract separates bytes that cannot be
read (400 `malformed_body`) from readable requests that break the schema (422
`invalid_request`). Defaults declared in the spec are filled in here, so the spec stays the one
source of every default.

Each body is read and parsed once. Connexion's validators re-serialise a JSON body for the
handler (json.dumps), which parses it again (json.loads); here the parsed, validated body is
handed over in the request's scope (PARSED_BODY, read by ttmedia.web.fastpath), and so is a parsed
multipart form (PARSED_FORM). A body is read to its end whatever its framing: a chunked body
has no Content-Length, which Connexion takes for no body at all.
"""

from __future__ import annotations

import asyncio
import copy
import json
import typing as t

import jsonschema_rs
import orjson
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import NonConformingResponseBody
from connexion.validators import (
    FormDataValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
    TextResponseBodyValidator,
)
from connexion.validators.json import JSONRequestBodyValidator, JSONResponseBodyValidator
from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartParser
from starlette.types import Receive, Scope

from ttmedia.internals.connexion import BodyValidatorHooks, FormValidatorHooks, ResponseValidatorHooks
from ttmedia.web import large_json
from ttmedia.web.problems import InvalidRequest, MalformedBody, NotFound
from ttmedia.web.schema_compile import compile_validator, error_text, fill_defaults

#: scope["extensions"] keys of the parsed body and of a parsed multipart form.
PARSED_BODY = "ttmedia.body"
PARSED_FORM = "ttmedia.form"

#: Deepest nesting of arrays and objects a JSON body may have. Real requests (chat messages
#: with content parts, tool schemas) stay far below; the schema validator's recursion does not.
MAX_JSON_DEPTH = 64

#: Digits → b"9", every other byte → b" ": a run of 19 digits (an integer literal orjson may not
#: hold exactly: it turns integers beyond 64 bits into floats) is then a plain substring search.
#: A regex scan took ~0.4 s of the event loop for a 13 MB base64 image edit; this takes ~10 ms.
_DIGITS_ONLY = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"9" * 19
_compiled: dict[t.Any, t.Any] = {}


def _compiled_for(schema: dict[str, t.Any]) -> t.Any:
    # One compiled validator per schema, not one per request. The schema dicts are the spec's
    # own and live as long as the app; the entry keeps a reference anyway, so an id can never be
    # reused for another schema.
    key = id(schema)
    entry = _compiled.get(key)
    if entry is None:
        entry = _compiled[key] = (schema, compile_validator(schema))
    return entry[1]


class ClientLeft(asyncio.CancelledError):
    """The client went away before its body was complete: nobody is left to answer (499)."""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientLeft("the client left before its request body was complete")
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    return await large_json.join_bytes(chunks, size) if chunks else b""


def json_depth(value: t.Any, limit: int) -> int:
    """Nesting depth of arrays and objects, counted up to just past `limit` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(raw: bytes) -> t.Any:
    """UTF-8 JSON → value; 400 for bytes that are not JSON or nest too deep."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The request body is not valid UTF-8 JSON: {exc}") from None
    # Counting brackets is cheap and bounds the depth from above: most bodies need no walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and isinstance(value, (dict, list)):
        if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise MalformedBody(f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} deep.")
    if _LONG_DIGITS in raw.translate(_DIGITS_ONLY):
        # orjson accepted the document, so it is strict UTF-8 JSON; re-read it with the
        # stdlib, which keeps big integers exact (a schema-valid integer must stay one).
        value = json.loads(raw)
    return value


async def parse_json_body(raw: bytes) -> t.Any:
    """parse_json, with a large body's long strings decoded in pieces between other work
    (ttmedia.web.large_json): a 13 MB base64 image no longer holds the event loop."""
    if len(raw) < large_json.LARGE_BODY_BYTES:
        return parse_json(raw)
    try:
        return await large_json.loads(raw, parse_json)
    except large_json.BadString as exc:
        raise MalformedBody(f"The request body is not valid UTF-8 JSON: {exc}.") from None


class JSONBodyValidator(BodyValidatorHooks, JSONRequestBodyValidator):
    STATELESS = True  # one instance may validate every request of its operation (ttmedia.web.fastpath)

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        raw = await _read_body(receive)
        schema = self.body_schema
        body = await parse_json_body(raw) if raw.strip() else None
        if body is None and raw.strip() == b"" and schema.get("default") is not None:
            body = copy.deepcopy(schema["default"])
        if not (body is None and self.body_nullable):
            self.validate_body(body)
        scope.setdefault("extensions", {})[PARSED_BODY] = body
        # The bytes as they came, for anything below that reads the body itself.
        return self.replay(receive, [{"type": "http.request", "body": raw}]), scope

    def validate_body(self, body: t.Any) -> dict | None:
        if body is None:
            if self.body_nullable:
                return None
            raise InvalidRequest("A JSON request body is required.")
        try:
            _compiled_for(self.body_schema).validate(body)
        except jsonschema_rs.ValidationError as exc:
            raise InvalidRequest(error_text(exc)) from None
        except ValueError as exc:  # the validator's own limits (recursion), not the schema's verdict
            raise MalformedBody(f"The request body cannot be validated: {exc}") from None
        fill_defaults(self.body_schema, body)
        return body


class CompiledJSONResponseBodyValidator(ResponseValidatorHooks, JSONResponseBodyValidator):
    """VALIDATE_RESPONSES with the compiled validator: Connexion's pure-Python one took 20 s
    for a 2,048-vector embeddings answer, far past any client's timeout."""

    @property
    def validator(self) -> t.Any:
        schema = self.response_schema
        key = ("response", id(schema))
        entry = _compiled.get(key)
        if entry is None:
            entry = _compiled[key] = (schema, compile_validator(schema, formats=True))
        return entry[1]

    def parse_response(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        body = b"".join(stream)
        if not body:
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise NonConformingResponseBody(f"Response body is not JSON: {exc}") from None

    def validate_response(self, body: t.Any) -> None:
        try:
            self.validator.validate(body)
        except jsonschema_rs.ValidationError as exc:
            raise NonConformingResponseBody(
                detail=f"Response body does not conform to specification. {error_text(exc)}") from None


class _KeptForm:
    """A form parser that remembers what it parsed."""

    def __init__(self, parser: t.Any, keep: t.Callable[[FormData], None]) -> None:
        self.parser, self.keep = parser, keep

    async def parse(self) -> FormData:
        form = await self.parser.parse()
        self.keep(form)
        return form


class _WholeForm(FormValidatorHooks):
    """A form validator that reads the whole body whatever its framing, validates it with the
    compiled schema, and hands the parsed form on instead of the bytes to parse again."""

    _base_parser: t.Any
    _form: FormData | None = None

    def form_parser(self, headers: Headers, stream: t.Any) -> _KeptForm:
        return _KeptForm(self._base_parser(headers, stream), self._keep)

    def _keep(self, form: FormData) -> None:
        self._form = form

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        first = await receive()
        if first["type"] != "http.request":
            raise ClientLeft("the client left before its request body was complete")
        if not first.get("body") and not first.get("more_body", False):  # no body at all
            if self.body_required:
                raise InvalidRequest("A request body is required.")
            return receive, scope
        if "content-type" not in Headers(scope=scope):
            # The operation's default type was assumed, but a form needs its Content-Type (boundary).
            raise MalformedBody("A form body needs a Content-Type header (with its boundary, for multipart).")

        async def stream() -> t.AsyncGenerator[bytes, None]:
            yield first.get("body", b"")
            more = first.get("more_body", False)
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientLeft("the client left before its request body was complete")
                more = message.get("more_body", False)
                yield message.get("body", b"")
            yield b""

        body = await self.parse_form(stream(), scope)
        if self._form is not None:
            scope.setdefault("extensions", {})[PARSED_FORM] = self._form
        self.validate_body(body)
        return receive, scope

    def validate_body(self, body: t.Any) -> None:
        if not isinstance(body, dict):
            raise InvalidRequest("The form could not be read as fields.")
        if self.strict:
            self.check_no_extra_fields(body)
        try:
            _compiled_for(self.body_schema).validate(body)
        except jsonschema_rs.ValidationError as exc:
            raise InvalidRequest(error_text(exc)) from None


class FormBodyValidator(_WholeForm, FormDataValidator):
    _base_parser = FormParser


class MultiPartBodyValidator(_WholeForm, MultiPartFormDataValidator):
    _base_parser = MultiPartParser


class NDJSONResponseBodyValidator(CompiledJSONResponseBodyValidator):
    """Each line of an application/x-ndjson body against the (per-line) schema.

    Without it Connexion's `*/*json` validator would parse the whole stream as one JSON document.
    """

    def parse_response(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        try:
            return [orjson.loads(line) for line in b"".join(stream).splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise NonConformingResponseBody(f"NDJSON line is not JSON: {exc}") from None

    def validate_response(self, body: t.Any) -> None:
        for line in body or []:
            super().validate_response(line)


class _MemoMediaTypeDict(MediaTypeDict):
    """A MediaTypeDict that remembers its answers: Connexion looks up the validator for the
    request's content type on every request, by sorting the patterns and fnmatch-ing each."""

    def __getitem__(self, item: str) -> t.Any:
        memo: dict[str, t.Any] = self.__dict__.setdefault("_memo", {})
        try:
            return memo[item]
        except KeyError:
            value = memo[item] = super().__getitem__(item)
            return value


class PathParameterValidator(ParameterValidator):
    """A path names a resource; a malformed id names none, so it is 404 (upstream's answer), not
    a validation error. Query and header parameters are validated as Connexion does (422)."""

    def validate_path_parameter(self, param: dict[str, t.Any], request: t.Any) -> str | None:
        error = super().validate_path_parameter(param, request)
        if error:
            name = param["name"]
            raise NotFound(f"{name} {request.path_params.get(name)!r} names nothing here: it is not a valid {name}.")
        return None


VALIDATOR_MAP = {
    "parameter": PathParameterValidator,
    "body": _MemoMediaTypeDict(
        {
            "*/*json": JSONBodyValidator,
            "application/x-www-form-urlencoded": FormBodyValidator,
            "multipart/form-data": MultiPartBodyValidator,
        }
    ),
    # Order matters: the first matching pattern wins, and `*/*json` also matches x-ndjson.
    "response": _MemoMediaTypeDict(
        {
            "application/x-ndjson": NDJSONResponseBodyValidator,
            "*/*json": CompiledJSONResponseBodyValidator,
            "text/plain": TextResponseBodyValidator,
        }
    ),
}

