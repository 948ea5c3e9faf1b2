"""Runners written the way real model code is: plain synchronous methods that block their thread.

The tests serve them through MODELS (`name=tests.runner_fixtures:Class~family=...`). Each one
reads its behaviour from options, and leaves what it saw in files under `~log_dir`, so the
test can check what happened inside the worker process.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ttmedia.runners.base import DeviceError, Runner, RunnerContext
from ttmedia.runners.types import EmbeddingRequest, EmbeddingResult


def _unit_vectors(texts: list[str], size: int) -> Any:
    import numpy as np

    out = np.zeros((len(texts), size), np.float32)
    for i, text in enumerate(texts):
        out[i, sum(map(ord, text)) % size] = 1.0
    return out


class _Recording(Runner):
    family = "embedding"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.log_dir = Path(str(ctx.option("log_dir", ".")))
        self.size = int(ctx.option("dimensions", 8))

    def record(self, name: str, value: Any) -> None:
        with open(self.log_dir / f"{name}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(value) + "\n")

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        self.record("batches", [len(r.inputs) for r in batch])
        return [EmbeddingResult(_unit_vectors(r.inputs, r.dimensions or self.size)) for r in batch]


class ModelObjectsRunner(_Recording):
    """Holds 50,000 objects from its warmup (as a model's modules do), and reports how many
    objects the worker's collector has frozen when its first batch runs."""

    def warmup(self) -> None:
        self.model_objects = [[i] for i in range(50_000)]  # lists: the collector always tracks them

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        import gc

        self.record("frozen", gc.get_freeze_count())
        return super().run(batch)


class SlowWarmupRunner(_Recording):
    """Loads for `~warmup_s` seconds with its thread blocked, as torch or ttnn code does."""

    def warmup(self) -> None:
        time.sleep(float(self.ctx.option("warmup_s", 3)))
        self.record("warmed", os.getpid())


class HangingRunner(_Recording):
    """Its run() never returns once the file `hang` exists in its log directory."""

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        if (self.log_dir / "hang").exists():
            self.record("hung", os.getpid())
            time.sleep(3600)
        return super().run(batch)


class CanaryRunner(_Recording):
    """Passes its canary until the file `broken` exists; then the canary's call fails."""

    def canary(self) -> EmbeddingRequest:
        return EmbeddingRequest(["canary"])

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        if batch[0].inputs == ["canary"]:
            self.record("canaries", os.getpid())
            if (self.log_dir / "broken").exists():
                raise RuntimeError("the device returned garbage")
        return super().run(batch)


class BrokenDeviceRunner(_Recording):
    """Raises DeviceError for the input "break the device"."""

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        if any("break the device" in r.inputs for r in batch):
            raise DeviceError("the chip stopped answering (simulated)")
        return super().run(batch)


class FixedShapeRunner(_Recording):
    """A traced model: batches of 1, 2 or 4 only, and every request of a batch asks for the same
    number of dimensions."""

    batch_sizes = (1, 2, 4)
    batch_key = ("dimensions",)
    max_batch_size = 8

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        self.record("shapes", [[len(r.inputs), r.dimensions] for r in batch])
        time.sleep(0.05)
        return super().run(batch)


class CountingLLMRunner(Runner):
    """A synchronous token-by-token generator, as a Hugging Face decode loop is: each step runs
    on the device thread, and every token made is counted in `tokens.jsonl`."""

    family = "llm"

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> Any:
        from ttmedia.runners.sim.tokenizer import SimTokenizer

        return SimTokenizer(4096)

    def stream(self, request: Any) -> Any:
        from ttmedia.runners.types import Completion, TokenChunk

        log = Path(str(self.ctx.option("log_dir", "."))) / "tokens.jsonl"
        for i in range(request.max_tokens):
            time.sleep(0.02)
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps([time.time(), i]) + "\n")
            yield TokenChunk(f" t{i}", [300 + i])
        yield Completion("", request.max_tokens, "length")


class ProgressVideoRunner(Runner):
    """A long call with no stream(): run() reports progress, the caller still sees it."""

    family = "video"

    def run(self, batch: list[Any]) -> list[Any]:
        from ttmedia.runners.types import VideoResult

        steps = batch[0].num_inference_steps
        for step in range(1, steps + 1):
            time.sleep(0.01)
            self.progress(100 * step / steps, step=step, total=steps)
        Path(batch[0].output_path).write_bytes(b"not really an mp4")
        return [VideoResult(1, 16, 16, 1, 17)]


class FailingImageRunner(Runner):
    """Every call is recorded in `calls.jsonl`; the request with seed 0 fails after a while, the
    one with seed 1 takes a second."""

    family = "image"

    def run(self, batch: list[Any]) -> list[Any]:
        import numpy as np

        from ttmedia.runners.types import ImageResult

        log = Path(str(self.ctx.option("log_dir", "."))) / "calls.jsonl"
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps([r.seed for r in batch]) + "\n")
        if any(r.seed == 0 for r in batch):
            time.sleep(0.3)
            raise RuntimeError("the sampler diverged")
        if any(r.seed == 1 for r in batch):
            time.sleep(1.0)  # still running when seed 0 fails on another worker
        return [ImageResult(np.zeros((r.height, r.width, 3), np.uint8)) for r in batch]


class StreamBreaksRunner(CountingLLMRunner):
    """Streams three tokens, then fails."""

    def stream(self, request: Any) -> Any:
        from ttmedia.runners.types import TokenChunk

        for i in range(3):
            yield TokenChunk(f" t{i}", [300 + i])
        raise RuntimeError("lost the KV cache")


class StallingLLMRunner(CountingLLMRunner):
    """Four tokens 0.6 s apart, then nothing for ten seconds (until it is cancelled)."""

    def stream(self, request: Any) -> Any:
        from ttmedia.runners.types import TokenChunk

        for i in range(4):
            time.sleep(0.6)
            yield TokenChunk(f" t{i}", [300 + i])
        for _ in range(100):
            if self.cancelled():
                return
            time.sleep(0.1)
