"""Simulated LLM (Qwen3-8B-like): paced token stream, deterministic text, max_tokens honoured.

Text is drawn word by word from the tokenizer's vocabulary with a PRNG seeded from the prompt
and seed, so the same request always yields the same completion. Prefill costs base_s, each
token per_token_s; a batch decodes its requests together, and concurrent streams decode in
lockstep on one step clock (continuous batching). Temperature and top_p do not change the
simulated text.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator

from ttmedia.runners.base import Runner, RunnerContext, device_time
from ttmedia.runners.sim import tokenizer
from ttmedia.runners.types import Completion, LLMRequest, TokenChunk


def _rng(prompt: str, seed: int | None) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_tokens(prompt: str, seed: int | None, max_tokens: int) -> tuple[list[str], str]:
    """Token texts and finish reason ("stop" at the natural end, "length" at max_tokens)."""
    rng = _rng(prompt, seed)
    natural = rng.randint(24, 320)
    words = tokenizer.WORDS
    pieces: list[str] = []
    sentence_start = True
    while len(pieces) < min(natural, max_tokens):
        word = rng.choice(words)
        pieces.append((" " if pieces else "") + (word.capitalize() if sentence_start else word))
        sentence_start = False
        if rng.random() < 0.09 and len(pieces) < min(natural, max_tokens):
            pieces.append(rng.choice(".!?") if rng.random() < 0.8 else ",")
            sentence_start = pieces[-1] != ","
    return pieces, ("length" if max_tokens < natural else "stop")


def apply_stop(pieces: list[str], stop: list[str]) -> tuple[list[str], bool]:
    """Cut the pieces before the first stop string, if any appears."""
    if not stop:
        return pieces, False
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        for s in stop:
            if s and s in text:
                return pieces[:i], True
    return pieces, False


class StepClock:
    """The device's decode clock: step n ends at origin + n·step_s, for every sequence in flight.

    All the streams due at one step wait on one timer, as a TT device's batch decodes together:
    one timer per step instead of one per stream and token. Each waiter has its own future, so a
    cancelled stream cancels only itself.
    """

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.origin = time.monotonic()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def next_step(self) -> int:
        """The first step that ends after now."""
        return math.floor((time.monotonic() - self.origin) / self.step_s) + 1

    async def wait_for(self, step: int) -> None:
        """Return when `step` has ended (at once if it already has)."""
        delay = self.origin + step * self.step_s - time.monotonic()
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiters = self._waiters.get(step)
        if waiters is None:
            self._waiters[step] = waiters = []
            loop.call_later(delay, self._end_step, step)
        waiters.append(future)
        await future

    def _end_step(self, step: int) -> None:
        for future in self._waiters.pop(step, ()):
            if not future.done():
                future.set_result(None)


class SimLLMRunner(Runner):
    family = "llm"
    simulated = True

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.max_concurrency = int(ctx.options.get("max_concurrency", 32))
        self.clock = StepClock(ctx.timing.per_token_s) if ctx.timing.per_token_s > 0 else None

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> tokenizer.SimTokenizer:
        return tokenizer.SimTokenizer(int(ctx.options.get("max_model_length", 4096)))

    async def warmup(self) -> None:
        await device_time(self.ctx.timing.warmup_s)

    def canary(self) -> LLMRequest:
        return LLMRequest("canary", tokenizer.encode("canary"), max_tokens=1)

    @staticmethod
    def _pieces(request: LLMRequest) -> tuple[list[str], str]:
        pieces, finish = generate_tokens(request.prompt, request.seed, request.max_tokens)
        pieces, stopped = apply_stop(pieces, request.stop)
        return pieces, "stop" if stopped else finish

    async def run(self, batch: list[LLMRequest]) -> list[Completion]:
        started = time.monotonic()
        results = []
        for request in batch:
            pieces, finish = self._pieces(request)
            results.append(Completion("".join(pieces), len(pieces), finish))  # type: ignore[arg-type]
        longest = max((r.completion_tokens for r in results), default=0)
        t = self.ctx.timing
        await device_time(t.base_s + t.per_token_s * longest, started)
        return results

    async def stream(self, request: LLMRequest) -> AsyncIterator[TokenChunk | Completion]:
        pieces, finish = self._pieces(request)
        t = self.ctx.timing
        await device_time(t.base_s)
        # Continuous batching: the device runs one decode step every per_token_s for all the
        # sequences in flight, so every stream's tokens fall on one shared clock (the steps
        # since the runner started), not each on its own. Absolute step times also keep
        # scheduling jitter from accumulating.
        clock = self.clock
        first = clock.next_step() if clock is not None else 0
        for i, piece in enumerate(pieces):
            if clock is not None:
                await clock.wait_for(first + i)
            yield TokenChunk(piece, tokenizer.encode(piece))
        yield Completion("", len(pieces), finish)  # type: ignore[arg-type]
