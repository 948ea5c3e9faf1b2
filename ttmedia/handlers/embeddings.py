"""OpenAI-compatible embeddings."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool
from ttmedia.web.responses import json_response
from ttmedia.runners.types import EMBEDDING, EmbeddingRequest, EmbeddingResult, Tokenizer

#: bge-m3's context; a model can declare its own with the `max_model_length` option.
DEFAULT_MAX_TOKENS = 8192
#: Inputs whose tokenization runs in a thread rather than on the event loop.
TOKENIZE_INLINE_CHARS = 20_000


def _inputs(value: Any, tok: Tokenizer | None) -> tuple[list[str], list[int]]:
    """Texts and their token counts; token-id inputs are decoded (422 if outside the vocabulary).
    Without a tokenizer, a text counts its words."""
    if isinstance(value, str) or all(isinstance(v, int) for v in value):
        value = [value]  # one text, or one token-id list
    texts, counts = [], []
    for i, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
            counts.append(len(tok.encode(item)) if tok is not None else len(item.split()))
            continue
        if tok is None:
            raise problems.InvalidRequest(f"input[{i}]: this model takes text, not token ids.")
        if any(t >= tok.vocab_size for t in item):
            raise problems.InvalidRequest(f"input[{i}]: token ids must be below the vocabulary size ({tok.vocab_size}).")
        try:
            texts.append(tok.decode(item))
        except (ValueError, IndexError, OverflowError, TypeError) as exc:
            raise problems.InvalidRequest(f"input[{i}]: {exc}") from None
        counts.append(len(item))
    return texts, counts


async def create_embedding(body: dict[str, Any]) -> Response:
    pool = choose_pool(EMBEDDING, body.get("model"))
    options = pool.model.info.options
    size = int(options.get("dimensions", 1024))
    dimensions = body.get("dimensions") or size
    if dimensions > size:
        raise problems.InvalidRequest(f"{pool.name} embeddings have at most {size} dimensions (got {dimensions}).")
    tok = await pool.maybe_tokenizer()
    raw = body["input"]
    if isinstance(raw, list) and sum(len(x) for x in raw if isinstance(x, str)) > TOKENIZE_INLINE_CHARS:
        texts, counts = await asyncio.to_thread(_inputs, raw, tok)  # a large request must not stall the loop
    else:
        texts, counts = _inputs(raw, tok)
    limit = int(options.get("max_model_length") or (tok.max_model_length if tok else None) or DEFAULT_MAX_TOKENS)
    for i, count in enumerate(counts):
        if count > limit:
            raise problems.ContextLengthExceeded(
                f"input[{i}] has {count} tokens; {pool.name} takes at most {limit}.")
    # One request for all inputs: the runner embeds them in one call, with other requests'
    # inputs when the model batches.
    result: EmbeddingResult = await pool.submit(EmbeddingRequest(texts, dimensions if dimensions != size else None))
    import numpy as np  # here, not at the top: importing it costs 60 ms of server start-up

    vectors = np.asarray(result.embeddings, dtype="<f4")
    if body.get("encoding_format") == "base64":
        data = [{"object": "embedding", "embedding": base64.b64encode(v.tobytes()).decode("ascii"), "index": i}
                for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors.tolist())]
    total = sum(counts)
    return json_response({"object": "list", "data": data, "model": pool.name,
                          "usage": {"prompt_tokens": total, "total_tokens": total}})
