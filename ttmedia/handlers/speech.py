"""Text to speech (upstream /v1/audio/speech; OpenAI's body accepted)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool
from ttmedia.handlers._uploads import b64decode
from ttmedia.web.responses import json_response
from ttmedia.media.errors import EncoderUnavailable
from ttmedia.runners.types import Speech, SpeechRequest, TTS

MAX_CHARS = 20_000


def _speaker(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(speaker_id to report, voice key for the synthesiser)."""
    speaker_id = body.get("speaker_id") or body.get("voice")
    if speaker_id:
        return speaker_id, speaker_id
    embedding = body.get("speaker_embedding")
    if embedding:
        # The embedding picks the voice: equal embeddings, equal voice.
        return None, "embedding:" + hashlib.sha256(b64decode(embedding, "speaker_embedding")).hexdigest()[:16]
    return None, None


#: Unicode's White_Space characters: what the spec's `pattern: '\\S'` excludes. Python's
#: str.strip() would also strip the control separators U+001C..U+001F, which are not blank.
UNICODE_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + \
    "\u2028\u2029\u202f\u205f\u3000"


async def create_speech(body: dict[str, Any]) -> Response:
    pool = choose_pool(TTS, body.get("model"))
    text = body.get("text") if body.get("text") is not None else body.get("input")
    if not isinstance(text, str) or not text.strip(UNICODE_WHITE_SPACE):
        raise problems.InvalidRequest("'text' (or 'input') must contain something to say.")
    if len(text) > MAX_CHARS:
        raise problems.InvalidRequest(f"'text' has {len(text)} characters; the limit is {MAX_CHARS}.")
    fmt = str(body.get("response_format") or "wav").lower()
    speaker_id, voice = _speaker(body)
    result: Speech = await pool.submit(SpeechRequest(text, voice, float(body.get("speed") or 1.0)))
    samples, rate = result.samples, int(result.sample_rate)
    from ttmedia.media import audio

    if fmt in ("json", "verbose_json"):
        wav = await asyncio.to_thread(audio.encode_wav, samples, rate)
        return json_response({"audio": base64.b64encode(wav).decode("ascii"),
                              "duration": round(audio.duration_seconds(samples, rate), 3),
                              "sample_rate": rate, "format": "wav", "speaker_id": speaker_id})
    try:
        data, content_type = await asyncio.to_thread(audio.encode_audio, samples, rate, fmt)
    except EncoderUnavailable as exc:
        # Upstream silently sent WAV instead; a client that asked for MP3 must know it did not get it.
        raise problems.Internal(f"Cannot encode {fmt} on this server: {exc}") from None
    return Response(data, media_type=content_type,
                    headers={"Content-Disposition": f"attachment; filename=speech.{fmt}"})
