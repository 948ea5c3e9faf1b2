"""Drop-in for upstream's clients (issue 14): each numbered request upstream's own clients send,
replayed against a live server, with upstream's answer asserted; then the fields upstream added.

The requests are written from the facts of the issue and the upstream reference, not from
upstream's code. Live servers: uvicorn on 127.0.0.1, stopped by process group.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image

from tests.helpers import LiveServer, live_server, wait_until
from ttmedia.media import audio
from ttmedia.media.video import probe_mp4

LLM, IMAGE, WHISPER = "Qwen3-8B", "stable-diffusion-xl-base-1.0", "whisper-large-v3"
VIDEO, TRAINER = "Wan2.2-T2V-A14B-Diffusers", "Llama-3.2-3B-Instruct"
ORG = {"X-TT-Organization": "acme"}
UNKNOWN_JOB = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server({"MODELS": f"{IMAGE};{LLM};{WHISPER};{VIDEO};{TRAINER}"}) as srv:
        yield srv


@pytest.fixture
def http(server: LiveServer) -> Iterator[Any]:
    with server.client() as client:
        yield client


def upstream_clip(seconds: float = 5.3, peak_dbfs: float = -39.0) -> bytes:
    """Upstream's benchmark clip, as its facts describe it: 5.3 s of speech as a float32 WAV
    (format 3) peaking at -39 dBFS, a quiet recording."""
    rate = audio.DEFAULT_SAMPLE_RATE
    speech = audio.synthesize_speech("Testing the quiet recording. One, two, three. Is it heard?")
    samples = np.zeros(int(seconds * rate), np.float32)
    samples[: min(len(speech), len(samples))] = speech[: len(samples)]
    samples *= 10 ** (peak_dbfs / 20) / float(np.max(np.abs(samples)))
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def _chat(http: Any, model: Any, **extra: Any) -> Any:
    return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 4,
                                                   "messages": [{"role": "user", "content": "Hello"}], **extra})


# --- 1. model matching -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["test", "default", "test-model", "qwen3-8b", "QWEN/qwen3-8B", None])
def test_1_any_model_value_reaches_the_only_model_and_the_answer_names_it(http: Any, name: str | None) -> None:
    r = _chat(http, name)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == LLM


def test_1_several_candidates_match_case_insensitively_and_unknown_names_stay_404() -> None:
    with live_server({"MODELS": "Qwen3-8B;Llama-3.1-8B-Instruct"}) as srv, srv.client() as http:
        assert _chat(http, "llama-3.1-8b-instruct").json()["model"] == "Llama-3.1-8B-Instruct"
        assert _chat(http, "meta-llama/llama-3.1-8b-instruct").json()["model"] == "Llama-3.1-8B-Instruct"
        unknown = _chat(http, "test")
        assert unknown.status_code == 404 and unknown.json()["reason"] == "model_not_found"
        assert "Qwen3-8B" in unknown.json()["detail"] and "Llama-3.1-8B-Instruct" in unknown.json()["detail"]
    with live_server({"MODELS": LLM, "STRICT_MODEL_NAMES": "1"}) as srv, srv.client() as http:
        assert _chat(http, "test").status_code == 404
        assert _chat(http, "qwen3-8b").status_code == 404
        assert _chat(http, "Qwen/Qwen3-8B").status_code == 200


# --- 2. explicit nulls and upstream's temperatures --------------------------------------------------

def test_2_upstream_audio_parameter_test_with_nulls_lists_and_empty(http: Any) -> None:
    clip = base64.b64encode(upstream_clip()).decode()
    nulls = {"temperatures": None, "compression_ratio_threshold": None, "logprob_threshold": None,
             "no_speech_threshold": None, "return_timestamps": None}
    for temperatures in (None, [0.0, 0.2], "", "0.0,0.2,0.4"):
        r = http.post("/v1/audio/transcriptions", json={"file": clip, **nulls, "temperatures": temperatures})
        assert r.status_code == 200, (temperatures, r.text)
        assert r.json()["text"]
    form = http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", upstream_clip(), "audio/wav")},
                     data={"temperatures": "", "response_format": "json"})
    assert form.status_code == 200, form.text


# --- 3. legacy unversioned routes -----------------------------------------------------------------

def test_3_legacy_routes_answer_with_deprecation_sunset_and_link(http: Any) -> None:
    r = http.post("/tokenize", json={"prompt": "How many tokens is this?"})  # upstream's prompt_client
    assert r.status_code == 200 and r.json()["count"] > 0
    assert r.headers["deprecation"].startswith("@") and r.headers["sunset"].endswith("GMT")
    assert r.headers["link"] == '</v1/tokenize>; rel="successor-version"'
    assert http.post("/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"] == "How many tokens is this?"
    image = http.post("/image/generations", json={"prompt": "a fox", "num_inference_steps": 12, "size": "512x512"})
    assert image.status_code == 200 and image.headers["link"] == '</v1/images/generations>; rel="successor-version"'
    text = http.post("/audio/transcriptions", files={"file": ("clip.wav", upstream_clip(), "audio/wav")},
                     data={"response_format": "text"})
    assert text.status_code == 200 and text.text.strip() and "deprecation" in text.headers
    job = http.post("/video/generations", json={"prompt": "a boat"})
    assert job.status_code == 202 and job.headers["link"] == '</v1/videos/generations>; rel="successor-version"'
    listed = http.get("/video/jobs")
    assert listed.status_code == 200 and job.json()["id"] in [j["id"] for j in listed.json()]
    assert listed.headers["link"] == '</v1/videos/jobs>; rel="successor-version"'
    missing = http.post("/cnn/search-image", json={"prompt": "eA=="})  # no CNN model served: 404, still marked
    assert missing.status_code == 404 and "deprecation" in missing.headers


# --- 4. streamed transcription as text --------------------------------------------------------------

def test_4_streamed_transcription_with_text_format_is_plain_lines(http: Any) -> None:
    files = {"file": ("clip.wav", upstream_clip(), "audio/wav")}
    with http.stream("POST", "/v1/audio/transcriptions", files=files,
                     data={"stream": "true", "response_format": "text"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        lines = [line for line in r.iter_lines() if line]
    assert lines and all(not line.startswith("{") for line in lines)
    whole = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "text"}).text.strip()
    assert " ".join(lines) == whole


# --- 5. GET /v1/videos/jobs -------------------------------------------------------------------------

def test_5_video_jobs_is_a_bare_array(http: Any) -> None:
    job = http.post("/v1/videos/generations", json={"prompt": "a lighthouse"}).json()
    listed = http.get("/v1/videos/jobs").json()
    assert isinstance(listed, list) and listed[0]["id"] == job["id"]


# --- 6. a prompt longer than the context -------------------------------------------------------------

def test_6_prompt_over_the_context_is_400_and_openai_clients_see_bad_request(http: Any, server: LiveServer) -> None:
    long_prompt = "word " * 5000
    r = http.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 16})
    assert r.status_code == 400 and r.json()["reason"] == "context_length_exceeded"
    assert "exceeds max model length (4096)" in r.json()["detail"]
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long_prompt}]})
    assert chat.status_code == 400
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=LLM, prompt=long_prompt, max_tokens=16)


# --- 7. the custom dataset loader needs its file -----------------------------------------------------

def test_7_custom_dataset_without_train_dataset_path_is_422(http: Any) -> None:
    r = http.post("/v1/jobs", json={"dataset_loader": "Custom", "file_type": "jsonl", "template": "{text}"},
                  headers=ORG)
    assert r.status_code == 422 and "train_dataset_path" in r.json()["detail"]


# --- 8. malformed job ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/videos/generations/not-a-job", "/v1/videos/generations/123/download",
                                  "/video/generations/abc", "/v1/jobs/not-a-job", "/v1/jobs/1/metrics",
                                  "/v1/jobs/x/checkpoints/ckpt", f"/v1/jobs/{UNKNOWN_JOB}/checkpoints/latest"])
def test_8_malformed_job_ids_name_no_job_404(http: Any, path: str) -> None:
    r = http.get(path, headers=ORG)
    assert r.status_code == 404, (path, r.text)
    assert http.post("/v1/videos/generations/not-a-job/cancel").status_code == 404


# --- 9. HEAD on the probes ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/health", "/tt-liveness", "/v1/models"])
def test_9_head_on_probes_is_200(http: Any, path: str) -> None:
    r = http.head(path)
    assert r.status_code == 200 and r.content == b""


# --- 10. the simulators hear what upstream's tests vary -----------------------------------------------

def test_10_guidance_scale_and_negative_prompt_change_the_image(http: Any) -> None:
    def image(**fields: Any) -> bytes:
        body = {"prompt": "a red fox in the snow", "seed": 42, "num_inference_steps": 12, "size": "512x512", **fields}
        r = http.post("/v1/images/generations", json=body)
        assert r.status_code == 200, r.text
        return base64.b64decode(r.json()["images"][0])

    low, high = image(guidance_scale=7.5), image(guidance_scale=8.5)
    assert low != high
    assert image(guidance_scale=7.5) == low  # deterministic for a seed: the difference is the guidance
    assert image(guidance_scale=7.5, negative_prompt="blurry, trees") != low
    pixels = [np.asarray(Image.open(io.BytesIO(b)).convert("L"), np.float32) for b in (low, high)]
    assert pixels[1].std() > pixels[0].std()  # stronger guidance, stronger contrast


def test_10_whisper_hears_upstreams_quiet_benchmark_clip_and_streams_it(http: Any) -> None:
    clip = upstream_clip()
    peak = max(abs(v) for (v,) in struct.iter_unpack("<f", clip[44:]))
    assert abs(20 * math.log10(peak) + 39) < 0.1
    r = http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", clip, "audio/wav")},
                  data={"response_format": "json"})
    assert r.status_code == 200 and r.json()["text"].strip()
    started = time.monotonic()
    with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("clip.wav", clip, "audio/wav")},
                     data={"stream": "true"}) as stream:
        first = next(line for line in stream.iter_lines() if line)
        ttft = time.monotonic() - started
    chunk = json.loads(first)
    assert chunk["text"].strip() and "chunk_id" in chunk and ttft > 0  # a first chunk with words: a real TTFT


# --- 11. /tt-liveness answering 503 says why -----------------------------------------------------------

def test_11_liveness_503_carries_reason_and_retry_after() -> None:
    with live_server({"MODELS": LLM, "SIM_WARMUP_SECONDS": "600"}, wait_ready=False) as srv, srv.client() as http:
        r = http.get("/tt-liveness")
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        body = r.json()
        assert body["reason"] == "warming_up" and body["detail"] and body["status"] == "alive"
        assert body["model_ready"] is False and body["worker_info"]


# --- fields upstream added since our spec was written ------------------------------------------------

def _wait_job(http: Any, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(http.get(path, headers=headers).json())
        return seen["status"] in ("completed", "failed", "cancelled")

    assert wait_until(done, 60), seen
    return seen


def test_video_aspect_ratio_and_duration_shape_the_clip(http: Any) -> None:
    r = http.post("/v1/videos/generations", json={"prompt": "a tall tower", "aspect_ratio": "9:16",
                                                  "duration_seconds": 3, "num_inference_steps": 4})
    assert r.status_code == 202 and r.json()["request_parameters"]["duration_seconds"] == 3
    job = _wait_job(http, f"/v1/videos/generations/{r.json()['id']}")
    assert job["status"] == "completed" and job["result"]["seconds"] == 3.0
    info = probe_mp4(http.get(f"/v1/videos/generations/{job['id']}/download").content)
    assert info["height"] > info["width"] and abs(info["duration"] - 3.0) < 0.2
    for bad in ({"duration_seconds": 61}, {"duration_seconds": 0}, {"aspect_ratio": "5:4"},
                {"num_inference_steps": 3}, {"num_inference_steps": 51}):
        assert http.post("/v1/videos/generations", json={"prompt": "x", **bad}).status_code == 422, bad
    broken = http.post("/v1/videos/generations/i2v", json={"prompt": "x", "image_prompts": [{"image": "aGVsbG8="}]})
    assert broken.status_code in (404, 422)  # no I2V model here; an undecodable image is 422 either way


def test_training_custom_dataset_is_read_by_the_trainer(http: Any, tmp_path: Path) -> None:
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("\n".join(json.dumps({"q": f"question {i}", "a": "yes"}) for i in range(40)))
    val.write_text("\n".join(json.dumps({"q": f"check {i}", "a": "no"}) for i in range(8)))
    body = {"dataset_loader": "Custom", "train_dataset_path": str(train), "val_dataset_path": str(val),
            "file_type": "jsonl", "template": "Q: {question} A: {a}", "column_mapping": {"question": "q"},
            "batch_size": 4, "gradient_accumulation_steps": 2, "weight_decay": 0.1, "val_steps_freq": 2,
            "steps_freq": 1, "max_steps": 0}
    r = http.post("/v1/jobs", json=body, headers=ORG)
    assert r.status_code == 201, r.text
    job = _wait_job(http, f"/v1/jobs/{r.json()['id']}", ORG)
    assert job["status"] == "completed" and job["result"]["steps"] == 5  # 40 examples / (4 x 2) per step
    logs = " ".join(line["message"] for line in http.get(f"/v1/jobs/{job['id']}/logs", headers=ORG).json())
    assert f"{train}: 40 examples" in logs
    metrics = http.get(f"/v1/jobs/{job['id']}/metrics", headers=ORG).json()
    assert any(m["metric_name"] == "val_loss" for m in metrics)
    missing = http.post("/v1/jobs", json={**body, "train_dataset_path": str(tmp_path / "nope.jsonl")}, headers=ORG)
    failed = _wait_job(http, f"/v1/jobs/{missing.json()['id']}", ORG)
    assert failed["status"] == "failed" and "does not exist" in failed["error"]["message"]
    unmapped = http.post("/v1/jobs", json={**body, "column_mapping": None}, headers=ORG)
    failed = _wait_job(http, f"/v1/jobs/{unmapped.json()['id']}", ORG)
    assert failed["status"] == "failed" and "no column 'question'" in failed["error"]["message"]


def test_chat_continues_a_final_assistant_message(http: Any) -> None:
    start = [{"role": "user", "content": "Name a colour."}]
    fresh = _chat(http, None, messages=start).json()
    continuing = _chat(http, None, messages=[*start, {"role": "assistant", "content": "The colour is"}]).json()
    # The prompt is the conversation with the assistant's words left open: no new turn is opened.
    opened = http.post("/v1/tokenize", json={"prompt": "<|user|>\nName a colour.\n<|assistant|>\n"}).json()
    left_open = http.post("/v1/tokenize",
                          json={"prompt": "<|user|>\nName a colour.\n<|assistant|>\nThe colour is"}).json()
    assert fresh["usage"]["prompt_tokens"] == opened["count"]
    assert continuing["usage"]["prompt_tokens"] == left_open["count"]
    assert continuing["choices"][0]["message"]["content"] != fresh["choices"][0]["message"]["content"]


def test_served_model_name_renames_the_model_in_models_and_job_records() -> None:
    env = {"MODELS": "", "MODEL": VIDEO, "SERVED_MODEL_NAME": "studio-video"}
    with live_server(env) as srv, srv.client() as http:
        models = http.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["studio-video"]
        job = http.post("/v1/videos/generations", json={"prompt": "a boat", "model": "studio-video"}).json()
        assert job["model"] == "studio-video" and job["request_parameters"]["model"] == "studio-video"
        assert _wait_job(http, f"/v1/videos/generations/{job['id']}")["status"] == "completed"
        assert http.get("/v1/videos/jobs").json()[0]["model"] == "studio-video"
        # The catalog and Hugging Face names still reach it.
        assert http.post("/v1/videos/generations", json={"prompt": "x", "model": VIDEO}).json()["model"] == \
            "studio-video"
