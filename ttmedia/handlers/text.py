"""OpenAI-compatible text and chat completions."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from ttmedia import problems
from ttmedia.http import SSE_DONE, json_response, sse_event, sse_response
from ttmedia.runners.sim import tokenizer
from ttmedia.runtime import current
from ttmedia.scheduler.pool import ModelPool

#: Upstream's chat default when neither max_tokens nor max_completion_tokens is given.
CHAT_DEFAULT_MAX_TOKENS = 2048


def _prompts(prompt: Any) -> list[str]:
    """The request's prompt(s) as text; token ids are decoded with the model's tokenizer."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    try:
        if prompt and all(isinstance(p, int) for p in prompt):
            return [tokenizer.decode(prompt)]
        return [tokenizer.decode(ids) for ids in prompt]
    except ValueError as exc:
        raise problems.InvalidRequest(str(exc)) from None


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _check_context(pool: ModelPool, prompt: str, max_tokens: int) -> int:
    """Prompt tokens; 422 if prompt + max_tokens exceeds the model's context."""
    limit = int(pool.model.info.options.get("max_model_length", 4096))
    count = len(tokenizer.encode(prompt))
    if count + max_tokens > limit:
        raise problems.InvalidRequest(
            f"Prompt length ({count}) + max_tokens ({max_tokens}) exceeds max model length ({limit})."
        )
    return count


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _error_event(exc: BaseException) -> bytes:
    """A failure after the 200 was sent can only be reported inside the stream."""
    if isinstance(exc, problems.Problem):
        body = {"message": exc.detail, "type": exc.reason, "code": exc.status}
    else:
        body = {"message": "internal error", "type": "internal", "code": 500}
    return sse_event({"error": body})


# --- /v1/completions -----------------------------------------------------------------------------

async def create_completion(body: dict[str, Any]) -> Response:
    pool = current().scheduler.pool("llm", body.get("model"))
    prompts = _prompts(body["prompt"])
    max_tokens = body.get("max_tokens") or 16
    stop = _stop(body.get("stop"))
    prompt_tokens = [_check_context(pool, p, max_tokens) for p in prompts]
    seed = body.get("seed")
    completion_id = f"cmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.get("stream"):
        if len(prompts) > 1 or body.get("n", 1) > 1:
            raise problems.InvalidRequest("Streaming supports one prompt and n=1.")
        chunks = pool.open_stream({"prompt": prompts[0], "max_tokens": max_tokens, "stop": stop, "seed": seed})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(_completion_events(chunks, completion_id, created, pool.name,
                                               prompt_tokens[0], include_usage))
    n = body.get("n") or 1
    jobs = [
        pool.submit({"prompt": p, "max_tokens": max_tokens, "stop": stop,
                     "seed": None if seed is None and n == 1 else (seed or 0) + k})
        for p in prompts for k in range(n)
    ]
    results = await asyncio.gather(*jobs)
    choices = [
        {"text": r["text"], "index": i, "logprobs": None, "finish_reason": r["finish_reason"]}
        for i, r in enumerate(results)
    ]
    completion_tokens = sum(r["completion_tokens"] for r in results)
    return json_response({
        "id": completion_id, "object": "text_completion", "created": created, "model": pool.name,
        "choices": choices, "usage": _usage(sum(prompt_tokens) * n, completion_tokens),
    })


async def _completion_events(chunks: AsyncIterator[dict[str, Any]], completion_id: str, created: int,
                             model: str, prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    try:
        async for chunk in chunks:
            if chunk.get("final"):
                yield sse_event({**base, "choices": [
                    {"text": "", "index": 0, "logprobs": None, "finish_reason": chunk["finish_reason"]}]})
                if include_usage:
                    yield sse_event({**base, "choices": [],
                                     "usage": _usage(prompt_tokens, chunk["completion_tokens"])})
                break
            yield sse_event({**base, "choices": [
                {"text": chunk["text"], "index": 0, "logprobs": None, "finish_reason": None}]})
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is gone
        yield _error_event(exc)
        return
    yield SSE_DONE


# --- /v1/chat/completions -----------------------------------------------------------------------

def _render_chat(messages: list[dict[str, Any]]) -> str:
    """A plain chat template: one block per message, then the assistant's turn (or its prefill)."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text") or "" for p in content if p.get("type") == "text")
        parts.append(f"<|{m['role']}|>\n{content or ''}\n")
    if not messages or messages[-1]["role"] != "assistant":
        parts.append("<|assistant|>\n")
    return "".join(parts)


async def create_chat_completion(body: dict[str, Any]) -> Response:
    pool = current().scheduler.pool("llm", body.get("model"))
    prompt = _render_chat(body["messages"])
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    # An explicit limit must fit the context; the default shrinks to what is left of it.
    prompt_tokens = _check_context(pool, prompt, requested or 1)
    limit = int(pool.model.info.options.get("max_model_length", 4096))
    max_tokens = requested or min(CHAT_DEFAULT_MAX_TOKENS, limit - prompt_tokens)
    request = {"prompt": prompt, "max_tokens": max_tokens, "stop": _stop(body.get("stop")), "seed": body.get("seed")}
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.get("stream"):
        chunks = pool.open_stream(request)
        return sse_response(_chat_events(chunks, completion_id, created, pool.name, prompt_tokens))
    result = await pool.submit(request)
    return json_response({
        "id": completion_id, "object": "chat.completion", "created": created, "model": pool.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                     "finish_reason": result["finish_reason"]}],
        "usage": _usage(prompt_tokens, result["completion_tokens"]),
    })


async def _chat_events(chunks: AsyncIterator[dict[str, Any]], completion_id: str, created: int,
                       model: str, prompt_tokens: int) -> AsyncIterator[bytes]:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    yield sse_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
    try:
        async for chunk in chunks:
            if chunk.get("final"):
                yield sse_event({**base, "choices": [{"index": 0, "delta": {},
                                                      "finish_reason": chunk["finish_reason"]}],
                                 "usage": _usage(prompt_tokens, chunk["completion_tokens"])})
                break
            yield sse_event({**base, "choices": [{"index": 0, "delta": {"content": chunk["text"]},
                                                  "finish_reason": None}]})
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is gone
        yield _error_event(exc)
        return
    yield SSE_DONE


# --- /v1/tokenize, /v1/detokenize ---------------------------------------------------------------
# No device work: the tokenizer runs here. The model must still be a served LLM (404 otherwise),
# and these routes carry no readiness gate, so clients can count tokens while the model warms.

async def tokenize(body: dict[str, Any]) -> Response:
    pool = current().scheduler.pool("llm", body.get("model"))
    ids = tokenizer.encode(body["prompt"])  # the simulated tokenizer has no special tokens to add
    return json_response({
        "count": len(ids),
        "max_model_len": int(pool.model.info.options.get("max_model_length", 4096)),
        "tokens": ids,
        "token_strs": tokenizer.token_strings(ids) if body.get("return_token_strs") else None,
    })


async def detokenize(body: dict[str, Any]) -> Response:
    current().scheduler.pool("llm", body.get("model"))
    try:
        prompt = tokenizer.decode(body["tokens"])
    except ValueError as exc:
        raise problems.InvalidRequest(f"tokens: {exc}") from None
    return json_response({"prompt": prompt})
