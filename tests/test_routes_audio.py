"""Whisper routes through HTTP: real WAV/MP3 decoding, formats, streaming, 413/415/422."""

from __future__ import annotations

import itertools

import orjson
import pytest

from tests.routes_support import b64
from ttmedia.media import audio
from ttmedia.testing import assert_problem

SENTENCES = "Hello there. The queue is empty and the device is warm. Good night."


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, float]:
    samples = audio.synthesize_speech(SENTENCES)
    return audio.encode_wav(samples, 16000), audio.duration_seconds(samples, 16000)


def _upload(client, wav: bytes, route: str = "/v1/audio/transcriptions", **fields: str):
    return client.post(route, files={"file": ("speech.wav", wav, "audio/wav")}, data=fields)


def test_verbose_json_segments_follow_the_sentences(media_client, speech):
    wav, duration = speech
    r = _upload(media_client, wav)  # default format: verbose_json
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "transcribe" and abs(body["duration"] - duration) < 0.01
    segments = body["segments"]
    # Three sentences separated by pauses: three segments, in order, inside the audio.
    assert len(segments) == 3
    assert all(0 <= s["start"] < s["end"] <= duration for s in segments)
    assert all(a["end"] < b["start"] for a, b in itertools.pairwise(segments))
    assert body["text"] == " ".join(s["text"].strip() for s in segments) and body["text"]
    assert _upload(media_client, wav).json() == body  # deterministic


def test_formats_and_content_types(media_client, speech):
    wav, _ = speech
    text = _upload(media_client, wav, response_format="json").json()["text"]
    r = _upload(media_client, wav, response_format="text")
    assert r.headers["content-type"].startswith("text/plain") and r.text == text + "\n"
    r = _upload(media_client, wav, response_format="srt")
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith("1\n00:00:00,") and " --> " in r.text
    r = _upload(media_client, wav, response_format="vtt")
    assert r.headers["content-type"].startswith("text/vtt") and r.text.startswith("WEBVTT\n\n")


def test_mp3_and_base64_json_inputs(media_client, speech):
    wav, duration = speech
    mp3, content_type = audio.encode_audio(audio.decode_audio(wav)[0], 16000, "mp3")
    assert content_type == "audio/mpeg"
    r = media_client.post("/v1/audio/transcriptions", files={"file": ("a.mp3", mp3, "audio/mpeg")},
                          data={"response_format": "verbose_json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["segments"]) == 3 and abs(r.json()["duration"] - duration) < 0.2
    r = media_client.post("/v1/audio/translations", json={"file": b64(wav), "response_format": "verbose_json"})
    assert r.status_code == 200 and r.json()["task"] == "translate" and r.json()["language"] == "en"


def test_stream_is_ndjson_chunks_then_the_result(media_client, speech):
    wav, _ = speech
    r = media_client.post("/v1/audio/transcriptions", json={"file": b64(wav), "stream": True,
                                                            "response_format": "verbose_json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in r.text.splitlines()]
    chunks, final = lines[:-1], lines[-1]
    assert [c["chunk_id"] for c in chunks] == [0, 1, 2]
    assert final["text"] == "".join(c["text"] for c in chunks).strip() and len(final["segments"]) == 3


def test_bad_audio_is_415_or_422_and_big_audio_413(media_client, speech):
    wav, _ = speech
    assert_problem(_upload(media_client, b"this is not audio at all"), 415, "unsupported_media_type")
    assert_problem(_upload(media_client, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk"), 422, "invalid_request")
    assert_problem(media_client.post("/v1/audio/transcriptions", json={"file": "***"}), 422, "invalid_request")
    assert_problem(_upload(media_client, wav, response_format="mp4"), 422, "invalid_request")
    settings = media_client.app_runtime.settings
    old, settings.max_audio_size_bytes = settings.max_audio_size_bytes, 1000
    try:
        assert_problem(_upload(media_client, wav), 413, "payload_too_large")
        assert_problem(media_client.post("/v1/audio/translations", json={"file": b64(wav)}), 413, "payload_too_large")
    finally:
        settings.max_audio_size_bytes = old
