"""A Connexion 3.3 AsyncOperation that prepares its handler once, not on every request.

Connexion's AsyncOperation builds a new decorator chain for each request (`AsyncOperation.fn`),
which re-runs `inspect.signature` on the handler and rebuilds the URI parser: about a tenth of
the server's CPU per request under load (py-spy, bench scenario 1). The chain depends only on
the operation, so we build it at the first request and keep it. Behaviour is unchanged: the same
decorator classes, framework and context proxies are used.

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
from connexion.lifecycle import ConnexionRequest
from starlette.types import Receive, Scope, Send

from ttmedia.scheduler.pool import OPEN_STREAMS
from ttmedia.validation import PARSED_BODY, PARSED_FORM

_NOTHING = object()


class ParsedBodyRequest(ConnexionRequest):
    """A request whose body the validator has already parsed (when it has)."""

    async def get_body(self) -> t.Any:
        parsed = self._starlette_request.scope.get("extensions", {}).get(PARSED_BODY, _NOTHING)
        if parsed is not _NOTHING:
            return parsed
        return await super().get_body()

    async def _split_form_files(self) -> None:
        form = self._starlette_request.scope.get("extensions", {}).get(PARSED_FORM)
        if form is not None:
            self._starlette_request._form = form  # Starlette's own cache: form() returns it
        await super()._split_form_files()


class PreparedAsyncOperation(AsyncOperation):
    _prepared: tuple[t.Any, t.Any, t.Callable[..., t.Any]] | None = None

    def _prepare(self) -> tuple[t.Any, t.Any, t.Callable[..., t.Any]]:
        decorator = StarletteDecorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
        # uri_parser reads the current operation from Connexion's context: fixed for this operation.
        self._prepared = (decorator.framework, decorator.uri_parser, decorator.decorate(self._fn))
        return self._prepared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> t.Any:
        if OPEN_STREAMS.count:
            # Connexion's stack and the handler would otherwise run as one uninterrupted step
            # of the event loop (0.3-0.5 ms). Yielding once between them lets tokens that came
            # meanwhile reach their streams first (bench 4 at c=8: inter-token p99 2.0 -> 1.75
            # ms). Only while streams are open: the extra loop turn costs 10% of throughput.
            await asyncio.sleep(0)
        _framework, uri_parser, handler = self._prepared or self._prepare()
        request = ParsedBodyRequest(context_scope, context_receive, uri_parser=uri_parser)
        response = await handler(request)
        return await response(scope, receive, send)


class PreparedAsyncApi(AsyncApi):
    def make_operation(self, operation: t.Any) -> AsyncOperation:
        return PreparedAsyncOperation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )


def install(middleware_app: AsyncASGIApp) -> None:
    """Make an AsyncApp's inner app build prepared operations (call before add_api)."""
    middleware_app.api_cls = PreparedAsyncApi  # type: ignore[assignment]
