"""create_app(): the Connexion AsyncApp serving openapi.yaml, backed by the device scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import typing
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
from connexion import AsyncApp
from connexion.exceptions import (
    BadRequestProblem,
    InvalidSpecification,
    OAuthProblem,
    ProblemException,
    UnsupportedMediaTypeProblem,
)
from connexion.datastructures import MediaTypeDict
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import ConnexionMiddleware, MiddlewarePosition
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.operations import OpenAPIOperation
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from connexion.spec import OpenAPISpecification
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware.cors import CORSMiddleware

from ttmedia import startup
from ttmedia.media.memory import reuse_large_blocks

from ttmedia.web import fastpath, httpguard, problems
from ttmedia.web.body_lane import BodyLane
from ttmedia.web.context import note
from ttmedia.internals import connexion as internal_connexion
from ttmedia.internals import uvicorn as internal_uvicorn
from ttmedia.web.gate import EarlyGate, ReadinessGate, families_by_operation
from ttmedia.web.organization import OrganizationCheck, org_scoped_operations
from ttmedia.web.deprecation import DeprecationHeaders
from ttmedia.observability.logs import configure_logging, write_through
from ttmedia.web.requestlog import RequestMiddleware
from ttmedia.web.routing import AllowedMethods, ConcretePathsFirst
from ttmedia.web.runtime import Runtime
from ttmedia.web.scheduler_problems import as_problem
from ttmedia.runners.types import AUDIO, CNN, IMAGE, TTS, VIDEO
from ttmedia.scheduler.devices import ConfigError
from ttmedia.scheduler.errors import SchedulerError
from ttmedia.scheduler.readiness import WorkerState
from ttmedia.scheduler.worker import EARLY_LAUNCH
from ttmedia.web.security import BindRefused, check_bind_allowed
from ttmedia.web.served_spec import SWAGGER_UI_PREFIX, ServeSpecFile, parse_spec
from ttmedia.settings import Settings, SettingsError, load_settings
from ttmedia.web.validation import VALIDATOR_MAP

log = logging.getLogger("ttmedia")

HANDLERS_PACKAGE = "ttmedia.handlers"


def spec_path() -> Path:
    """openapi.yaml: inside the installed wheel, or at the root of a source checkout."""
    packaged = resources.files("ttmedia").joinpath("openapi.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "openapi.yaml"


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    return parse_spec(spec_path().read_text(encoding="utf-8"))


@contextlib.contextmanager
def compiled_spec_check() -> Iterator[None]:
    """Connexion checks the spec against the OpenAPI 3.0 schema at every start with pure-Python
    jsonschema (70 ms, a tenth of the time to open the port); the compiled validator makes the
    same check in 4 ms (through Connexion's private hook: ttmedia.internals.connexion)."""
    def validate(cls: type, spec: dict[str, Any]) -> None:
        errors = [f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
                  for e in _openapi_schema_validator().iter_errors(spec)]
        if errors:
            raise InvalidSpecification("openapi.yaml is not a valid OpenAPI 3.0 document: " + "; ".join(errors[:5]))

    with internal_connexion.spec_validation(validate):
        yield


@lru_cache(maxsize=1)
def _openapi_schema_validator() -> Any:
    return jsonschema_rs.validator_for(OpenAPISpecification.openapi_schema)


#: On a requestBody with several content types: the one a request without Content-Type is taken as.
DEFAULT_CONTENT_TYPE = "x-ttmedia-default-content-type"


class DeclaredContentTypeOperation(OpenAPIOperation):
    """An operation that accepts several content types declares its default in the spec.

    Connexion takes the first one listed and warns that it guessed, on every request to such an
    operation, even when the request names its type (4-9 times per request on the CNN and audio
    routes). Declared, there is nothing to guess and nothing to warn about.
    """

    @property
    def consumes(self) -> list[str]:
        found: list[str] | None = self.__dict__.get("_declared_consumes")
        if found is None:
            types = list(self.request_body.get("content", {}))
            if len(types) > 1:
                default = self.request_body.get(DEFAULT_CONTENT_TYPE)
                if default not in types:
                    raise InvalidSpecification(
                        f"{self.method.upper()} {self.path} accepts {', '.join(types)}: its requestBody "
                        f"must name the default one in {DEFAULT_CONTENT_TYPE}")
                types.remove(default)
                types.insert(0, default)
            found = self.__dict__["_declared_consumes"] = types
        return found

    def body_definition(self, content_type: str | None = None) -> dict[str, Any]:
        # Asked 6 times per request by Connexion's layers; the answer depends on the type alone.
        cache = self.__dict__.setdefault("_body_definitions", {})
        found = cache.get(content_type)
        if found is None:
            if not self.request_body:
                found = {}
            else:
                content = MediaTypeDict(self.request_body.get("content", {}))
                found = self.with_definitions(content.get(content_type or self.consumes[0], {}))
            cache[content_type] = found
        return found  # type: ignore[no-any-return]


class TagResolver(Resolver):
    """operationId `create_image` tagged `images` → `ttmedia.handlers.images.create_image`."""

    def resolve_operation_id(self, operation: Any) -> str:
        tags = internal_connexion.operation_tags(operation) or ["system"]
        return f"{HANDLERS_PACKAGE}.{tags[0]}.{operation.operation_id}"


# --- errors -------------------------------------------------------------------------------------

def _render(problem: problems.Problem) -> ConnexionResponse:
    note(reason=problem.reason)
    return ConnexionResponse(
        status_code=problem.status,
        mimetype=problems.PROBLEM_JSON,
        content_type=problems.PROBLEM_JSON,
        body=problem.render(),
        headers=problem.headers,
    )


def _install_error_handlers(app: AsyncApp, spec: dict[str, Any]) -> None:
    # Coroutines, all of them: Connexion runs a plain function handler in a worker thread (an
    # anyio hop per problem answered, and ~16 ms of anyio imports on the first), and these only
    # render a small body.
    allowed = AllowedMethods(spec)

    async def on_problem(_req: ConnexionRequest, exc: problems.Problem) -> ConnexionResponse:
        if exc.status == 500:
            log.error("%r", exc)
        return _render(exc)

    async def on_scheduler_error(req: ConnexionRequest, exc: SchedulerError) -> ConnexionResponse:
        return await on_problem(req, as_problem(exc))

    async def on_bad_request(_req: ConnexionRequest, exc: BadRequestProblem) -> ConnexionResponse:
        return _render(problems.InvalidRequest(str(exc.detail)))

    async def on_unauthorized(_req: ConnexionRequest, exc: OAuthProblem) -> ConnexionResponse:
        return _render(problems.Unauthorized(str(exc.detail or "Missing or invalid API key.")))

    async def on_media_type(_req: ConnexionRequest, exc: UnsupportedMediaTypeProblem) -> ConnexionResponse:
        return _render(problems.UnsupportedMediaType(str(exc.detail)))

    async def on_malformed(_req: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        return _render(problems.MalformedBody(f"The request body cannot be read: {exc}"))

    async def on_not_found(_req: ConnexionRequest, _exc: Exception) -> ConnexionResponse:
        return _render(problems.NotFound("No such path."))

    async def on_method(req: ConnexionRequest, _exc: Exception) -> ConnexionResponse:
        methods = allowed.for_path(req.url.path)
        return _render(problems.MethodNotAllowed(
            f"{req.method} is not allowed here; allowed: {', '.join(methods)}.", methods))

    async def on_http(_req: ConnexionRequest, exc: HTTPException) -> ConnexionResponse:
        status = exc.status_code
        if isinstance(exc, ProblemException):
            detail = str(exc.detail or exc.title or "")
        else:
            detail = str(exc.detail)
        by_status: dict[int, type[problems.Problem]] = {
            400: problems.InvalidRequest, 401: problems.Unauthorized, 404: problems.NotFound,
            413: problems.PayloadTooLarge, 415: problems.UnsupportedMediaType,
        }
        cls = by_status.get(status, problems.Internal)
        return _render(cls(detail))

    async def on_crash(_req: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.exception("unhandled error", exc_info=exc)
        return _render(problems.Internal("An unexpected error occurred; it has been logged."))

    app.add_error_handler(problems.Problem, on_problem)
    app.add_error_handler(SchedulerError, on_scheduler_error)
    app.add_error_handler(BadRequestProblem, on_bad_request)
    app.add_error_handler(OAuthProblem, on_unauthorized)
    app.add_error_handler(UnsupportedMediaTypeProblem, on_media_type)
    app.add_error_handler(MultiPartException, on_malformed)
    app.add_error_handler(UnicodeDecodeError, on_malformed)
    app.add_error_handler(ProblemException, on_http)
    app.add_error_handler(HTTPException, on_http)
    app.add_error_handler(404, on_not_found)
    app.add_error_handler(405, on_method)
    app.add_error_handler(Exception, on_crash)


# --- the app ------------------------------------------------------------------------------------

#: Families whose requests decode or encode media in the server process.
MEDIA_FAMILIES = frozenset({IMAGE, CNN, VIDEO, AUDIO, TTS})


def import_media_stack() -> None:
    """numpy, Pillow with its plugins, and our media modules: ~0.3 s of imports that hold the
    GIL. Imported at start-up on a thread of their own while the workers warm up, instead of by
    the first image or audio request, which paid for them (and every token stream with it)."""
    import numpy  # noqa: F401
    from PIL import Image

    from ttmedia.media import audio, images  # noqa: F401

    Image.init()  # the format plugins, which Pillow otherwise loads on the first open()
    # Their ~12,000 objects live as long as the server, like those frozen at start-up: left in
    # the collector's old generation, they cost every full collection ~3 ms of a held loop.
    gc.freeze()


def create_app(settings: Settings | None = None) -> AsyncApp:
    """The ASGI app. `uvicorn ttmedia.app:create_app --factory` serves it with env settings.

    As that factory, a start that cannot succeed ends the process with one line on stderr:
    code 2 for bad settings or an open server on a public address, 3 for any other failure.
    """
    if settings is not None:
        return _build(settings)
    server = internal_uvicorn.calling_config()
    try:
        settings = load_settings()
        if server is not None:
            startup.PROCESS.owned = True
            if server.uds is None and server.fd is None:
                check_bind_allowed(server.host, settings)
            startup.check_data_dir(settings)  # before any worker starts
        app = _build(settings, server)
    except SettingsError as exc:
        _exit(exc.lines, startup.EXIT_CONFIG)
    except (BindRefused, ConfigError) as exc:
        _exit([str(exc)], startup.EXIT_CONFIG)
    except startup.StartupFailed as exc:
        _exit([str(exc)], startup.EXIT_STARTUP)
    except Exception as exc:  # noqa: BLE001 - any failure: one line, not a traceback
        _exit([startup.describe(exc, "cannot start")], startup.EXIT_STARTUP)
    return app


def _exit(lines: list[str], code: int) -> typing.NoReturn:
    for line in lines:
        print(f"ttmedia: {line}", file=sys.stderr)
    startup.kill_children()
    raise SystemExit(code)


def _tune_server(config: Any, settings: Settings) -> None:
    """Apply the HTTP limits to the uvicorn server that serves the app (options the operator
    left at uvicorn's defaults take ours)."""
    protocol = internal_uvicorn.http_protocol(config)
    guarded = httpguard.guarded(protocol)
    if guarded is not None:
        internal_uvicorn.set_http_protocol(config, guarded)
    else:
        log.warning("HTTP protocol %s has no header cap or header/body timeouts; use --http httptools or h11",
                    getattr(protocol, "__name__", protocol))
    if config.timeout_keep_alive == 5:
        config.timeout_keep_alive = settings.keep_alive_timeout_seconds
    if config.h11_max_incomplete_event_size is None:
        config.h11_max_incomplete_event_size = settings.max_request_header_bytes


def _build(settings: Settings, server: Any = None) -> AsyncApp:
    configure_logging(settings.log_level, settings.log_format, server=server is not None)
    httpguard.Limits.max_header_bytes = settings.max_request_header_bytes
    httpguard.Limits.header_timeout_s = settings.request_header_timeout_seconds
    httpguard.Limits.body_timeout_s = settings.request_body_timeout_seconds
    if server is not None:
        _tune_server(server, settings)
    runtime = Runtime(settings)
    startup.check_runners(runtime.scheduler.models)
    runtime.metrics.attach(runtime.scheduler)
    spec = load_spec()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            await runtime.scheduler.start()
        except BaseException as exc:
            await _abort_start(runtime, exc, "cannot start the worker processes")
        # Processes launched early that no worker adopted (none, unless settings moved) are orphans.
        EARLY_LAUNCH.kill_unadopted()
        try:
            await runtime.jobs.start()
        except BaseException as exc:
            await _abort_start(runtime, exc, f"cannot open the job store in DATA_DIR {settings.data_dir}")
        runtime.loop_lag.start()
        if MEDIA_FAMILIES & {model.family for model in runtime.scheduler.models}:
            threading.Thread(target=import_media_stack, name="media-imports", daemon=True).start()
        # Everything allocated so far lives as long as the server: keep it out of the collector's
        # scans, and collect the young generation less often (fewer pauses in token streams).
        # `ttmedia serve` turns the collector off for the imports; it is back on from here.
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)
        gc.enable()
        reuse_large_blocks()  # an upload's buffers reuse mapped pages (ttmedia.media.memory)
        try:
            yield {"runtime": runtime}
        finally:
            runtime.loop_lag.stop()
            # Jobs first: running jobs are re-queued and their streams closed, so the
            # scheduler's drain does not wait out a long video.
            await runtime.jobs.stop()
            await runtime.scheduler.stop()
            if startup.PROCESS.owned:
                startup.release_process()
                write_through()

    # BodyLane first of all: token streams send their body chunks past the others (body_lane.py).
    middlewares = [BodyLane, *ConnexionMiddleware.default_middlewares]
    if not settings.auth_enabled:
        middlewares.remove(SecurityMiddleware)
    app = AsyncApp(
        __name__,
        lifespan=lifespan,
        middlewares=middlewares,
        validator_map=VALIDATOR_MAP,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path=SWAGGER_UI_PREFIX),
    )
    fastpath.install(internal_connexion.middleware_app(app))
    with compiled_spec_check():
        app.add_api(
            spec,
            resolver=TagResolver(),
            validate_responses=settings.validate_responses,
            name="ttmedia",
        )
    internal_connexion.set_operation_class(app, DeclaredContentTypeOperation)
    # Before the gate: a request without an organisation is 401, even while warming.
    app.add_middleware(
        OrganizationCheck, position=MiddlewarePosition.BEFORE_VALIDATION,
        settings=settings, operations=org_scoped_operations(spec),
    )
    app.add_middleware(ConcretePathsFirst, position=MiddlewarePosition.BEFORE_ROUTING, spec=spec)
    app.add_middleware(
        ReadinessGate, position=MiddlewarePosition.BEFORE_VALIDATION,
        runtime=runtime, families=families_by_operation(spec),
    )
    # The contract narrowed to this deployment at /openapi.yaml and /openapi.json (the file as
    # written with ?contract=general), not Connexion's resolved copy.
    app.add_middleware(ServeSpecFile, position=MiddlewarePosition.BEFORE_SWAGGER, spec_file=spec_path(),
                       runtime=runtime)
    # Legacy paths: outermost (added first at this position), so every answer is marked, the
    # early 503s and 413s of RequestMiddleware included; and innermost, for response validation.
    for position in (MiddlewarePosition.BEFORE_EXCEPTION, MiddlewarePosition.BEFORE_CONTEXT):
        app.add_middleware(DeprecationHeaders, position=position, sunset=settings.legacy_routes_sunset)
    app.add_middleware(
        RequestMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION,
        metrics=runtime.metrics, max_body_bytes=settings.max_request_body_bytes,
        early_gate=EarlyGate(spec, runtime), log_requests=settings.log_requests,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION,
            allow_origins=[o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", settings.org_id_header,
                           "Idempotency-Key", "Range"],
            expose_headers=["X-Request-ID", "Retry-After", "Location", "Content-Range", "Content-Disposition",
                            "Deprecation", "Sunset", "Link"],
        )
    _install_error_handlers(app, spec)
    # Last: middleware positions are found by Connexion's own class.
    internal_connexion.replace_middleware(app, RequestValidationMiddleware, fastpath.PreparedRequestValidationMiddleware)
    internal_connexion.replace_middleware(app, RoutingMiddleware, fastpath.IndexedRoutingMiddleware)
    app.runtime = runtime  # type: ignore[attr-defined]  # for tests and the CLI
    return app


async def _abort_start(runtime: Runtime, exc: BaseException, doing: str) -> typing.NoReturn:
    """Start-up failed: say why in one line, stop every worker now (no drain: nothing was
    served), and end the lifespan; the server then exits with uvicorn's start-up failure code."""
    line = startup.describe(exc, doing)
    log.error("cannot start: %s", line.removeprefix("cannot start: "))
    runtime.loop_lag.stop()
    workers = [w for pool in runtime.scheduler.pools.values() for w in pool.workers]
    for worker in workers:  # stopped on purpose: their exits are not news
        worker.expect_exit = True
        worker.state = WorkerState.STOPPED
        worker.kill()

    def reap() -> None:
        for worker in workers:
            if worker.process is not None:
                worker.process.join(5)
        # A server process of its own: also what nothing adopted, and the forkserver. (A test
        # that embeds the app may run other apps' workers in this process.)
        if startup.PROCESS.owned:
            startup.kill_children()

    await asyncio.to_thread(reap)
    with contextlib.suppress(Exception):
        await runtime.jobs.stop()
    raise startup.StartupReported(line) from None
