"""Request validators plugged into Connexion's validator_map.

Connexion answers every request problem with 400; our contract separates bytes that cannot be
read (400 `malformed_body`) from readable requests that break the schema (422
`invalid_request`). Defaults declared in the spec are filled in here, so the spec stays the one
source of every default.
"""

from __future__ import annotations

import json
import re
import typing as t

import jsonschema_rs
import orjson
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import NonConformingResponseBody
from connexion.validators import FormDataValidator, MultiPartFormDataValidator, TextResponseBodyValidator
from connexion.validators.json import JSONRequestBodyValidator, JSONResponseBodyValidator
from starlette.types import Scope

from ttmedia.problems import InvalidRequest, MalformedBody
from ttmedia.schema_compile import compile_validator, error_text, fill_defaults


#: An integer literal orjson may not hold exactly (it turns integers beyond 64 bits into floats).
_LONG_DIGITS = re.compile(rb"\d{19}")
_compiled: dict[t.Any, t.Any] = {}


class JSONBodyValidator(JSONRequestBodyValidator):
    MUTABLE_VALIDATION = True

    @property
    def _validator(self) -> t.Any:
        # One compiled validator per schema, not one per request.
        # The schema dicts are the spec's own and live as long as the app; the entry keeps a
        # reference anyway, so an id can never be reused for another schema.
        key = id(self._schema)
        entry = _compiled.get(key)
        if entry is None:
            entry = _compiled[key] = (self._schema, compile_validator(self._schema))
        return entry[1]

    async def _parse(self, stream: t.AsyncGenerator[bytes, None], scope: Scope) -> t.Any:
        raw = b"".join([chunk async for chunk in stream])
        if not raw.strip():
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"The request body is not valid UTF-8 JSON: {exc}") from None
        if _LONG_DIGITS.search(raw):
            # orjson accepted the document, so it is strict UTF-8 JSON; re-read it with the
            # stdlib, which keeps big integers exact (a schema-valid integer must stay one).
            value = json.loads(raw)
        return value

    def _validate(self, body: t.Any) -> dict | None:
        if body is None:
            if self._nullable:
                return None
            raise InvalidRequest("A JSON request body is required.")
        try:
            self._validator.validate(body)
        except jsonschema_rs.ValidationError as exc:
            raise InvalidRequest(error_text(exc)) from None
        fill_defaults(self._schema, body)
        return body


class CompiledJSONResponseBodyValidator(JSONResponseBodyValidator):
    """VALIDATE_RESPONSES with the compiled validator: Connexion's pure-Python one took 20 s
    for a 2,048-vector embeddings answer, far past any client's timeout."""

    @property
    def validator(self) -> t.Any:
        key = ("response", id(self._schema))
        entry = _compiled.get(key)
        if entry is None:
            entry = _compiled[key] = (self._schema, compile_validator(self._schema, formats=True))
        return entry[1]

    def _parse(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        body = b"".join(stream)
        if not body:
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise NonConformingResponseBody(f"Response body is not JSON: {exc}") from None

    def _validate(self, body: t.Any) -> None:
        try:
            self.validator.validate(body)
        except jsonschema_rs.ValidationError as exc:
            raise NonConformingResponseBody(
                detail=f"Response body does not conform to specification. {error_text(exc)}") from None


class NDJSONResponseBodyValidator(CompiledJSONResponseBodyValidator):
    """Each line of an application/x-ndjson body against the (per-line) schema.

    Without it Connexion's `*/*json` validator would parse the whole stream as one JSON document.
    """

    def _parse(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        try:
            return [orjson.loads(line) for line in b"".join(stream).splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise NonConformingResponseBody(f"NDJSON line is not JSON: {exc}") from None

    def _validate(self, body: t.Any) -> None:
        for line in body or []:
            super()._validate(line)


VALIDATOR_MAP = {
    "body": MediaTypeDict(
        {
            "*/*json": JSONBodyValidator,
            "application/x-www-form-urlencoded": FormDataValidator,
            "multipart/form-data": MultiPartFormDataValidator,
        }
    ),
    # Order matters: the first matching pattern wins, and `*/*json` also matches x-ndjson.
    "response": MediaTypeDict(
        {
            "application/x-ndjson": NDJSONResponseBodyValidator,
            "*/*json": CompiledJSONResponseBodyValidator,
            "text/plain": TextResponseBodyValidator,
        }
    ),
}
