"""The HTTP contract of the foundation, through Connexion's test client and a live uvicorn."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys

import orjson
import yaml
from PIL import Image

from tests.helpers import app_client, live_server, wait_until
from ttmedia.testing import assert_problem

IMAGE_BODY = {"prompt": "a red fox in snow", "num_inference_steps": 12, "seed": 3, "size": "512x512"}


def test_warming_model_answers_503_with_retry_after_and_wrong_method_is_405():
    with app_client(ready=False, sim_warmup_seconds=600) as c:
        r = c.post("/v1/images/generations", json=IMAGE_BODY)
        body = assert_problem(r, 503, "warming_up")
        # The honest estimate is ~600 s; it is capped so clients look again within a minute.
        assert 1 <= int(r.headers["retry-after"]) <= 60 and body["model"] == "stable-diffusion-xl-base-1.0"
        # The gate runs before the body is read: a broken body is still "not ready".
        r = c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert_problem(r, 503, "warming_up")
        r = c.get("/v1/images/generations")
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        assert_problem(c.get("/health"), 503, "warming_up")
        live = c.get("/tt-liveness")
        assert live.status_code == 503 and int(live.headers["retry-after"]) >= 1
        assert live.json()["status"] == "alive" and live.json()["model_ready"] is False


def test_health_goes_503_then_200_and_image_decodes():
    with app_client(ready=False, sim_warmup_seconds=1.0) as c:
        assert c.get("/health").status_code == 503
        assert wait_until(lambda: c.get("/health").status_code == 200, 30)
        assert c.get("/health").json() == {}
        r = c.post("/v1/images/generations", json={**IMAGE_BODY, "image_return_format": "PNG"})
        assert r.status_code == 200, r.text
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert image.format == "PNG" and image.size == (512, 512)
        again = c.post("/v1/images/generations", json={**IMAGE_BODY, "image_return_format": "PNG"})
        assert again.json()["images"] == r.json()["images"], "same prompt and seed must give the same image"


def test_liveness_reports_each_worker_with_its_pid():
    with app_client() as c:
        body = c.get("/tt-liveness").json()
        assert body["model_ready"] is True and body["status"] == "alive"
        pids = [w["pid"] for w in body["worker_info"].values()]
        assert len(pids) >= 2 and all(isinstance(p, int) and p != os.getpid() for p in pids)
        for pid in pids:
            os.kill(pid, 0)  # a real, live process


def test_completion_chat_and_streams():
    with app_client() as c:
        r = c.post("/v1/completions", json={"prompt": "Say something", "max_tokens": 7})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json()["usage"]["completion_tokens"] == 7 and r.json()["choices"][0]["finish_reason"] == "length"
        batched = c.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 3}).json()
        assert [ch["index"] for ch in batched["choices"]] == [0, 1, 2]
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"
        with c.stream("POST", "/v1/completions", json={"prompt": "go", "max_tokens": 5, "stream": True}) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        texts = [orjson.loads(e)["choices"][0]["text"] for e in events[:-1]]
        plain = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 5}).json()["choices"][0]["text"]
        assert "".join(texts) == plain, "a stream carries exactly the non-streamed text"


def test_errors_are_problems(monkeypatch):
    # Problems are rendered on the event loop: a plain-function error handler would make
    # Connexion hop to a worker thread for each one.
    import connexion.middleware.exceptions as connexion_exceptions

    def no_thread(*_args, **_kwargs):
        raise AssertionError("an error handler ran in a worker thread")

    monkeypatch.setattr(connexion_exceptions, "run_in_threadpool", no_thread)
    with app_client() as c:
        assert_problem(c.post("/v1/completions", content=b"{bad", headers={"content-type": "application/json"}),
                       400, "malformed_body")
        assert_problem(c.post("/v1/completions", content=b'{"prompt": "\xff"}',
                              headers={"content-type": "application/json"}), 400, "malformed_body")
        assert_problem(c.post("/v1/completions", json={"prompt": 5}), 422, "invalid_request")
        assert_problem(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5000}), 400,
                       "context_length_exceeded")
        assert_problem(c.post("/v1/images/generations", json={**IMAGE_BODY, "num_inference_steps": 4}),
                       422, "invalid_request")
        assert_problem(c.post("/v1/completions", content=b"prompt=x",
                              headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
        assert_problem(c.get("/no/such/path"), 404, "not_found")
        assert_problem(c.post("/tt-reset-device", params={"device_id": "77"}), 404, "not_found")
        assert_problem(c.post("/tt-reset-device"), 422, "invalid_request")
        r = c.delete("/tt-liveness")
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET, HEAD"


def test_auth_when_api_key_is_set():
    with app_client(api_key="s3cret", api_keys="other-key") as c:
        r = c.post("/v1/completions", json={"prompt": "x"})
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}),
                       401, "unauthorized")
        assert_problem(c.post("/tt-deep-reset"), 401, "unauthorized")
        for key in ("s3cret", "other-key"):
            ok = c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/v1/models").status_code == 200


def test_models_spec_and_ui():
    with app_client() as c:
        models = c.get("/v1/models").json()["data"]
        assert {m["family"] for m in models} >= {"image", "llm"}
        assert all(m["object"] == "model" and m["ready"] for m in models)
        assert c.get("/openapi.json").json()["openapi"] == "3.0.3"
        assert yaml.safe_load(c.get("/openapi.yaml").text)["info"]["title"] == "ttmedia"
        assert c.get("/ui/").status_code == 200


def test_live_server_sigkill_worker_comes_back_and_sigterm_leaves_no_children():
    with live_server() as server, server.client() as http:
        workers = http.get("/tt-liveness").json()["worker_info"]
        victim = next(iter(workers.values()))["pid"]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: http.get("/health").status_code == 503, 5)
        states = {m["state"] for m in http.get("/v1/models").json()["data"]}
        assert states & {"unavailable", "degraded"}
        assert wait_until(lambda: http.get("/health").status_code == 200, 30)
        pids = [w["pid"] for w in http.get("/tt-liveness").json()["worker_info"].values()]
        assert victim not in pids
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        for pid in pids:
            assert wait_until(lambda pid=pid: not _alive(pid), 10), f"worker {pid} outlived the server"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_cli_refuses_open_bind_without_key():
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEYS", "NO_AUTH")}
    r = subprocess.run([sys.executable, "-m", "ttmedia", "serve", "--host", "0.0.0.0", "--port", "1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "API_KEY" in r.stderr


def test_concrete_paths_match_before_templated_ones():
    with app_client() as c:
        r = c.get("/v1/videos/generations/i2v")
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        # The templated route itself still works: an unknown job id is a 404, not a 405.
        assert c.get("/v1/videos/generations/3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e").status_code == 404


def test_early_503_keeps_the_order_of_checks():
    """While warming, auth and method errors still come first, exactly as on the full path."""
    with app_client(ready=False, sim_warmup_seconds=600, api_key="k") as c:
        body = {"prompt": "x"}
        assert_problem(c.post("/v1/completions", json=body), 401, "unauthorized")
        assert_problem(c.post("/v1/completions", json=body, headers={"Authorization": "Bearer bad"}),
                       401, "unauthorized")
        assert_problem(c.get("/v1/completions", headers={"Authorization": "Bearer k"}), 405, "method_not_allowed")
        r = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer k", "X-Request-ID": "w-1"})
        assert_problem(r, 503, "warming_up")
        assert r.headers["x-request-id"] == "w-1" and int(r.headers["retry-after"]) >= 1
        metrics = c.get("/metrics").text
        assert 'operation="create_completion",status="503"' in metrics
