"""POST /v1/audio/speech: audio bytes that decode, matching headers, JSON form, OpenAI body."""

from __future__ import annotations

import base64
import io
import wave

import pytest

from tests.routes_support import b64
from ttmedia.media import audio
from ttmedia.media.errors import EncoderUnavailable
from ttmedia.testing import assert_problem

TEXT = "Hello from a Tensix core. The queue is empty."


@pytest.mark.parametrize(("fmt", "content_type"), [("wav", "audio/wav"), ("MP3", "audio/mpeg"), ("ogg", "audio/ogg")])
def test_binary_formats_decode_and_carry_matching_headers(media_client, fmt, content_type):
    r = media_client.post("/v1/audio/speech", json={"text": TEXT, "response_format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == content_type
    assert r.headers["content-disposition"] == f"attachment; filename=speech.{fmt.lower()}"
    assert audio.sniff_audio_format(r.content) == {"audio/mpeg": "mp3"}.get(content_type, fmt.lower())
    samples, rate = audio.decode_audio(r.content)
    assert rate == 16000 and 2.0 < len(samples) / rate < 6.0 and float(abs(samples).max()) > 0.3


def test_json_answer_and_openai_body(media_client):
    r = media_client.post("/v1/audio/speech", json={"text": TEXT, "response_format": "verbose_json",
                                                    "speaker_id": "ana"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "wav" and body["sample_rate"] == 16000 and body["speaker_id"] == "ana"
    with wave.open(io.BytesIO(base64.b64decode(body["audio"]))) as w:
        assert w.getframerate() == 16000 and abs(w.getnframes() / 16000 - body["duration"]) < 0.01
    # OpenAI's SDK sends model/input/voice; the voice picks the speaker.
    openai = media_client.post("/v1/audio/speech", json={"model": "speecht5_tts", "input": TEXT, "voice": "ana",
                                                         "response_format": "wav"})
    native = media_client.post("/v1/audio/speech", json={"text": TEXT, "speaker_id": "ana"})
    assert openai.status_code == 200 and openai.content == native.content
    other = media_client.post("/v1/audio/speech", json={"text": TEXT, "speaker_embedding": b64(b"\x01" * 64)})
    assert other.status_code == 200 and other.content != native.content


def test_invalid_requests(media_client):
    for body in ({"text": "   "}, {"text": "x" * 20001}, {}, {"text": "hi", "response_format": "flac"},
                 {"text": "hi", "speaker_embedding": "not base64!"}):
        assert_problem(media_client.post("/v1/audio/speech", json=body), 422, "invalid_request")


def test_missing_encoder_is_500_not_a_silent_wav(media_client, monkeypatch):
    def broken(*_args, **_kw):
        raise EncoderUnavailable("the bundled ffmpeg has no libmp3lame encoder for mp3")

    monkeypatch.setattr(audio, "encode_audio", broken)
    body = assert_problem(media_client.post("/v1/audio/speech", json={"text": TEXT, "response_format": "mp3"}),
                          500, "internal")
    assert "mp3" in body["detail"]
