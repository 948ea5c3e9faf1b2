"""Command line: `ttmedia serve`, `ttmedia spec`, `ttmedia stubs`."""

from __future__ import annotations

import argparse
import json
import sys


DESCRIPTION = """\
ttmedia: a spec-first media inference server for Tenstorrent devices.

Without TT hardware every model runs on a simulated device with real timing and real outputs.
Configuration comes from environment variables (MODELS, DEVICE, SIM_WARMUP_SECONDS, SIM_SPEED,
API_KEY, ...): see the README's Configuration table.
"""


def _serve(args: argparse.Namespace) -> int:
    # Start-up order matters (bench scenario 5): the forkserver begins importing the worker
    # modules first, the worker processes start as soon as the models are known, and only then
    # is the web stack imported, while the devices warm up.
    import gc

    from ttmedia.scheduler.forkserver import start_forkserver

    start_forkserver()
    # Imports make few cycles and many objects: collecting during them is wasted start-up time
    # (60 ms). The app's lifespan freezes what was loaded and turns the collector back on.
    gc.disable()

    from ttmedia.scheduler.devices import ConfigError, served_models
    from ttmedia.scheduler.scheduler import launch_workers_early
    from ttmedia.security import check_bind_allowed
    from ttmedia.settings import load_settings

    settings = load_settings()
    check_bind_allowed(args.host, settings)
    try:
        models = served_models(settings)
    except ConfigError as exc:
        print(f"ttmedia: configuration error: {exc}", file=sys.stderr)
        return 2
    launch_workers_early(settings, models)

    import uvicorn

    from ttmedia.runtime import begin_drain
    print(f"ttmedia: serving {', '.join(m.name for m in models)} on http://{args.host}:{args.port} "
          f"(Swagger UI at /ui/, spec at /openapi.yaml)", file=sys.stderr)
    config = uvicorn.Config(
        "ttmedia.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,  # the scheduler owns the devices: one server process per host
        log_level=args.log_level or settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_grace_seconds) + 5,
    )
    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, models answer 503 `draining` at once, while uvicorn lets in-flight
        requests finish; the lifespan then stops the workers."""

        def handle_exit(self, sig: int, frame: object) -> None:
            begin_drain()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    DrainingServer(config).run()
    return 0


def _spec(args: argparse.Namespace) -> int:
    from ttmedia.app import load_spec, spec_path

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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
