"""The official OpenAI Python SDK against a live uvicorn: every call returns what the SDK expects."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.helpers import LiveServer, live_server
from ttmedia.media import audio

#: Every family the SDK covers; the CNN model is left out to spare a worker.
SDK_MODELS = "Qwen3-8B;bge-m3;stable-diffusion-xl-base-1.0;whisper-large-v3;speecht5_tts"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server({"MODELS": SDK_MODELS}) as srv:
        yield srv


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_and_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=8)
    assert chat.object == "chat.completion" and chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens <= 8
    stream = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content  # deterministic: same text either way
    completion = client.completions.create(model="Qwen3-8B", prompt="The device", max_tokens=5)
    assert completion.choices[0].text and completion.choices[0].finish_reason in ("stop", "length")


def test_embeddings_default_base64_decodes_to_unit_vectors(client: openai.OpenAI) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    result = client.embeddings.create(model="bge-m3", input=["a quiet river", "a calm river"])
    vectors = [np.asarray(d.embedding) for d in result.data]
    assert len(vectors) == 2 and vectors[0].shape == (1024,)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    short = client.embeddings.create(model="bge-m3", input="x", dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8 and result.usage.total_tokens > 0


def test_images_generate_b64_json(client: openai.OpenAI) -> None:
    result = client.images.generate(model="stable-diffusion-xl-base-1.0", prompt="a lighthouse",
                                    response_format="b64_json", size="512x512")
    img = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    img.load()
    assert img.size == (512, 512)


def test_transcription_and_speech(client: openai.OpenAI, tmp_path: Path) -> None:
    wav_path = tmp_path / "hello.wav"
    wav_path.write_bytes(audio.encode_wav(audio.synthesize_speech("Hello there. Good night."), 16000))
    with wav_path.open("rb") as fh:
        transcript = client.audio.transcriptions.create(model="whisper-large-v3", file=fh)
    assert isinstance(transcript.text, str) and transcript.text
    with wav_path.open("rb") as fh:
        text = client.audio.transcriptions.create(model="whisper-large-v3", file=fh, response_format="text")
    assert text.strip() == transcript.text
    speech = client.audio.speech.create(model="speecht5_tts", voice="alloy", input="Hello there.",
                                        response_format="wav")
    with wave.open(io.BytesIO(speech.content)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 8000


def test_sdk_retries_through_warmup() -> None:
    statuses: list[tuple[int, str | None]] = []

    def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, response.headers.get("retry-after")))

    with live_server({"MODELS": "bge-m3", "SIM_WARMUP_SECONDS": "3"}, wait_ready=False) as srv:
        http = httpx.Client(event_hooks={"response": [record]})
        sdk: Any = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=5, timeout=30,
                                 http_client=http)
        result = sdk.embeddings.create(model="bge-m3", input="warm up")
    assert len(result.data[0].embedding) == 1024
    assert statuses[0][0] == 503 and int(statuses[0][1] or 0) >= 1  # the SDK waited Retry-After
    assert statuses[-1][0] == 200
