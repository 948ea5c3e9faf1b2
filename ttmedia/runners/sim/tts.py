"""Simulated text-to-speech (SpeechT5-like): deterministic speech-like audio, cost ∝ characters.

The runner returns raw float32 samples; the handler encodes them (WAV/MP3/OGG) so that an
encoder failure is reported as the HTTP problem it is, not as a runner crash.
"""

from __future__ import annotations

import time
from typing import Any

from ttmedia.runners.base import Runner, device_time

SAMPLE_RATE = 16_000


class SimTTSRunner(Runner):
    """Payload: {"text": str, "speaker": str|None}. Result: {"samples": float32 ndarray, "sample_rate"}."""

    async def warmup(self) -> None:
        from ttmedia.media import audio

        audio.synthesize_speech("warm up", SAMPLE_RATE)
        await device_time(self.ctx.timing.warmup_s)

    async def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from ttmedia.media import audio

        started = time.monotonic()
        results = [
            {"samples": audio.synthesize_speech(r["text"], SAMPLE_RATE, r.get("speaker")), "sample_rate": SAMPLE_RATE}
            for r in batch
        ]
        t = self.ctx.timing
        # The decoder is autoregressive over spectrogram frames, roughly one per character.
        await device_time(t.base_s + t.per_token_s * max(len(r["text"]) for r in batch), started)
        return results
