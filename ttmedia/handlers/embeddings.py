"""OpenAI-compatible embeddings."""

from __future__ import annotations

import base64
from typing import Any

from starlette.responses import Response

from ttmedia import problems
from ttmedia.http import json_response
from ttmedia.runners.sim import tokenizer
from ttmedia.runtime import current

#: bge-m3's context; a model can declare its own with the `max_model_length` option.
DEFAULT_MAX_TOKENS = 8192


def _inputs(value: Any) -> tuple[list[str], list[int]]:
    """Texts and their token counts; token-id inputs are decoded (422 if outside the vocabulary)."""
    if isinstance(value, str) or all(isinstance(v, int) for v in value):
        value = [value]  # one text, or one token-id list
    texts, counts = [], []
    try:
        for item in value:
            if isinstance(item, str):
                texts.append(item)
                counts.append(len(tokenizer.encode(item)))
            else:
                texts.append(tokenizer.decode(item))
                counts.append(len(item))
    except ValueError as exc:
        raise problems.InvalidRequest(f"input: {exc}") from None
    return texts, counts


async def create_embedding(body: dict[str, Any]) -> Response:
    pool = current().scheduler.pool("embedding", body.get("model"))
    options = pool.model.info.options
    size = int(options.get("dimensions", 1024))
    dimensions = body.get("dimensions") or size
    if dimensions > size:
        raise problems.InvalidRequest(f"{pool.name} embeddings have at most {size} dimensions (got {dimensions}).")
    texts, counts = _inputs(body["input"])
    limit = int(options.get("max_model_length", DEFAULT_MAX_TOKENS))
    for i, count in enumerate(counts):
        if count > limit:
            raise problems.InvalidRequest(f"input[{i}] has {count} tokens; {pool.name} takes at most {limit}.")
    # One payload for all inputs: the device embeds them as one batch.
    result = await pool.submit({"inputs": texts, "dimensions": dimensions})
    import numpy as np  # here, not at the top: importing it costs 60 ms of server start-up

    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, vector in enumerate(result["embeddings"]):
        values = np.asarray(vector, dtype="<f4")
        embedding: Any = base64.b64encode(values.tobytes()).decode("ascii") if as_base64 else values.tolist()
        data.append({"object": "embedding", "embedding": embedding, "index": i})
    total = sum(counts)
    return json_response({"object": "list", "data": data, "model": pool.name,
                          "usage": {"prompt_tokens": total, "total_tokens": total}})
