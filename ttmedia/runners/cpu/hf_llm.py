"""Any Hugging Face causal language model, through transformers on the CPU build of torch.

`MODELS="hf-causal-lm~model_path=/models/qwen"`: the directory holds the model (config.json and
weights) and its tokenizer with a chat template, as `save_pretrained` writes them. Nothing
downloads: the Hugging Face libraries run offline and load only from that directory.

Options:

* `model_path` (required): the model directory.
* `threads` (default 1): torch intra-op threads (0: every core this process may use). One, for
  the reason given in ttmedia.runners.cpu.sentence: torch's spinning pool takes the core the
  HTTP process needs; raise it where cores are spare.
* `dtype` (default "float32"; "bfloat16" halves memory, but is slower on most CPUs).
* `chat_template`: a Jinja file (or the template itself) that replaces the directory's own,
  for models that ship none.
* `max_model_length`: the context length, when neither config.json nor the tokenizer says.
* `token_log`: a file that gets one line per generated token ("<stream> <index> <token id>
  <unix time>"), written and flushed as the token is made, and one "<stream> end <how> <unix
  time>" as the stream ends: "stop" or "length" (its finish reason), "cancelled" (it saw the
  call's cancellation) or "closed" (its caller closed it). How tests prove that a disconnect
  stops generation.

Decoding is our own loop over the model's forward pass with a KV cache, not `generate()`, so
that each token leaves the runner the moment it exists and nothing is computed that nobody
will read: `stream()` is a generator that makes the next token only when asked for it, and
first checks `self.cancelled()`. When a client goes, the worker stops asking (or the check
sees it), so at most the one token already in flight is computed after a disconnect.

Sampling: temperature 0 is greedy. A temperature or top_p of None takes the model's own
default from its generation_config.json (sampling with its temperature, top_p and top_k when
it sets `do_sample`), as `model.generate()` and vLLM do; a directory without one decodes
greedily, which is also transformers' default. A seed makes sampling reproducible (the same
seed, prompt and parameters give the same tokens); without one each request draws a fresh seed.

Text: tokens are detokenised incrementally over a sliding window of ids, and text that ends
in an incomplete UTF-8 character (a byte-level token that holds half of "é" or of an emoji) is
held back until the character is whole, so no chunk ever carries a broken character. Text
that could be the start of a stop sequence is held back too; a stop sequence ends the
completion (finish_reason "stop") and is not part of the text. The model's end-of-sequence
token ends it as well and counts as a completion token (the model computed it; vLLM counts it
too), but is never in the text or in any chunk's token_ids.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError
from ttmedia.runners.cpu._support import (cpu_threads, go_offline, quiet_transformers, require_module,
                                          set_torch_threads)
from ttmedia.runners.types import Completion, LLMRequest, TokenChunk

if TYPE_CHECKING:
    import torch

_HUGE = 1 << 40  # transformers' "no limit" model_max_length is about 1e30
_DTYPES = ("float32", "bfloat16", "float16")


def _model_dir(ctx: RunnerContext) -> Path:
    path = ctx.option("model_path")
    if not path:
        raise RuntimeError("hf-causal-lm needs a model directory: MODELS=\"hf-causal-lm~model_path=/path/to/model\"")
    directory = Path(str(path)).expanduser()
    if not (directory / "config.json").is_file():
        raise RuntimeError(f"model_path {str(directory)!r} is not a Hugging Face model directory (no config.json)")
    return directory


def _chat_template(ctx: RunnerContext) -> str | None:
    value = ctx.option("chat_template")
    if not value:
        return None
    text = str(value)
    if "{" not in text and Path(text).expanduser().is_file():
        return Path(text).expanduser().read_text()
    return text


def _context_length(directory: Path, tokenizer: Any, override: Any) -> int | None:
    if override:
        return int(override)
    import json

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    text_config = config.get("text_config") or {}
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        value = config.get(key, text_config.get(key))
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _HUGE else None


def _flatten(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text-only content parts as one string: most chat templates expect a string."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            message = {**message, "content": "".join(str(p.get("text", "")) for p in content)}
        out.append(message)
    return out


class HFTokenizer:
    """types.Tokenizer on a model directory's own tokenizer and chat template (AutoTokenizer)."""

    def __init__(self, directory: Path, chat_template: str | None = None, max_model_length: Any = None) -> None:
        go_offline()
        from transformers import AutoTokenizer

        quiet_transformers()
        self.hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        if chat_template:
            self.hf.chat_template = chat_template
        self.vocab_size: int = len(self.hf)
        self.max_model_length: int | None = _context_length(directory, self.hf, max_model_length)
        bos = self.hf.bos_token
        self._bos_text: str | None = bos if isinstance(bos, str) and bos else None
        self.eos_ids: set[int] = set()
        if self.hf.eos_token_id is not None:
            self.eos_ids.add(int(self.hf.eos_token_id))

    def encode(self, text: str) -> list[int]:
        # A chat-templated prompt already starts with the BOS token (as text); a raw completion
        # prompt gets it from the tokenizer, as the model was trained. The Tokenizer protocol
        # has one encode() for both, so the text itself says which it is.
        add_special = not (self._bos_text and text.startswith(self._bos_text))
        return list(self.hf.encode(text, add_special_tokens=add_special))

    def decode(self, token_ids: list[int]) -> str:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return str(self.hf.decode(token_ids, skip_special_tokens=False))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [str(t) for t in self.hf.convert_ids_to_tokens(token_ids)]

    def apply_chat_template(self, messages: list[dict[str, Any]], *, continue_final_message: bool) -> str:
        if not self.hf.chat_template:
            raise ValueError("this model has no chat template (use /v1/completions, or give the model a "
                             "`chat_template` option)")
        return str(self.hf.apply_chat_template(_flatten(messages), tokenize=False,
                                               add_generation_prompt=not continue_final_message,
                                               continue_final_message=continue_final_message))


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence, never splitting a UTF-8 character.

    Decodes a window from `prefix` (a few tokens back, for tokenizers whose decoding of a
    token depends on what precedes it, such as SentencePiece's leading spaces) and emits what
    the newest tokens add to it, once the text no longer ends in U+FFFD (half a character)."""

    def __init__(self, tokenizer: Any, context_ids: list[int]) -> None:
        self.tok = tokenizer
        self.ids = list(context_ids[-6:])
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held (at the end: a lone replacement character is what the model made)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


class StopMatcher:
    """Releases text as it becomes safe: never a stop sequence, nor a prefix that may become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""  # everything decoded so far
        self.sent = 0  # how much of it has been released

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text now safe to send, whether a stop sequence was found)."""
        self.text += delta
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.sent:cut] if cut > self.sent else ""
            self.sent = max(self.sent, cut)
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text) - self.sent), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        end = len(self.text) - hold
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out, False

    def rest(self) -> str:
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out


@dataclass
class Sampling:
    temperature: float  # 0: greedy
    top_p: float
    top_k: int  # 0: off
    seed: int


class HFCausalLMRunner(Runner):
    family = "llm"
    requires = ("torch", "transformers", "tokenizers")

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.max_concurrency = int(ctx.option("max_concurrency", 1))
        self.threads = cpu_threads(ctx.option("threads"), default=1)
        self.dtype = str(ctx.option("dtype", "float32"))
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {self.dtype!r}")
        self.model: Any = None
        self.tokenizer: HFTokenizer | None = None
        self.defaults: dict[str, Any] = {}
        #: Tokens this runner has computed (all streams): what tests watch after a disconnect.
        self.tokens_generated = 0
        self._log_path = ctx.option("token_log")
        self._log_lock = threading.Lock()
        self._streams = 0

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> HFTokenizer:
        require_module("transformers", "transformers", "hf-causal-lm")
        return HFTokenizer(_model_dir(ctx), _chat_template(ctx), ctx.option("max_model_length"))

    def warmup(self) -> None:
        go_offline()
        require_module("torch", "torch", "hf-causal-lm")
        require_module("transformers", "transformers", "hf-causal-lm")
        directory = _model_dir(self.ctx)
        set_torch_threads(self.threads)
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.tokenizer = self.load_tokenizer(self.ctx)
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                          dtype=getattr(torch, self.dtype))
        self.model.eval()
        eos = self.model.config.eos_token_id
        try:
            generation = GenerationConfig.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError):  # no (or no readable) generation_config.json
            generation = None
        if generation is not None:
            eos = generation.eos_token_id if generation.eos_token_id is not None else eos
            if generation.do_sample:
                self.defaults = {"temperature": float(generation.temperature or 1.0),
                                 "top_p": float(generation.top_p or 1.0), "top_k": int(generation.top_k or 0)}
        self.eos_ids = set(self.tokenizer.eos_ids)
        self.eos_ids.update([eos] if isinstance(eos, int) else list(eos or []))
        self.context = self.tokenizer.max_model_length or int(getattr(self.model.config, "max_position_embeddings", 0)
                                                               or 2048)
        self.run([self.canary()])

    def canary(self) -> LLMRequest:
        ids = [self.tokenizer.hf.bos_token_id or 0] if self.tokenizer else [0]
        return LLMRequest(prompt="", prompt_token_ids=ids, max_tokens=1, temperature=0.0)

    def close(self) -> None:
        self.model = None

    # --- calls ---------------------------------------------------------------------------------

    def run(self, batch: list[LLMRequest]) -> list[Completion]:
        results = []
        for request in batch:
            text, final = [], None
            for item in self._generate(request):
                if isinstance(item, TokenChunk):
                    text.append(item.text)
                else:
                    final = item
            assert final is not None
            results.append(Completion("".join(text), final.completion_tokens, final.finish_reason))
        return results

    def stream(self, request: LLMRequest) -> Iterator[TokenChunk | Completion]:
        # A generator function itself (not a function returning one), so that a harness that
        # asks inspect.isgeneratorfunction() sees what it is.
        yield from self._generate(request)

    def _sampling(self, request: LLMRequest) -> Sampling:
        temperature = request.temperature if request.temperature is not None else self.defaults.get("temperature", 0.0)
        top_p = request.top_p if request.top_p is not None else self.defaults.get("top_p", 1.0)
        if temperature < 0:
            raise RunnerRequestError(f"temperature must be at least 0, not {temperature}")
        if not 0 < top_p <= 1:
            raise RunnerRequestError(f"top_p must be in (0, 1], not {top_p}")
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        return Sampling(float(temperature), float(top_p), int(self.defaults.get("top_k", 0)), int(seed))

    def _generate(self, request: LLMRequest) -> Iterator[TokenChunk | Completion]:
        import torch

        assert self.model is not None and self.tokenizer is not None, "warmup() first"
        prompt = list(request.prompt_token_ids) or self.tokenizer.encode(request.prompt)
        if not prompt:
            bos = self.tokenizer.hf.bos_token_id
            if bos is None:
                raise RunnerRequestError("the prompt is empty and this model has no BOS token to start from")
            prompt = [int(bos)]
        if len(prompt) >= self.context:
            raise RunnerRequestError(f"the prompt has {len(prompt)} tokens; this model's context is {self.context}")
        if request.max_tokens < 1:
            raise RunnerRequestError(f"max_tokens must be at least 1, not {request.max_tokens}")
        sampling = self._sampling(request)
        generator = torch.Generator().manual_seed(sampling.seed)
        budget = min(request.max_tokens, self.context - len(prompt))
        detok = IncrementalDetokenizer(self.tokenizer.hf, prompt)
        stops = StopMatcher(list(request.stop))
        self._streams += 1
        stream_id = self._streams
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        pending: list[int] = []  # ids of text not yet released
        count = token = 0
        finish = "length"
        stopped = False
        ended = "closed"  # what the log says if the caller closes the generator mid-stream
        try:
            with torch.inference_mode():
                logits = self._forward(torch.tensor([prompt]), cache)
                while count < budget:
                    if count:
                        # The next token is computed only when the caller asks for it, and not at
                        # all once the client has gone.
                        if self.cancelled():
                            ended = "cancelled"
                            break
                        logits = self._forward(torch.tensor([[token]]), cache)
                    token = self._sample(logits, sampling, generator)
                    count += 1
                    self._note(stream_id, count, token)
                    if token in self.eos_ids:
                        finish = "stop"
                        break
                    pending.append(token)
                    text, stopped = stops.feed(detok.push(token))
                    if text:
                        yield TokenChunk(text, pending)
                        pending = []
                    if stopped:
                        finish = "stop"
                        break
            if not stopped:
                # The end: release what was held (half a character, a stop sequence's beginning).
                tail, stopped = stops.feed(detok.flush())
                if stopped:
                    finish = "stop"
                else:
                    tail += stops.rest()
                if tail:
                    yield TokenChunk(tail, pending)
            if ended != "cancelled":
                ended = finish
            yield Completion("", count, finish)  # type: ignore[arg-type]
        finally:
            self._log(f"{stream_id} end {ended}")

    def _forward(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float()

    @staticmethod
    def _sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
        import torch

        if s.temperature == 0:
            return int(torch.argmax(logits))
        scores = logits / s.temperature
        if s.top_k and s.top_k < scores.numel():
            kth = torch.topk(scores, s.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest set whose mass reaches top_p (the first token always stays).
            outside = torch.cumsum(sorted_probs, 0) - sorted_probs >= s.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _note(self, stream_id: int, index: int, token: int) -> None:
        self.tokens_generated += 1
        self._log(f"{stream_id} {index} {token}")

    def _log(self, record: str) -> None:
        if self._log_path:
            with self._log_lock, open(str(self._log_path), "a") as log:
                log.write(f"{record} {time.time():.6f}\n")
