"""Connexion 3.3 operations that prepare once what Connexion rebuilds on every request.

Connexion's AsyncOperation builds a new decorator chain for each request (`AsyncOperation.fn`),
which re-runs `inspect.signature` on the handler and rebuilds the URI parser: about a tenth of
the server's CPU per request under load (py-spy, bench scenario 1). The chain depends only on
the operation, so we build it at the first request and keep it. Behaviour is unchanged: the same
decorator classes, framework and context proxies are used.

The same holds for request validation: Connexion's RequestValidationOperation builds a URI
parser, a parameter validator, a media-type table and a body validator for each request; the
prepared one builds them at the first request that needs them.

The handler gets the body the validator parsed (ttmedia.validation: PARSED_BODY, PARSED_FORM),
not the bytes to parse again.

While token streams are open, an operation also yields to the event loop once before its
handler runs, so a new request's work does not hold up tokens that are already here.
"""

from __future__ import annotations

import asyncio
import typing as t

from connexion.apps.asynchronous import AsyncApi, AsyncASGIApp, AsyncOperation
from connexion.context import receive as context_receive
from connexion.context import scope as context_scope
from connexion.decorators import StarletteDecorator
from connexion.decorators.parameter import pythonic, sanitized, unwrap_decorators
from connexion import utils
from connexion.exceptions import UnsupportedMediaTypeProblem
from connexion.http_facts import FORM_CONTENT_TYPES
from connexion.lifecycle import ConnexionResponse
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.utils import inspect_function_arguments
from connexion.validators import ParameterValidator
from starlette.responses import Response as StarletteResponse
from starlette.routing import Match, Mount, Route, Router
from starlette.types import Receive, Scope, Send

from ttmedia.internals import connexion as internal_connexion
from ttmedia.internals.connexion import ParsedFormRequest
from ttmedia.internals.starlette import route_path
from ttmedia.scheduler.pool import OPEN_STREAMS
from ttmedia.web.validation import PARSED_BODY, PARSED_FORM

_NOTHING = object()


class ParsedBodyRequest(ParsedFormRequest):
    """A request whose body the validator has already parsed (when it has)."""

    async def get_body(self) -> t.Any:
        parsed = self.scope.get("extensions", {}).get(PARSED_BODY, _NOTHING)
        if parsed is not _NOTHING:
            return parsed
        return await super().get_body()

    async def files(self) -> t.Any:
        self.no_files_unless(self.mimetype in FORM_CONTENT_TYPES)
        return await super().files()

    def parsed_form(self) -> t.Any:
        return self.scope.get("extensions", {}).get(PARSED_FORM)


class PreparedAsyncOperation(AsyncOperation):
    _prepared: tuple[t.Any, t.Callable[..., t.Any], tuple[t.Callable[..., t.Any], str] | None] | None = None

    def _prepare(self) -> tuple[t.Any, t.Callable[..., t.Any], tuple[t.Callable[..., t.Any], str] | None]:
        decorator = StarletteDecorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
        # uri_parser reads the current operation from Connexion's context: fixed for this operation.
        handler = internal_connexion.operation_handler(self)
        self._prepared = (decorator.uri_parser, decorator.decorate(handler), self._direct(handler))
        return self._prepared

    def _direct(self, handler: t.Callable[..., t.Any]) -> tuple[t.Callable[..., t.Any], str] | None:
        """The handler, called with the parsed body alone, when that is all Connexion's decorators
        would give it: no path, query or header parameters, one argument, the body. (Three
        layers of decorators and their argument assembly cost more than the handler, per request.)"""
        spec_operation = internal_connexion.current_spec_operation()
        arguments, has_kwargs = inspect_function_arguments(unwrap_decorators(handler))
        sanitize = pythonic if self.pythonic_params else sanitized
        body_name = sanitize(spec_operation.body_name(None))
        if (spec_operation.parameters or has_kwargs or arguments != [body_name]
                or not asyncio.iscoroutinefunction(handler)):
            return None
        return handler, body_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> t.Any:
        if OPEN_STREAMS.count:
            # Connexion's stack and the handler would otherwise run as one uninterrupted step
            # of the event loop (0.3-0.5 ms). Yielding once between them lets tokens that came
            # meanwhile reach their streams first (bench 4 at c=8: inter-token p99 2.0 -> 1.75
            # ms). Only while streams are open: the extra loop turn costs 10% of throughput.
            await asyncio.sleep(0)
        uri_parser, handler, direct = self._prepared or self._prepare()
        parsed = scope.get("extensions", {}).get(PARSED_BODY, _NOTHING)
        if direct is not None and parsed is not _NOTHING:
            function, body_name = direct
            response = await function(**{body_name: parsed})
            if not isinstance(response, StarletteResponse):
                response = _framework_response(response, self.jsonifier)
        else:
            request = ParsedBodyRequest(context_scope, context_receive, uri_parser=uri_parser)
            response = await handler(request)
        return await response(scope, receive, send)


def _framework_response(result: t.Any, jsonifier: t.Any) -> StarletteResponse:
    """What Connexion's response decorator makes of a handler's result that is not a response."""
    from connexion.decorators.response import AsyncResponseDecorator
    from connexion.frameworks.starlette import Starlette as StarletteFramework

    if isinstance(result, ConnexionResponse):
        return StarletteFramework.connexion_to_framework_response(result)  # type: ignore[no-any-return]
    builder = AsyncResponseDecorator(framework=StarletteFramework, jsonifier=jsonifier)
    return builder.build_framework_response(result)  # type: ignore[no-any-return]


class PreparedAsyncApi(AsyncApi):
    def make_operation(self, operation: t.Any) -> AsyncOperation:
        return PreparedAsyncOperation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )


#: Content-Type header values seen → (mime type, encoding): clients send a handful of them.
_CONTENT_TYPES: dict[str, tuple[str, str]] = {}


class PreparedRequestValidationOperation(RequestValidationOperation):
    """Request validation as Connexion's, with what depends only on the operation (and on the
    request's content type) made once."""

    _parameters: ParameterValidator | None = None
    _accepted: dict[str, bool]
    _body: dict[tuple[str, str], tuple[t.Any, bool, t.Any]]  # (mime, encoding) → (validator class, stateless, args)

    def _parameter_validator(self) -> ParameterValidator:
        if self._parameters is None:
            operation = internal_connexion.validated_operation(self)
            uri_parser = operation.uri_parser_class(operation.parameters, operation.body_definition())
            self._parameters = internal_connexion.validator_map(self)["parameter"](
                operation.parameters, uri_parser=uri_parser, strict_validation=self.strict_validation,
                security_query_params=self.security_query_params)
        return self._parameters

    def validate_mime_type(self, mime_type: str) -> None:
        accepted = self.__dict__.setdefault("_accepted", {})
        known = accepted.get(mime_type)
        if known is None:
            try:
                super().validate_mime_type(mime_type)
                known = accepted[mime_type] = True
            except UnsupportedMediaTypeProblem:
                known = accepted[mime_type] = False
        if not known:
            raise UnsupportedMediaTypeProblem(
                detail=f"Invalid Content-type ({mime_type}), expected "
                       f"{internal_connexion.validated_operation(self).consumes}")

    def _body_validator(self, mime_type: str, encoding: str) -> t.Any:
        cache = self.__dict__.setdefault("_body", {})
        entry = cache.get((mime_type, encoding))
        if entry is None:
            operation = internal_connexion.validated_operation(self)
            schema = operation.body_schema(mime_type)
            validator_cls = None
            if schema:
                try:
                    validator_cls = internal_connexion.validator_map(self)["body"][mime_type]
                except KeyError:
                    validator_cls = None
            kwargs = {
                "schema": schema, "required": operation.request_body.get("required", False),
                "nullable": utils.is_nullable(operation.body_definition(mime_type)), "encoding": encoding,
                "strict_validation": self.strict_validation,
                "uri_parser": operation.uri_parser_class(operation.parameters, operation.body_definition()),
            }
            # A JSON validator keeps nothing of a request: one serves them all. A form validator
            # holds the form it parsed, so each request gets its own.
            reusable = getattr(validator_cls, "STATELESS", False)
            entry = cache[(mime_type, encoding)] = (
                validator_cls, reusable, validator_cls(**kwargs) if validator_cls and reusable else kwargs)
        validator_cls, reusable, made = entry
        if validator_cls is None:
            return None
        return made if reusable else validator_cls(**made)

    def extract_content_type(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
        """Connexion's, without its per-call typing expressions (a tenth of this layer's time)."""
        content_type = next((value.decode("latin-1") for key, value in headers if key.lower() == b"content-type"),
                            None)
        found = _CONTENT_TYPES.get(content_type)  # type: ignore[arg-type]
        if found is None:
            mime_type, encoding = utils.split_content_type(content_type)
            if mime_type is None:  # no Content-Type: the operation's default
                consumes = internal_connexion.validated_operation(self).consumes
                mime_type = consumes[0] if consumes else "application/octet-stream"
            found = (mime_type, encoding or "utf-8")
            if content_type is not None and len(_CONTENT_TYPES) < 256:
                _CONTENT_TYPES[content_type] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._parameter_validator().validate(scope)
        mime_type, encoding = self.extract_content_type(scope["headers"])
        self.validate_mime_type(mime_type)
        validator = self._body_validator(mime_type, encoding)
        if validator is not None:
            receive, scope = await validator.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


class PreparedRequestValidationAPI(RequestValidationAPI):
    def make_operation(self, operation: t.Any) -> RequestValidationOperation:
        return PreparedRequestValidationOperation(
            self.next_app, operation=operation, strict_validation=self.strict_validation,
            validator_map=self.validator_map)


class PreparedRequestValidationMiddleware(RequestValidationMiddleware):
    api_cls = PreparedRequestValidationAPI


class IndexedRoutes:
    """A Starlette Router in front of which a dict finds the route of a concrete path.

    Connexion routes every request through a Starlette Router that tries each of the spec's
    routes in turn (a regex each: a quarter of the request path's time). A path no templated
    route can match has exactly one candidate list, looked up here; the router still answers
    everything else (templated paths, wrong methods, unknown paths), so the outcome is the same.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        templated = [r for r in router.routes if isinstance(r, Route) and r.param_convertors]
        self.index: dict[str, list[Route]] = {}
        for route in router.routes:
            if isinstance(route, Route) and not route.param_convertors:
                if not any(t.path_regex.match(route.path) for t in templated):
                    self.index.setdefault(route.path, []).append(route)

    @property
    def default(self) -> t.Any:
        return self.router.default

    @default.setter
    def default(self, app: t.Any) -> None:  # Connexion chains APIs of one base path through it
        self.router.default = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.index.get(route_path(scope), ()):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self.router)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await self.router(scope, receive, send)


class IndexedRoutingMiddleware(RoutingMiddleware):
    """Connexion's routing middleware, with its API's routes indexed (IndexedRoutes)."""

    def add_api(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().add_api(*args, **kwargs)
        for mount in self.router.routes:
            if isinstance(mount, Mount) and isinstance(mount.app, Router):
                mount.app = IndexedRoutes(mount.app)


def install(middleware_app: AsyncASGIApp) -> None:
    """Make an AsyncApp's inner app build prepared operations (call before add_api)."""
    middleware_app.api_cls = PreparedAsyncApi  # type: ignore[assignment]
