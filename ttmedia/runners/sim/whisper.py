"""Simulated Whisper: segments follow the audio's real voiced regions, text follows its energy.

An energy detector (20 ms frames, adaptive threshold, short gaps bridged, blips dropped) finds
the voiced regions; each becomes a segment with real start/end times. Each ~1 s window of a
segment gets words chosen by a PRNG seeded from a hash of that window's coarse energy contour,
about 2.5 words per second, so the same audio always gives the same transcript and different
audio a different one. Device time is proportional to the audio's duration. The vocabulary is
English, so translation (task "translate") answers in English by construction.
"""

from __future__ import annotations

import time
import hashlib
import random
from collections.abc import AsyncIterator

import numpy as np

from ttmedia.runners.base import Runner, RunnerRequestError, device_time
from ttmedia.runners.sim import tokenizer
from ttmedia.runners.types import Segment, Transcription, TranscriptionRequest

SAMPLE_RATE = 16_000
FRAME_S = 0.02
_BRIDGE_S = 0.3  # pauses shorter than this stay inside a segment (word gaps, stops)
_MIN_VOICED_S = 0.1  # shorter bursts are clicks, not speech
_MAX_SEGMENT_S = 10.0  # Whisper emits segments well under its 30 s window
_WORDS_PER_S = 2.5
_ABS_FLOOR = 0.0005  # RMS below this (-66 dBFS) is silence whatever the recording level; quiet
# recordings (upstream's benchmark clip peaks at -39 dBFS) are speech relative to their own floor


def voiced_regions(samples: np.ndarray, rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """[(start_frame, end_frame)) of voiced audio."""
    hop = int(FRAME_S * rate)
    count = len(samples) // hop
    if count == 0:
        return []
    frames = samples[: count * hop].reshape(count, hop).astype(np.float32)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    floor, peak = np.percentile(rms, 10), np.percentile(rms, 99)
    voiced = (rms >= max(_ABS_FLOOR, floor + 0.25 * (peak - floor))) & (rms > _ABS_FLOOR)
    runs: list[list[int]] = []
    for i in map(int, np.flatnonzero(voiced)):
        if runs and i - runs[-1][1] <= _BRIDGE_S / FRAME_S:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    out: list[tuple[int, int]] = []
    longest = int(_MAX_SEGMENT_S / FRAME_S)
    for start, end in runs:
        if end - start < _MIN_VOICED_S / FRAME_S:
            continue
        for s in range(int(start), int(end), longest):
            out.append((s, min(int(end), s + longest)))
    return out


def _window_words(window: np.ndarray, rate: int, salt: str) -> list[str]:
    """Words for one ≤1 s window, from a hash of its energy contour in 100 ms / 3 dB steps."""
    step = rate // 10
    parts = [window[i:i + step] for i in range(0, len(window), step)]
    contour = bytes(
        max(0, min(255, int(20 * np.log10(float(np.sqrt(np.mean(p * p))) + 1e-6) / 3) + 128)) for p in parts if len(p)
    )
    digest = hashlib.sha256(salt.encode() + contour).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    count = max(1, round(_WORDS_PER_S * len(window) / rate))
    return [rng.choice(tokenizer.WORDS) for _ in range(count)]


def transcribe(samples: np.ndarray, rate: int = SAMPLE_RATE) -> list[Segment]:
    """Segments with times in seconds; tokens from the simulated tokenizer."""
    hop = int(FRAME_S * rate)
    segments = []
    for n, (f0, f1) in enumerate(voiced_regions(samples, rate)):
        chunk = samples[f0 * hop: f1 * hop]
        words: list[str] = []
        for i in range(0, len(chunk), rate):
            words += _window_words(chunk[i:i + rate], rate, f"{n}")
        text = " ".join(words)
        text = " " + text[:1].upper() + text[1:] + "."
        segments.append(Segment(n, round(f0 * FRAME_S, 2), round(f1 * FRAME_S, 2), text, tokenizer.encode(text),
                                temperature=0.0, avg_logprob=-0.25, compression_ratio=1.2, no_speech_prob=0.01))
    return segments


class SimWhisperRunner(Runner):
    """Streams one Segment per voiced region, then the Transcription."""

    family = "audio"
    simulated = True

    async def warmup(self) -> None:
        transcribe(np.zeros(SAMPLE_RATE, np.float32))
        await device_time(self.ctx.timing.warmup_s)

    def canary(self) -> TranscriptionRequest:
        return TranscriptionRequest(np.zeros(SAMPLE_RATE // 10, np.float32), language="en")

    @staticmethod
    def _check(request: TranscriptionRequest) -> np.ndarray:
        samples = request.samples
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise RunnerRequestError("expected mono samples")
        return samples

    @staticmethod
    def _result(request: TranscriptionRequest, samples: np.ndarray, segments: list[Segment]) -> Transcription:
        language = "en" if request.task == "translate" else (request.language or "en")
        return Transcription("".join(s.text for s in segments).strip(), language,
                             round(len(samples) / SAMPLE_RATE, 3), segments, request.task)

    async def run(self, batch: list[TranscriptionRequest]) -> list[Transcription]:
        started = time.monotonic()
        results = []
        audio_s = 0.0
        for request in batch:
            samples = self._check(request)
            audio_s += len(samples) / SAMPLE_RATE
            results.append(self._result(request, samples, transcribe(samples)))
        t = self.ctx.timing
        await device_time(t.base_s + t.per_step_s * audio_s, started)  # per_step_s: one second of audio
        return results

    async def stream(self, request: TranscriptionRequest) -> AsyncIterator[Segment | Transcription]:
        samples = self._check(request)
        segments = transcribe(samples)
        t = self.ctx.timing
        await device_time(t.base_s)
        for segment in segments:
            # Each segment's share of the audio-proportional device time, as it is decoded.
            await device_time(t.per_step_s * (segment.end - segment.start))
            yield segment
        yield self._result(request, samples, segments)
