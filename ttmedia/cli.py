"""Command line: `ttmedia serve`, `ttmedia spec`, `ttmedia stubs`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


DESCRIPTION = """\
ttmedia: a spec-first media inference server for Tenstorrent devices.

Without TT hardware every model runs on a simulated device with real timing and real outputs.
Configuration comes from environment variables (MODELS, DEVICE, SIM_WARMUP_SECONDS, SIM_SPEED,
API_KEY, ...): see the README's Configuration table.
"""


def _serve(args: argparse.Namespace) -> int:
    """Start-up order matters (bench scenario 5). The listening socket first: a taken port is
    the only thing said, before any process starts. Then the forkserver, which begins importing
    the worker modules while the settings, models, DATA_DIR's lock and the runner modules are
    checked (a failure there ends it again); the worker processes as soon as the models are
    known; the web stack last, while the devices warm up."""
    from ttmedia.web.listen import ListenError, listen, url_of
    from ttmedia.startup import EXIT_CONFIG, EXIT_STARTUP, PROCESS, StartupFailed, describe, kill_children

    PROCESS.owned = True

    def fail(lines: list[str], code: int) -> int:
        for line in lines:
            print(f"ttmedia: {line}", file=sys.stderr)
        return code

    try:
        sockets = listen(args.host, args.port)
    except ListenError as exc:
        return fail([str(exc)], EXIT_STARTUP)
    port = sockets[0].getsockname()[1]

    import gc

    from ttmedia.scheduler.forkserver import start_forkserver

    start_forkserver()
    # Imports make few cycles and many objects: collecting during them is wasted start-up time
    # (60 ms). The app's lifespan freezes what was loaded and turns the collector back on.
    gc.disable()
    try:
        from ttmedia.runners.faults import parse_faults
        from ttmedia.scheduler.devices import ConfigError, served_models
        from ttmedia.web.security import BindRefused, check_bind_allowed
        from ttmedia.settings import SettingsError, load_settings
        from ttmedia.startup import check_data_dir, check_runners

        try:
            settings = load_settings(**({"log_level": args.log_level} if args.log_level else {}))
            check_bind_allowed(args.host, settings)
            models = served_models(settings)
            parse_faults(settings.sim_faults)
        except SettingsError as exc:
            return fail(exc.lines, EXIT_CONFIG)
        except (BindRefused, ConfigError) as exc:
            return fail([str(exc) if isinstance(exc, BindRefused) else f"configuration error: {exc}"], EXIT_CONFIG)
        except ValueError as exc:  # SIM_FAULTS
            return fail([f"configuration error: {exc}"], EXIT_CONFIG)
        try:
            check_data_dir(settings)
            check_runners(models)
        except StartupFailed as exc:
            return fail([str(exc)], EXIT_STARTUP)

        from ttmedia.scheduler.scheduler import launch_workers_early

        launch_workers_early(settings, models)

        from ttmedia.observability.logs import configure_logging

        configure_logging(settings.log_level, settings.log_format, server=True)
        try:
            server = _server(settings, args, models, url_of(args.host, port))
        except Exception as exc:  # noqa: BLE001 - any failure to build the app: one line, not a traceback
            return fail([describe(exc, "cannot start")], EXIT_STARTUP)
        server.run(sockets=sockets)  # a failed lifespan exits with uvicorn's code 3 (SystemExit)
        return 0 if server.started else EXIT_STARTUP
    finally:
        # A failed start, or a forced exit (a second Ctrl-C) that skipped the drain: workers
        # ignore SIGTERM, so the interpreter would wait for them at exit for ever. The forkserver
        # goes too.
        kill_children()
        for sock in sockets:
            sock.close()


def _server(settings: Any, args: argparse.Namespace, models: list[Any], url: str) -> Any:
    """The uvicorn server for the app; the app is built here, with the settings read above."""
    import logging

    import uvicorn

    from ttmedia.web.app import create_app
    from ttmedia.web.httpguard import GuardedHttpToolsProtocol
    from ttmedia.internals.uvicorn import HookedServer
    from ttmedia.web.runtime import begin_drain

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        workers=1,  # the scheduler owns the devices: one server process per host
        log_config=None,  # ours (ttmedia.observability.logs); uvicorn's access log stays off
        access_log=False,
        log_level=settings.log_level,
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_request_header_bytes,
        timeout_graceful_shutdown=int(settings.drain_grace_seconds) + 5,
    )

    class DrainingServer(HookedServer):
        """On SIGTERM/SIGINT, models answer 503 `draining` at once, while uvicorn lets in-flight
        requests finish; the lifespan then stops the workers. The process then exits with code 0,
        instead of uvicorn raising the signal again (a KeyboardInterrupt traceback on Ctrl-C)."""

        def on_exit_signal(self, sig: int) -> None:
            begin_drain()

        def after_startup(self) -> None:  # the lifespan first: a failed one exits before this
            logging.getLogger("ttmedia").info(
                "serving %s on %s (Swagger UI at /ui/, spec at /openapi.yaml)",
                ", ".join(m.name for m in models), url)

    return DrainingServer(config)


def _spec(args: argparse.Namespace) -> int:
    from ttmedia.web.app import load_spec, spec_path

    if args.format == "yaml":
        sys.stdout.write(spec_path().read_text(encoding="utf-8"))
    else:
        json.dump(load_spec(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttmedia", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server",
                                description="Run the server with uvicorn (one process; workers are spawned per device group).")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; other addresses need API_KEY or NO_AUTH=1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                       help="log level (default LOG_LEVEL or info)")
    serve.set_defaults(func=_serve)

    spec = commands.add_parser("spec", help="print the OpenAPI contract")
    spec.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format (default yaml)")
    spec.set_defaults(func=_spec)

    from ttmedia import stubs as _stubs

    stubs = commands.add_parser("stubs", help="add handler skeletons for operations without a handler",
                                description=(_stubs.__doc__ or "").split("\n\n")[0])
    _stubs.add_arguments(stubs)
    stubs.set_defaults(func=_stubs.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return int(args.func(args))
    try:
        code = int(args.func(args))
    except SystemExit as exc:  # uvicorn's own exit (a failed lifespan: 3)
        code = exc.code if isinstance(exc.code, int) else 1
    # The server is done and every child is gone: run the exit handlers (logs, multiprocessing's
    # temp directory), then leave without tearing down the interpreter's modules one by one,
    # which takes the better part of a second on a busy machine.
    from ttmedia.internals.stdlib import run_exit_handlers

    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
