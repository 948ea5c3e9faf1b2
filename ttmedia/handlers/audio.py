"""Speech recognition and translation (Whisper; OpenAI- and upstream-compatible)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.responses import Response

from ttmedia.handlers._calls import choose_pool, stream_failure
from ttmedia.handlers._uploads import decode_audio, upload_bytes
from ttmedia.web.body_lane import LaneStreamingResponse
from ttmedia.web.responses import json_response
from ttmedia.runners.types import AUDIO, Segment, Transcription, TranscriptionRequest
from ttmedia.web.runtime import current

#: Upstream's default; a superset of OpenAI's `json`, so OpenAI clients read it too.
DEFAULT_FORMAT = "verbose_json"
NDJSON = "application/x-ndjson"


async def create_transcription(body: dict[str, Any], file: UploadFile | None = None) -> Response:
    return await _run(body, file, "transcribe")


async def create_translation(body: dict[str, Any], file: UploadFile | None = None) -> Response:
    return await _run(body, file, "translate")


def _temperatures(body: dict[str, Any]) -> list[float]:
    """Whisper's fallback schedule: `temperatures` (a number, a list, or "0.0,0.2,..."), else
    `temperature`. Null or "" means "not given", as upstream's optional field."""
    value = body.get("temperatures")
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list) and value:
        return [float(t) for t in value]
    if isinstance(value, str) and value.strip():
        return [float(t) for t in value.split(",") if t.strip()]
    return [float(body.get("temperature") or 0.0)]


async def _run(body: dict[str, Any], file: UploadFile | None, task: str) -> Response:
    runtime = current()
    pool = choose_pool(AUDIO, body.get("model"))
    data = await upload_bytes(body, file, "file", runtime.settings.max_audio_size_bytes)
    request = TranscriptionRequest(
        await decode_audio(data), task=task,  # type: ignore[arg-type]
        language=body.get("language"), prompt=body.get("prompt"), temperatures=_temperatures(body),
        compression_ratio_threshold=body.get("compression_ratio_threshold"),
        logprob_threshold=body.get("logprob_threshold"), no_speech_threshold=body.get("no_speech_threshold"))
    fmt = body.get("response_format") or DEFAULT_FORMAT
    if body.get("stream"):
        # Admitted now, so 429/503 still come as a status; the lines follow as segments finish.
        if fmt == "text":  # upstream: one plain line per segment, no final body
            return LaneStreamingResponse(_text_lines(pool.open_stream(request)), media_type="text/plain")
        return LaneStreamingResponse(_lines(pool.open_stream(request), fmt), media_type=NDJSON)
    return _render(await pool.submit(request), fmt)


def _segment(s: Segment) -> dict[str, Any]:
    return {**asdict(s), "seek": int(s.start * 100)}


def _verbose(result: Transcription) -> dict[str, Any]:
    return {"task": result.task, "language": result.language, "duration": result.duration,
            "text": result.text, "segments": [_segment(s) for s in result.segments]}


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _subtitles(segments: list[Segment], vtt: bool) -> str:
    cues = []
    for n, s in enumerate(segments, 1):
        sep = "." if vtt else ","
        times = f"{_timestamp(s.start, sep)} --> {_timestamp(s.end, sep)}"
        cues.append(f"{times}\n{s.text.strip()}\n" if vtt else f"{n}\n{times}\n{s.text.strip()}\n")
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(cues)


def _render(result: Transcription, fmt: str) -> Response:
    if fmt == "text":
        return Response(result.text + "\n", media_type="text/plain")
    if fmt in ("srt", "vtt"):
        return Response(_subtitles(result.segments, fmt == "vtt"),
                        media_type="text/vtt" if fmt == "vtt" else "text/plain")
    if fmt == "verbose_json":
        return json_response(_verbose(result))
    return json_response({"text": result.text, "duration": result.duration})


async def _lines(chunks: AsyncIterator[Any], fmt: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            if isinstance(chunk, Transcription):
                final = _verbose(chunk) if fmt == "verbose_json" else {"text": chunk.text, "duration": chunk.duration}
                yield orjson.dumps(final) + b"\n"
                return
            if isinstance(chunk, Segment):
                yield orjson.dumps({"chunk_id": chunk.id, "text": chunk.text}) + b"\n"
    except Exception as exc:  # noqa: BLE001 - the status line is gone: report in-band, as a last line
        yield orjson.dumps({"text": "", "error": stream_failure(exc)}) + b"\n"


async def _text_lines(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            if isinstance(chunk, Transcription):
                return
            if isinstance(chunk, Segment):
                yield chunk.text.strip().encode() + b"\n"
    except Exception as exc:  # noqa: BLE001 - the status line is gone: say so on a last line
        yield f"error: {stream_failure(exc)['message']}\n".encode()
