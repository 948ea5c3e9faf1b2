"""Connexion 3.3.0 internals ttmedia relies on (pinned in ttmedia.internals.WRITTEN_AGAINST).

Connexion documents its apps, middleware positions, resolvers and validator_map, but not what
its operations, validators and requests keep, nor the hooks its classes call on themselves.
Each function or class here names one such private, says why the public API is not enough,
and is the only place it is touched. On an upgrade, re-read each against the new source.
"""

from __future__ import annotations

import contextlib
import typing as t
from collections.abc import Callable, Iterator

from connexion.apps.asynchronous import AsyncASGIApp
from connexion.context import _scope as _context_scope
from connexion.context import operation as _context_operation
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.spec import OpenAPISpecification
from starlette.types import Receive, Scope

from ttmedia.internals import require
from ttmedia.internals.starlette import seed_form

require("connexion.py")  # before anything here is used: it relies on that version

# --- the app ----------------------------------------------------------------------------------


def middleware_app(app: t.Any) -> AsyncASGIApp:
    """The AsyncApp's inner ASGI app (`AsyncApp._middleware_app`). Its `api_cls` decides which
    operation class serves a request; Connexion has no option to choose one (ttmedia.web.fastpath)."""
    return app._middleware_app  # type: ignore[no-any-return]


def set_operation_class(app: t.Any, operation_cls: type) -> None:
    """Build the last added API's operations with our class. Connexion reads
    `specification.operation_cls` lazily, per operation; no option sets it."""
    app.middleware.apis[-1].specification.operation_cls = operation_cls


def replace_middleware(app: t.Any, replaced: type, by: type) -> None:
    """Swap one of Connexion's own middleware classes in its (undocumented) middleware list, in
    place: `middlewares=` would lose the positions other middleware are added at."""
    stack = app.middleware.middlewares
    stack[stack.index(replaced)] = by


@contextlib.contextmanager
def spec_validation(validate: Callable[[type, dict[str, t.Any]], None]) -> Iterator[None]:
    """Within the block, `OpenAPISpecification._validate_spec` (the classmethod its constructor
    calls to check a spec against the OpenAPI schema) is `validate`. Connexion has no option to
    validate with another (compiled) validator; outside the block, Connexion's own is back."""
    OpenAPISpecification._validate_spec = classmethod(validate)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del OpenAPISpecification._validate_spec  # Connexion's own again (it lives on the base class)


# --- operations -------------------------------------------------------------------------------


def operation_tags(operation: t.Any) -> list[str]:
    """The spec operation's `tags`. A Resolver is handed the operation, whose public attributes
    do not include its tags; its raw spec dict is `_operation`."""
    return operation._operation.get("tags") or []  # type: ignore[no-any-return]


def current_spec_operation() -> t.Any:
    """The spec operation of the request being served, as Connexion's context proxy holds it:
    the object itself (`_get_current_object`), to keep beyond the request."""
    return _context_operation._get_current_object()  # type: ignore[attr-defined]


def current_scope() -> Scope:
    """The ASGI scope of the request being served, from the context variable behind Connexion's
    `connexion.context.scope` proxy (`_scope`): the proxy's public readers, `connexion.request`
    and its state, build two request objects on every access."""
    return _context_scope.get()  # type: ignore[no-any-return]


def operation_handler(async_operation: t.Any) -> Callable[..., t.Any]:
    """The resolved handler of an AsyncOperation (`_fn`): its public `fn` wraps it in a new
    decorator chain on every access, which is what ttmedia.web.fastpath builds once instead."""
    return async_operation._fn  # type: ignore[no-any-return]


def validated_operation(validation_operation: t.Any) -> t.Any:
    """The spec operation a RequestValidationOperation validates for (`_operation`)."""
    return validation_operation._operation


def validator_map(validation_operation: t.Any) -> dict[str, t.Any]:
    """A RequestValidationOperation's merged validator map (`_validator_map`: Connexion's defaults
    updated with the app's), to build the same validators it would build per request."""
    return validation_operation._validator_map  # type: ignore[no-any-return]


# --- the routing record in the scope -----------------------------------------------------------


def routed_operation_id(scope: Scope) -> str:
    """The operation id Connexion's routing recorded in scope["extensions"][ROUTING_CONTEXT]
    (its internal "connexion_routing" key); "" before routing or for an unknown path."""
    return str(scope.get("extensions", {}).get(ROUTING_CONTEXT, {}).get("operation_id") or "")


def record_operation_id(scope: Scope, operation_id: str) -> None:
    """Record an operation id where Connexion's routing would: for an answer given before it."""
    scope.setdefault("extensions", {}).setdefault(ROUTING_CONTEXT, {})["operation_id"] = operation_id


def keep_routing_record(scope: Scope) -> dict[str, t.Any]:
    """Create scope["extensions"] now, and return it. Connexion's routing writes its record into
    the extensions of a *shallow copy* of the scope: only a dict that already exists is shared
    with the outer scope (uvicorn sends none), so middleware above routing sees the record."""
    return scope.setdefault("extensions", {})  # type: ignore[no-any-return]


# --- the request -------------------------------------------------------------------------------


class ParsedFormRequest(ConnexionRequest):
    """A ConnexionRequest that can be given the form already parsed (`parsed_form`, ours), and
    has no files when its body is no form.

    Connexion splits a form into fields and files in `_split_form_files`, from Starlette's
    `form()`, whose cache is Starlette's private `_form`; its file cache is `_files`."""

    def parsed_form(self) -> t.Any:
        """The form parsed before the handler (None: Starlette parses it as usual)."""
        return None

    def no_files_unless(self, is_form: bool) -> None:
        """A request whose body is not a form has no files: nothing to parse, and no form() to ask."""
        me: t.Any = self  # `_files` is Connexion's, untyped
        if me._files is None and not is_form:
            me._files = {}

    async def _split_form_files(self) -> None:
        form = self.parsed_form()
        if form is not None:
            seed_form(self._starlette_request, form)
        await super()._split_form_files()


# --- validators -------------------------------------------------------------------------------
# Connexion's body validators keep their constructor's arguments in privates (`_schema`,
# `_nullable`, `_required`, `_strict_validation`) and call private hooks on themselves
# (`_parse`, `_validate`, `_form_parser_cls`, `_validate_params_strictly`, `_insert_messages`).
# validator_map lets us plug in subclasses, and a subclass has no other way to change what they
# do: these mixins give the privates names of ours. Put a mixin before Connexion's class.


class BodyValidatorHooks:
    """For a subclass of a Connexion request-body validator."""

    _schema: dict[str, t.Any]
    _nullable: bool
    _required: bool
    _strict_validation: bool

    @property
    def body_schema(self) -> dict[str, t.Any]:
        return self._schema

    @property
    def body_nullable(self) -> bool:
        return self._nullable

    @property
    def body_required(self) -> bool:
        return self._required

    @property
    def strict(self) -> bool:
        return self._strict_validation

    def replay(self, receive: Receive, messages: list[dict[str, t.Any]]) -> Receive:
        """`receive`, with these messages first (Connexion's `_insert_messages`)."""
        return self._insert_messages(receive, messages=messages)  # type: ignore[attr-defined,no-any-return]

    def check_no_extra_fields(self, body: dict[str, t.Any]) -> None:
        """Strict validation of a form's field names (Connexion's `_validate_params_strictly`)."""
        self._validate_params_strictly(body)  # type: ignore[attr-defined]

    async def parse_form(self, stream: t.AsyncGenerator[bytes, None], scope: Scope) -> t.Any:
        """A form validator's parse of the body stream into fields (Connexion's `_parse`)."""
        return await self._parse(stream, scope=scope)  # type: ignore[attr-defined]

    def validate_body(self, body: t.Any) -> t.Any:
        raise NotImplementedError

    def _validate(self, body: t.Any) -> t.Any:  # called by Connexion's wrap_receive
        return self.validate_body(body)


class FormValidatorHooks(BodyValidatorHooks):
    """For a subclass of a Connexion form validator: `form_parser` makes its form parser."""

    def form_parser(self, headers: t.Any, stream: t.Any) -> t.Any:
        raise NotImplementedError

    @property
    def _form_parser_cls(self) -> t.Any:  # called by Connexion's _parse as cls(headers, stream)
        return self.form_parser


class ResponseValidatorHooks:
    """For a subclass of a Connexion response-body validator: its wrap_send calls `_parse` on the
    body's chunks and `_validate` on what that returns."""

    _schema: dict[str, t.Any]

    @property
    def response_schema(self) -> dict[str, t.Any]:
        return self._schema

    def parse_response(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        raise NotImplementedError

    def validate_response(self, body: t.Any) -> None:
        raise NotImplementedError

    def _parse(self, stream: t.Generator[bytes, None, None]) -> t.Any:
        return self.parse_response(stream)

    def _validate(self, body: t.Any) -> None:
        self.validate_response(body)
