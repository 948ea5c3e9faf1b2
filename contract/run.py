"""Fuzz a live ttmedia server against openapi.yaml with Schemathesis, in one of two modes.

  ready    every model is ready (instant simulated device): the whole API is exercised,
           including stateful link chains.
  warming  every model warms up "forever": every media operation must answer 503 with
           Retry-After; after the fuzz run, each media operation is also called once with a
           valid example body and must answer 503 + Retry-After.
  faults   every model ready, but workers crash and hang at random (FAULT_MIX, a 2 s request
           timeout, fast restarts): the ready-mode phases must pass with 503 (worker_lost /
           no_workers + Retry-After) and 504 (timeout) as the only server-side answers.
           Injected runner *errors* are left out on purpose: a runner error is a genuine
           failure and a 500 by design.

The runner starts uvicorn on a free 127.0.0.1 port in its own process group (by the harness in
ttmedia/testing/harness.py), waits for it (bounded), runs `st run` with contract/schemathesis.toml
and contract/checks.py under a hard timeout, and always stops the server. Its exit code is
Schemathesis's (0 pass, 1 failures, 2 configuration or schema error), or:

  1  warming mode: a media operation did not answer 503 + Retry-After
  3  the server did not start or become ready in time
  124  Schemathesis exceeded --timeout

Examples:
  python -m contract.run --mode ready
  python -m contract.run --mode warming --max-examples 10 --seed 7
  python -m contract.run --mode ready --spec general     # openapi.yaml as written
  python -m contract.run --mode ready -- --include-path /v1/completions   # extra `st run` args
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from ttmedia.testing.harness import ServerNotUp, start_server, stop_group, ttmedia_command

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "contract" / "schemathesis.toml"
HOOKS = "contract.checks"

PHASES = {
    "ready": "examples,coverage,fuzzing,stateful",
    "warming": "examples,coverage,fuzzing",
    "faults": "examples,coverage,fuzzing,stateful",
}
#: faults mode: workers crash or wedge on a few requests (SIM_FAULTS grammar, README).
#: One model of every family (the default server's six, text- and image-to-video models, a trainer).
CONTRACT_MODELS = ("stable-diffusion-xl-base-1.0;Qwen3-8B;bge-m3;resnet-50;whisper-large-v3;speecht5_tts;"
                   "Wan2.2-T2V-A14B-Diffusers;Wan2.2-I2V-A14B-Diffusers;Llama-3.2-3B-Instruct")
FAULT_MIX = "crash_rate=0.02,hang_rate=0.005"
FAULT_ENV = {
    "SIM_FAULTS": FAULT_MIX,
    "REQUEST_PROCESSING_TIMEOUT_SECONDS": "2",  # a hang costs 2 s, then 504 and a new worker
    "WORKER_RESTART_BACKOFF_SECONDS": "0.1",
    "WORKER_RESTART_BACKOFF_MAX_SECONDS": "0.5",
    "MAX_WORKER_RESTART_COUNT": "100000",  # keep restarting: a failed model would only answer 503
}
NOT_READY_REASONS = {"warming_up", "no_workers", "init_failed", "draining", "worker_lost", "device_error"}
EXIT_SERVER = 3
EXIT_TIMEOUT = 124


def log(message: str) -> None:
    print(f"[contract] {message}", file=sys.stderr, flush=True)


# --- the server ---------------------------------------------------------------------------------

def server_env(mode: str, api_key: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("API_KEYS", "NO_AUTH", "SIM_FAULTS", "SIM_WARMUP_SECONDS", "SIM_SPEED"):
        env.pop(name, None)
    env.update({"API_KEY": api_key, "VALIDATE_RESPONSES": "1", "PYTHONUNBUFFERED": "1"})
    # Jobs the fuzzer creates go to a scratch DATA_DIR (the harness makes one and removes it
    # afterwards), not ./data, which one server locks; a DATA_DIR in the environment is kept.
    # Every family, so every operation (job creation and its link chains included) is reached.
    env.setdefault("MODELS", CONTRACT_MODELS)
    if mode == "warming":
        env["SIM_WARMUP_SECONDS"] = "100000"
    else:
        env.update({"SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0"})
    if mode == "faults":
        env.update(FAULT_ENV)
    return env


# --- schemathesis -------------------------------------------------------------------------------

def st_command(args: argparse.Namespace, base: str, report_dir: Path, extra: list[str]) -> list[str]:
    st = Path(sys.executable).with_name("st")
    exe = [str(st)] if st.exists() else [shutil.which("st") or "st"]
    cmd = [
        *exe, "--config-file", str(CONFIG), "--no-color",
        "run", f"{base}/openapi.json" + ("?contract=general" if args.spec == "general" else ""),
        "--checks", "all",
        "--phases", PHASES[args.mode],
        "--report", "junit,html",
        "--report-dir", str(report_dir),
        "--report-junit-path", str(report_dir / "junit.xml"),
        "--report-html-path", str(report_dir / "html"),
    ]
    if args.max_examples is not None:
        cmd += ["--max-examples", str(args.max_examples)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    return cmd + extra


def run_schemathesis(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> int:
    """Run `st`, echo and save its output, kill its process group after `timeout` seconds."""
    log(f"running: {' '.join(cmd)}")
    with open(log_path, "w", encoding="utf-8") as saved:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                sys.stdout.write(line)
                saved.write(line)
            sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"schemathesis exceeded {timeout:.0f} s; killing it")
            stop_group(proc, grace=5, group=True)
            code = EXIT_TIMEOUT
        reader.join(timeout=10)
    return code


# --- warming mode: one valid request per media operation must be 503 + Retry-After --------------

def _resolve(spec: dict[str, Any], node: Any) -> Any:
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/")):
            break
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def sample(spec: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """A small instance of `schema` (used only when the spec gives no example)."""
    schema = _resolve(spec, schema) or {}
    if "example" in schema:
        return schema["example"]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    if schema.get("enum"):
        return next((v for v in schema["enum"] if v is not None), schema["enum"][0])
    for key in ("allOf",):
        if key in schema:
            merged: dict[str, Any] = {}
            for part in schema[key]:
                value = sample(spec, part, depth + 1)
                if isinstance(value, dict):
                    merged.update(value)
            return merged
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return sample(spec, schema[key][0], depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample(spec, props.get(name, {}), depth + 1) for name in schema.get("required", [])}
    if kind == "array":
        return [sample(spec, schema.get("items", {}), depth + 1) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if schema.get("format") == "binary":
        return b"\x00" * 16
    return "x" * max(1, int(schema.get("minLength", 1)))


def _media_example(spec: dict[str, Any], media: dict[str, Any]) -> Any:
    if "example" in media:
        return media["example"]
    examples = media.get("examples") or {}
    for value in examples.values():
        value = _resolve(spec, value)
        if isinstance(value, dict) and "value" in value:
            return value["value"]
    return sample(spec, media.get("schema", {}))


def _multipart(fields: dict[str, Any]) -> tuple[bytes, str]:
    boundary = f"ttmedia-{uuid.uuid4().hex}"
    out = bytearray()
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            out += f"--{boundary}\r\n".encode()
            if isinstance(item, bytes):
                out += (f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                        "Content-Type: application/octet-stream\r\n\r\n").encode()
                out += item
            else:
                text = item if isinstance(item, str) else json.dumps(item)
                out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{text}'.encode()
            out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def build_request(spec: dict[str, Any], path: str, method: str, operation: dict[str, Any],
                  path_item: dict[str, Any]) -> tuple[str, bytes | None, dict[str, str]]:
    params = [_resolve(spec, p) for p in [*path_item.get("parameters", []), *operation.get("parameters", [])]]
    query: list[str] = []
    headers: dict[str, str] = {}
    for param in params:
        value = param.get("example", sample(spec, param.get("schema", {})))
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", urllib.parse.quote(str(value), safe=""))
        elif param["in"] == "query" and param.get("required"):
            query.append(f"{urllib.parse.quote(param['name'])}={urllib.parse.quote(str(value))}")
        elif param["in"] == "header" and param.get("required"):
            headers[param["name"]] = str(value)
    url_path = path + (("?" + "&".join(query)) if query else "")
    body_spec = _resolve(spec, operation.get("requestBody")) or {}
    content = body_spec.get("content") or {}
    if not content:
        return url_path, None, headers
    media_type = next(iter(content))
    example = _media_example(spec, content[media_type])
    if media_type.startswith("multipart/form-data"):
        body, headers["Content-Type"] = _multipart(example if isinstance(example, dict) else {})
    elif media_type == "application/x-www-form-urlencoded":
        body = urllib.parse.urlencode(example if isinstance(example, dict) else {}, doseq=True).encode()
        headers["Content-Type"] = media_type
    elif "json" in media_type:
        body, headers["Content-Type"] = json.dumps(example).encode(), media_type
    else:
        body = example if isinstance(example, bytes) else str(example).encode()
        headers["Content-Type"] = media_type
    return url_path, body, headers


def assert_media_not_ready(base: str, api_key: str) -> list[str]:
    """Every `x-ttmedia-family` operation answers a valid request with 503 + Retry-After."""
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as resp:
        spec = json.load(resp)
    with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as resp:
        served = {m.get("family") for m in json.load(resp).get("data", [])}
    problems: list[str] = []
    checked = 0
    for path, path_item in spec.get("paths", {}).items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "x-ttmedia-family" not in operation:
                continue
            label = f"{method.upper()} {path}"
            if operation["x-ttmedia-family"] not in served:
                # No model of this family here (video and training are served only when MODELS
                # names one): the answer is 404 model_not_found, not a readiness question.
                log(f"warming check {label}: skipped, no {operation['x-ttmedia-family']} model served")
                continue
            try:
                url_path, body, headers = build_request(spec, path, method, operation, path_item)
            except Exception as exc:  # noqa: BLE001 - report, keep checking the rest
                problems.append(f"{label}: cannot build an example request: {exc!r}")
                continue
            headers["Authorization"] = f"Bearer {api_key}"
            request = urllib.request.Request(f"{base}{url_path}", data=body, headers=headers,
                                             method=method.upper())
            checked += 1
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    status, resp_headers, payload = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as exc:
                status, resp_headers, payload = exc.code, exc.headers, exc.read()
            except OSError as exc:
                problems.append(f"{label}: no answer: {exc!r}")
                continue
            retry_after = resp_headers.get("Retry-After")
            reason = None
            try:
                reason = json.loads(payload).get("reason")
            except (ValueError, AttributeError):
                pass
            ok = (status == 503 and retry_after is not None and retry_after.strip().isdigit()
                  and int(retry_after) >= 1 and reason in NOT_READY_REASONS)
            verdict = "ok" if ok else "FAIL"
            log(f"warming check {label}: {status} Retry-After={retry_after} reason={reason} [{verdict}]")
            if not ok:
                problems.append(f"{label}: expected 503 + Retry-After >= 1 + a readiness reason, got {status} "
                                f"Retry-After={retry_after!r} body={payload[:200]!r}")
    if checked == 0:
        problems.append("the spec has no operation with x-ttmedia-family")
    return problems


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m contract.run",
        description="Start ttmedia on a free 127.0.0.1 port and fuzz it against openapi.yaml with "
                    "Schemathesis (contract/schemathesis.toml + contract/checks.py). "
                    "Arguments after `--` are passed to `st run` unchanged.",
        epilog=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", required=True, choices=sorted(PHASES),
                        help="ready: models ready, phases examples,coverage,fuzzing,stateful; "
                             "warming: models warm up for ever, phases examples,coverage,fuzzing, "
                             "then every media operation must answer 503 + Retry-After; "
                             "faults: ready-mode phases while workers crash and hang at random "
                             "(only 503/504 allowed as server-side answers)")
    parser.add_argument("--spec", choices=("served", "general"), default="served",
                        help="served (default): the deployment's narrowed spec (GET /openapi.json), whose "
                             "valid requests must all be accepted; general: openapi.yaml as written "
                             "(/openapi.json?contract=general), with contract/checks.py keeping positive "
                             "cases within the model rules it cannot state")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="test cases per operation (default: generation.max-examples in the config)")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="random seed (default: seed in contract/schemathesis.toml)")
    parser.add_argument("--report-dir", type=Path, default=None, metavar="DIR",
                        help="JUnit, HTML, server.log and st.log (default: reports/contract-<mode>)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="hard limit for the st run (default: %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the server to come up (default: %(default)s)")
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    report_dir: Path = (args.report_dir or ROOT / "reports" / f"contract-{args.mode}").resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    env = server_env(args.mode, api_key)
    started = time.monotonic()
    try:
        # uvicorn on the app factory, in its own process group, so the device workers stop with it.
        # Warming mode waits for "up": /health answers 503 until the models are ready, i.e. never.
        server = start_server(ttmedia_command(factory=True), env=env, inherit_env=False, cwd=ROOT,
                              wait="up" if args.mode == "warming" else "ready", timeout=args.startup_timeout,
                              log=report_dir / "server.log", poll=0.25)
    except ServerNotUp as exc:
        log(str(exc))
        return EXIT_SERVER
    base = server.url
    try:
        log(f"server up at {base} (pid {server.pid}) after {time.monotonic() - started:.1f} s ({args.mode})")
        st_env = {**env, "API_KEY": api_key}
        code = run_schemathesis(st_command(args, base, report_dir, extra), st_env, args.timeout,
                                report_dir / "st.log")
        log(f"schemathesis exit code {code}")
        if args.mode == "warming" and code != EXIT_TIMEOUT:
            failures = assert_media_not_ready(base, api_key)
            for failure in failures:
                log(f"warming check failed: {failure}")
            if failures and code == 0:
                code = 1
    finally:
        log(f"stopping server (pid {server.pid}, SIGTERM to its group)")
        server.stop(grace=10, group=True)
        if server.returncode is None or server.left_behind:
            log(f"server stop: exit {server.returncode}, SIGKILLed leftovers {server.left_behind}")
    log(f"{args.mode}: exit {code} in {time.monotonic() - started:.1f} s; reports in {report_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
