"""Simulated text-embedding model (BGE-M3-like): deterministic, unit-norm, similarity-preserving.

A text's vector is a random projection of its bag of features (lower-cased words and their
character trigrams): every feature owns a fixed pseudo-random Gaussian direction seeded by its
hash, and the text's vector is the normalised sum. Texts that share words therefore point in
similar directions, and because each direction is i.i.d. per coordinate, any prefix of the
vector is itself a random projection — so `dimensions=d` is the first d coordinates,
renormalised (Matryoshka-style shortening, as OpenAI's `dimensions` behaves).
"""

from __future__ import annotations

import hashlib
import re
import time
from functools import lru_cache

import numpy as np

from ttmedia.runners.base import Runner, RunnerContext, device_time
from ttmedia.runners.sim.tokenizer import SimTokenizer
from ttmedia.runners.types import EmbeddingRequest, EmbeddingResult

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: Whole words weigh more than their trigrams: sharing a word matters more than sharing letters.
_WORD_WEIGHT = 2.0
_TRIGRAM_WEIGHT = 0.5


def features(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for word in _WORD.findall(text.lower()):
        out["w:" + word] = out.get("w:" + word, 0.0) + _WORD_WEIGHT
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            key = "t:" + padded[i:i + 3]
            out[key] = out.get(key, 0.0) + _TRIGRAM_WEIGHT
    return out or {"<empty>": 1.0}  # an empty or symbol-only text still gets a unit vector


@lru_cache(maxsize=65536)
def _direction(feature: str, size: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def embed(text: str, size: int, dimensions: int | None = None) -> np.ndarray:
    """Unit-norm float32 vector of `dimensions` (default `size`) coordinates."""
    vector = np.zeros(size, np.float32)
    for feature, weight in features(text).items():
        vector += np.float32(weight) * _direction(feature, size)
    vector = vector[: dimensions or size]
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else np.full_like(vector, 1.0 / np.sqrt(vector.size))


class SimEmbeddingRunner(Runner):
    family = "embedding"
    simulated = True

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.size = int(ctx.options.get("dimensions", 1024))

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> SimTokenizer:
        return SimTokenizer(int(ctx.options.get("max_model_length", 8192)))

    async def warmup(self) -> None:
        started = time.monotonic()
        embed("warmup", self.size)
        await device_time(self.ctx.timing.warmup_s, started)

    def canary(self) -> EmbeddingRequest:
        return EmbeddingRequest(["canary"])

    async def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        started = time.monotonic()
        results = [
            EmbeddingResult(np.stack([embed(text, self.size, r.dimensions) for text in r.inputs])
                            if r.inputs else np.zeros((0, r.dimensions or self.size), np.float32))
            for r in batch
        ]
        t = self.ctx.timing
        items = sum(len(r.inputs) for r in batch)
        await device_time(t.base_s + t.per_item_s * items, started)
        return results
