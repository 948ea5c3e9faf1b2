"""Simulated ImageNet classifier (ResNet-50-like): real labels, deterministic scores from pixels.

The "network" is a fixed random linear layer over a small hand-made feature vector (an 8×8
average-hash of the luminance, a hue histogram and colour moments), followed by a softmax with
a temperature chosen so that the top-1 class is usually confident, as a trained ResNet's is.
Same pixels → same scores; similar pictures → similar scores. Labels are the 1000 standard
ImageNet-1k classes, shipped as package data (imagenet_classes.txt, index = class id).
"""

from __future__ import annotations

import time
from functools import lru_cache
from importlib import resources

import numpy as np

from ttmedia.runners.base import Runner, RunnerRequestError, device_time
from ttmedia.runners.types import Classification, ClassifyRequest

INPUT_SIZE = 224
_HASH_SIDE = 8
_HUE_BINS = 12
_FEATURES = _HASH_SIDE * _HASH_SIDE + _HUE_BINS + 6
#: Softmax sharpness: with unit vectors the best cosine is ~3.5σ above the rest (σ≈1/√F).
_TEMPERATURE = 0.014


@lru_cache(maxsize=1)
def labels() -> tuple[str, ...]:
    text = resources.files("ttmedia.runners.sim").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} classes, expected 1000")
    return names


@lru_cache(maxsize=1)
def _weights() -> np.ndarray:
    w = np.random.default_rng(50).standard_normal((1000, _FEATURES)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def image_features(pixels: np.ndarray) -> np.ndarray:
    """A unit vector describing an HxWx3 uint8 image."""
    from PIL import Image

    rgb = pixels.astype(np.float32) / 255.0
    small = np.asarray(Image.fromarray(pixels).convert("L").resize((_HASH_SIDE, _HASH_SIDE),
                                                                     Image.Resampling.BOX), np.float32)
    bits = np.where(small.reshape(-1) > small.mean(), 1.0, -1.0)
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), np.float32) / 255.0
    saturated = hsv[..., 1].reshape(-1) > 0.15  # grey pixels have no meaningful hue
    hues = hsv[..., 0].reshape(-1)[saturated]
    hist = np.histogram(hues, bins=_HUE_BINS, range=(0.0, 1.0))[0].astype(np.float32)
    hist = hist / max(1.0, float(hues.size)) * 4.0
    moments = np.concatenate([rgb.mean(axis=(0, 1)) * 2 - 1, rgb.std(axis=(0, 1)) * 4])
    vec = np.concatenate([bits * 0.5, hist, moments]).astype(np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def classify(pixels: np.ndarray) -> np.ndarray:
    """Class probabilities (1000, summing to 1)."""
    logits = _weights() @ image_features(pixels) / _TEMPERATURE
    logits -= logits.max()
    probs = np.exp(logits)
    return probs / probs.sum()


class SimCNNRunner(Runner):
    family = "cnn"
    simulated = True

    async def warmup(self) -> None:
        labels()
        classify(np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
        await device_time(self.ctx.timing.warmup_s)

    def canary(self) -> ClassifyRequest:
        return ClassifyRequest(np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8), top_k=1)

    def _one(self, request: ClassifyRequest) -> Classification:
        pixels = request.pixels
        if not (isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[2] == 3):
            raise RunnerRequestError("expected an HxWx3 image")
        probs = classify(pixels)
        top = np.argsort(-probs, kind="stable")[: max(1, request.top_k)]
        names = labels()
        return Classification([int(i) for i in top], [names[i] for i in top], [float(probs[i]) for i in top])

    async def run(self, batch: list[ClassifyRequest]) -> list[Classification]:
        started = time.monotonic()
        results = [self._one(r) for r in batch]
        t = self.ctx.timing
        await device_time(t.base_s + t.per_item_s * len(batch), started)
        return results
