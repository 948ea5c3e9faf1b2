"""Simulated text-to-speech (SpeechT5-like): deterministic speech-like audio, cost ∝ characters.

The runner returns raw float32 samples; the server encodes them (WAV/MP3/OGG) so that an
encoder failure is reported as the HTTP problem it is, not as a runner crash. `speed` shortens
or stretches the clip (as a faster or slower speaker would).
"""

from __future__ import annotations

import time

from ttmedia.runners.base import Runner, device_time
from ttmedia.runners.types import Speech, SpeechRequest

SAMPLE_RATE = 16_000


class SimTTSRunner(Runner):
    family = "tts"
    simulated = True

    async def warmup(self) -> None:
        from ttmedia.media import audio

        audio.synthesize_speech("warm up", SAMPLE_RATE)
        await device_time(self.ctx.timing.warmup_s)

    def canary(self) -> SpeechRequest:
        return SpeechRequest("ok")

    @staticmethod
    def _speak(request: SpeechRequest) -> Speech:
        import numpy as np

        from ttmedia.media import audio

        samples = audio.synthesize_speech(request.text, SAMPLE_RATE, request.voice)
        if request.speed != 1.0 and len(samples) > 1:
            length = max(1, round(len(samples) / request.speed))
            samples = np.interp(np.linspace(0, len(samples) - 1, length), np.arange(len(samples)),
                                samples).astype(np.float32)
        return Speech(samples, SAMPLE_RATE)

    async def run(self, batch: list[SpeechRequest]) -> list[Speech]:
        started = time.monotonic()
        results = [self._speak(r) for r in batch]
        t = self.ctx.timing
        # The decoder is autoregressive over spectrogram frames, roughly one per character.
        await device_time(t.base_s + t.per_token_s * max(len(r.text) for r in batch), started)
        return results
