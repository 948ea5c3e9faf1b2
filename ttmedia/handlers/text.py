"""OpenAI-compatible text and chat completions, and tokenization with the model's own tokenizer."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool, stream_failure
from ttmedia.web.responses import SSE_DONE, SSE_SLOT, json_response, sse_event, sse_events_like, sse_response
from ttmedia.runners.types import Completion, LLM, LLMRequest, TokenChunk, Tokenizer
from ttmedia.scheduler.pool import ModelPool

#: Upstream's chat default when neither max_tokens nor max_completion_tokens is given.
CHAT_DEFAULT_MAX_TOKENS = 2048
#: The context of an LLM whose tokenizer and options say nothing about it.
DEFAULT_CONTEXT = 4096


def _prompts(tok: Tokenizer, prompt: Any) -> list[tuple[str, list[int]]]:
    """The request's prompt(s) as (text, token ids) in the model's tokenizer."""
    if isinstance(prompt, str):
        return [(prompt, tok.encode(prompt))]
    if prompt and all(isinstance(p, str) for p in prompt):
        return [(p, tok.encode(p)) for p in prompt]
    batches = [prompt] if prompt and all(isinstance(p, int) for p in prompt) else list(prompt)
    if any(t >= tok.vocab_size for ids in batches for t in ids):
        raise problems.InvalidRequest(f"prompt: token ids must be below the vocabulary size ({tok.vocab_size}).")
    try:
        return [(tok.decode(ids), list(ids)) for ids in batches]
    except (ValueError, IndexError, OverflowError, TypeError) as exc:
        raise problems.InvalidRequest(f"prompt: {exc}") from None


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _context_length(pool: ModelPool, tok: Tokenizer) -> int:
    """The model's context: its option, else what its tokenizer knows, else a common default."""
    option = pool.model.info.options.get("max_model_length")
    return int(option or tok.max_model_length or DEFAULT_CONTEXT)


def _check_context(pool: ModelPool, tok: Tokenizer, prompt_tokens: int, max_tokens: int) -> None:
    limit = _context_length(pool, tok)
    if prompt_tokens + max_tokens > limit:
        raise problems.ContextLengthExceeded(
            f"Prompt length ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds max model length ({limit}).")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    return {"temperature": body.get("temperature"), "top_p": body.get("top_p"), "stop": _stop(body.get("stop"))}


# --- /v1/completions -----------------------------------------------------------------------------

async def create_completion(body: dict[str, Any]) -> Response:
    pool = choose_pool(LLM, body.get("model"))
    tok = await pool.tokenizer()
    prompts = _prompts(tok, body["prompt"])
    max_tokens = body.get("max_tokens") or 16
    for _, ids in prompts:
        _check_context(pool, tok, len(ids), max_tokens)
    seed = body.get("seed")
    completion_id = f"cmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.get("stream"):
        if len(prompts) > 1 or body.get("n", 1) > 1:
            raise problems.InvalidRequest("Streaming supports one prompt and n=1.")
        text, ids = prompts[0]
        chunks = pool.open_stream(LLMRequest(text, ids, max_tokens, seed=seed, **_sampling(body)))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(_completion_events(chunks, completion_id, created, pool.name, len(ids), include_usage))
    n = body.get("n") or 1
    results: list[Completion] = await pool.submit_all([
        LLMRequest(text, ids, max_tokens, seed=None if seed is None and n == 1 else (seed or 0) + k, **_sampling(body))
        for text, ids in prompts for k in range(n)])
    choices = [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
               for i, r in enumerate(results)]
    prompt_tokens = sum(len(ids) for _, ids in prompts) * n
    return json_response({
        "id": completion_id, "object": "text_completion", "created": created, "model": pool.name,
        "choices": choices, "usage": _usage(prompt_tokens, sum(r.completion_tokens for r in results)),
    })


async def _completion_events(chunks: AsyncIterator[Any], completion_id: str, created: int, model: str,
                             prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    token_event = sse_events_like({**base, "choices": [
        {"text": SSE_SLOT, "index": 0, "logprobs": None, "finish_reason": None}]})
    try:
        async for chunk in chunks:
            if isinstance(chunk, Completion):
                yield sse_event({**base, "choices": [
                    {"text": "", "index": 0, "logprobs": None, "finish_reason": chunk.finish_reason}]})
                if include_usage:
                    yield sse_event({**base, "choices": [], "usage": _usage(prompt_tokens, chunk.completion_tokens)})
                continue  # the final chunk ends the stream: the iterator finishes cleanly
            if isinstance(chunk, TokenChunk):
                yield token_event(chunk.text)
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is gone
        yield sse_event({"error": stream_failure(exc)})
        return
    yield SSE_DONE


# --- /v1/chat/completions -----------------------------------------------------------------------

async def create_chat_completion(body: dict[str, Any]) -> Response:
    pool = choose_pool(LLM, body.get("model"))
    tok = await pool.tokenizer()
    messages = body["messages"]
    # A conversation that ends with the assistant's words asks for their continuation.
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    prompt = tok.apply_chat_template(messages, continue_final_message=continuing)
    ids = tok.encode(prompt)
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    # An explicit limit must fit the context; the default shrinks to what is left of it.
    _check_context(pool, tok, len(ids), requested or 1)
    max_tokens = requested or min(CHAT_DEFAULT_MAX_TOKENS, _context_length(pool, tok) - len(ids))
    request = LLMRequest(prompt, ids, max_tokens, seed=body.get("seed"), **_sampling(body))
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.get("stream"):
        return sse_response(_chat_events(pool.open_stream(request), completion_id, created, pool.name, len(ids)))
    result: Completion = await pool.submit(request)
    return json_response({
        "id": completion_id, "object": "chat.completion", "created": created, "model": pool.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason}],
        "usage": _usage(len(ids), result.completion_tokens),
    })


async def _chat_events(chunks: AsyncIterator[Any], completion_id: str, created: int, model: str,
                       prompt_tokens: int) -> AsyncIterator[bytes]:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    token_event = sse_events_like({**base, "choices": [
        {"index": 0, "delta": {"content": SSE_SLOT}, "finish_reason": None}]})
    yield sse_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
    try:
        async for chunk in chunks:
            if isinstance(chunk, Completion):
                yield sse_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}],
                                 "usage": _usage(prompt_tokens, chunk.completion_tokens)})
                continue  # the final chunk ends the stream: the iterator finishes cleanly
            if isinstance(chunk, TokenChunk):
                yield token_event(chunk.text)
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is gone
        yield sse_event({"error": stream_failure(exc)})
        return
    yield SSE_DONE


# --- /v1/tokenize, /v1/detokenize ---------------------------------------------------------------
# No device work: the model's tokenizer runs here. The model must still be a served LLM (404
# otherwise), and these routes carry no readiness gate, so clients can count tokens while the
# model warms.

async def tokenize(body: dict[str, Any]) -> Response:
    pool = choose_pool(LLM, body.get("model"))
    tok = await pool.tokenizer()
    ids = tok.encode(body["prompt"])
    return json_response({
        "count": len(ids),
        "max_model_len": _context_length(pool, tok),
        "tokens": ids,
        "token_strs": tok.token_strings(ids) if body.get("return_token_strs") else None,
    })


async def detokenize(body: dict[str, Any]) -> Response:
    pool = choose_pool(LLM, body.get("model"))
    tok = await pool.tokenizer()
    tokens = body["tokens"]
    if any(t >= tok.vocab_size for t in tokens):
        raise problems.InvalidRequest(f"tokens: ids must be below the vocabulary size ({tok.vocab_size}).")
    try:
        prompt = tok.decode(tokens)
    except (ValueError, IndexError, OverflowError, TypeError) as exc:
        raise problems.InvalidRequest(f"tokens: {exc}") from None
    return json_response({"prompt": prompt})
