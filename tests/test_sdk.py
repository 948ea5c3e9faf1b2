"""Generated SDKs: a Python client (openapi-python-client) used against live servers, and
TypeScript types (openapi-typescript) that a hand-written client type-checks against (tsc --strict).

Nothing generated is committed: both are generated from openapi.yaml into a temporary directory.
The Python generator comes from the `sdk` extra (./dev installs `.[test,sdk,cpu]`); the TypeScript
tools are pinned in contract/lint/package.json and installed by `contract/lint.sh --install-only`.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import live_server

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "openapi.yaml"
SDK_DIR = ROOT / "contract" / "sdk"
LINT_DIR = ROOT / "contract" / "lint"
API_KEY = "sdk-test-key"
VIDEO_MODEL = "Wan2.2-T2V-A14B-Diffusers"
WARNING_MARKERS = ("warning", "cannot parse", "unable to", "error", "will be omitted", "unsupported")


def _generator() -> str:
    if importlib.util.find_spec("openapi_python_client") is None:
        pytest.skip("openapi-python-client is not installed: install the `sdk` extra (./dev does: .[test,sdk,cpu])")
    exe = Path(sys.executable).with_name("openapi-python-client")
    return str(exe) if exe.exists() else (shutil.which("openapi-python-client") or "openapi-python-client")


@pytest.fixture(scope="module")
def python_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, str]]:
    out = tmp_path_factory.mktemp("sdk") / "ttmedia_client"
    result = subprocess.run(
        [_generator(), "generate", "--path", str(SPEC), "--output-path", str(out), "--meta", "none",
         "--config", str(SDK_DIR / "openapi-python-client.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module("ttmedia_client"), f"exit {result.returncode}\n{output}"
    finally:
        sys.path.remove(str(out.parent))
        for name in [n for n in sys.modules if n == "ttmedia_client" or n.startswith("ttmedia_client.")]:
            del sys.modules[name]


def test_python_sdk_generates_without_warnings(python_sdk: tuple[ModuleType, str]) -> None:
    _module, output = python_sdk
    assert output.startswith("exit 0"), output
    noisy = [line for line in output.splitlines()[1:]
             if any(marker in line.lower() for marker in WARNING_MARKERS)]
    assert not noisy, "openapi-python-client warned:\n" + output


def _api(name: str) -> Any:
    return importlib.import_module(f"ttmedia_client.api.{name}")


def test_python_sdk_against_live_servers(python_sdk: tuple[ModuleType, str]) -> None:
    sdk, _output = python_sdk
    from ttmedia_client import models  # type: ignore[import-not-found]

    ready_env = {"API_KEY": API_KEY, "MODELS": f"Qwen3-8B;{VIDEO_MODEL}", "SIM_SPEED": "0"}
    warming_env = {"API_KEY": API_KEY, "MODELS": "Qwen3-8B", "SIM_WARMUP_SECONDS": "600"}
    with live_server(warming_env, wait_ready=False) as warming, live_server(ready_env) as ready:
        client = sdk.AuthenticatedClient(base_url=ready.url, token=API_KEY, raise_on_unexpected_status=True)

        health = _api("system.get_health").sync_detailed(client=client)
        assert health.status_code == 200
        assert isinstance(health.parsed, models.GetHealthResponse200)

        listed = _api("system.list_models").sync(client=client)
        assert {m.id for m in listed.data} == {"Qwen3-8B", VIDEO_MODEL}

        completion = _api("text.create_completion").sync(
            client=client, body=models.CompletionRequest(prompt="The Tenstorrent Wormhole is", max_tokens=8))
        assert isinstance(completion, models.Completion), completion
        assert completion.model == "Qwen3-8B"
        assert completion.usage.completion_tokens == 8
        assert completion.choices[0].text

        # A job's lifecycle: create (202), then read it back until it is finished.
        created = _api("videos.create_video_generation").sync_detailed(
            client=client, body=models.VideoGenerateRequest.from_dict(
                {"prompt": "A paper boat drifting down a rainy street", "num_inference_steps": 4, "seed": 7}))
        assert created.status_code == 202, created.content
        job = created.parsed
        assert isinstance(job, models.Job) and job.model == VIDEO_MODEL
        get_job = _api("videos.get_video_generation")
        deadline = time.monotonic() + 60
        while True:
            fetched = get_job.sync(job.id, client=client)
            assert isinstance(fetched, models.Job) and fetched.id == job.id
            if str(fetched.status) in {"completed", "failed", "cancelled"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert str(fetched.status) == "completed", fetched.to_dict()

        # Warming up: a 503 with Retry-After, surfaced as the client's typed problem object.
        cold = sdk.AuthenticatedClient(base_url=warming.url, token=API_KEY)
        not_ready = _api("text.create_completion").sync_detailed(
            client=cold, body=models.CompletionRequest(prompt="hello", max_tokens=4))
        assert not_ready.status_code == 503
        assert isinstance(not_ready.parsed, models.NotReadyProblem), not_ready.content
        assert str(not_ready.parsed.reason) == "warming_up"
        assert int(not_ready.headers["Retry-After"]) >= 1
        cold_health = _api("system.get_health").sync_detailed(client=cold)
        assert cold_health.status_code == 503 and isinstance(cold_health.parsed, models.NotReadyProblem)


# --- TypeScript ---------------------------------------------------------------------------------

def test_typescript_types_check(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH (the TypeScript SDK check needs node + npm)")
    install = subprocess.run([str(ROOT / "contract" / "lint.sh"), "--install-only"],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    bin_dir = LINT_DIR / "node_modules" / ".bin"
    generated = subprocess.run(
        [str(bin_dir / "openapi-typescript"), str(SPEC), "-o", str(tmp_path / "types.ts"),
         "--default-non-nullable", "false"],
        capture_output=True, text=True, timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "warn" not in (generated.stdout + generated.stderr).lower(), generated.stdout + generated.stderr
    shutil.copy(SDK_DIR / "client-check.ts", tmp_path / "client-check.ts")
    checked = subprocess.run(
        [str(bin_dir / "tsc"), "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
         "--moduleResolution", "bundler", "--lib", "es2022,dom", "--skipLibCheck", "client-check.ts"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
