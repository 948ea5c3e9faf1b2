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
from typing import Any

import numpy as np

from ttmedia.runners.base import Runner, RunnerRequestError, device_time
from ttmedia.runners.sim import tokenizer

SAMPLE_RATE = 16_000
FRAME_S = 0.02
_BRIDGE_S = 0.3  # pauses shorter than this stay inside a segment (word gaps, stops)
_MIN_VOICED_S = 0.1  # shorter bursts are clicks, not speech
_MAX_SEGMENT_S = 10.0  # Whisper emits segments well under its 30 s window
_WORDS_PER_S = 2.5
_ABS_FLOOR = 0.01  # RMS below this is silence whatever the recording level


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
    for i in np.flatnonzero(voiced):
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


def transcribe(samples: np.ndarray, rate: int = SAMPLE_RATE) -> list[dict[str, Any]]:
    """Segments: {id, start, end, text} with times in seconds."""
    hop = int(FRAME_S * rate)
    segments = []
    for n, (f0, f1) in enumerate(voiced_regions(samples, rate)):
        chunk = samples[f0 * hop: f1 * hop]
        words: list[str] = []
        for i in range(0, len(chunk), rate):
            words += _window_words(chunk[i:i + rate], rate, f"{n}")
        text = " ".join(words)
        segments.append({"id": n, "start": round(f0 * FRAME_S, 2), "end": round(f1 * FRAME_S, 2),
                         "text": " " + text[:1].upper() + text[1:] + "."})
    return segments


class SimWhisperRunner(Runner):
    """Payload: {"samples": float32 ndarray at 16 kHz, "task", "language"}; streams one chunk per segment."""

    async def warmup(self) -> None:
        transcribe(np.zeros(SAMPLE_RATE, np.float32))
        await device_time(self.ctx.timing.warmup_s)

    @staticmethod
    def _check(request: dict[str, Any]) -> np.ndarray:
        samples = request.get("samples")
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise RunnerRequestError("expected mono samples")
        return samples

    def _result(self, request: dict[str, Any], samples: np.ndarray, segments: list[dict[str, Any]]) -> dict[str, Any]:
        task = request.get("task") or "transcribe"
        language = "en" if task == "translate" else (request.get("language") or "en")
        return {
            "task": task, "language": language, "duration": round(len(samples) / SAMPLE_RATE, 3),
            "text": "".join(s["text"] for s in segments).strip(), "segments": segments,
        }

    async def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
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

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        samples = self._check(request)
        segments = transcribe(samples)
        t = self.ctx.timing
        await device_time(t.base_s)
        for segment in segments:
            await device_time(t.per_step_s * (segment["end"] - segment["start"]))
            yield {"chunk_id": segment["id"], "text": segment["text"]}
        yield {"final": True, **self._result(request, samples, segments)}
