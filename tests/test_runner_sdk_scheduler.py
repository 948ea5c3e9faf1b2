"""The runner SDK inside the scheduler, with real worker processes: synchronous generators that
stop when their client leaves, and progress reports from a plain run()."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from ttmedia.runners.types import Completion, EmbeddingRequest, LLMRequest, Progress, TokenChunk, VideoRequest, VideoResult
from ttmedia.scheduler.readiness import ModelState
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings


def run(coro_fn: Any, models: str, **settings: Any) -> Any:
    async def body() -> Any:
        scheduler = Scheduler(Settings(models=models, sim_warmup_seconds=0.0, **settings))
        await scheduler.start()
        try:
            pool = next(iter(scheduler.pools.values()))
            deadline = time.monotonic() + 30
            while pool.state() is not ModelState.READY:
                assert time.monotonic() < deadline, "the model never became ready"
                await asyncio.sleep(0.02)
            return await coro_fn(pool)
        finally:
            await scheduler.stop(grace_s=2)
    return asyncio.run(body())


def test_a_synchronous_stream_stops_generating_when_its_client_leaves(tmp_path: Path) -> None:
    async def body(pool: Any) -> None:
        stream = pool.open_stream(LLMRequest("x", [1], max_tokens=200))
        seen = []
        async for chunk in stream:
            assert isinstance(chunk, TokenChunk)
            seen.append(chunk)
            if len(seen) == 5:
                break
        await stream.aclose()
        closed_at = time.time()
        await asyncio.sleep(0.5)  # 25 more token times
        made = [json.loads(line) for line in (tmp_path / "tokens.jsonl").read_text().splitlines()]
        after = [i for t, i in made if t > closed_at]
        print(f"\n[sync stream] tokens made {len(made)}, after the close {len(after)}")
        assert len(after) <= 1, after
        assert len(made) < 10

    run(body, f"gen=tests.runner_fixtures:CountingLLMRunner~family=llm~log_dir={tmp_path}")


def test_what_a_runner_holds_after_warmup_is_kept_out_of_the_workers_collector(tmp_path: Path) -> None:
    """A full collection in a worker holding torch's objects took ~130 ms: every stream on it
    stalled. The worker freezes what exists once warmup is over."""
    async def body(pool: Any) -> None:
        await pool.submit(EmbeddingRequest(["x"]))
        frozen = json.loads((tmp_path / "frozen.jsonl").read_text().splitlines()[0])
        assert frozen >= 50_000

    run(body, f"objs=tests.runner_fixtures:ModelObjectsRunner~family=embedding~log_dir={tmp_path}")


def test_a_stream_runs_to_its_end_with_the_final_completion(tmp_path: Path) -> None:
    async def body(pool: Any) -> None:
        items = [c async for c in pool.open_stream(LLMRequest("x", [1], max_tokens=4))]
        assert [type(c) for c in items] == [TokenChunk] * 4 + [Completion]
        assert "".join(c.text for c in items[:-1]) == " t0 t1 t2 t3"

    run(body, f"gen=tests.runner_fixtures:CountingLLMRunner~family=llm~log_dir={tmp_path}")


def test_progress_from_a_plain_run_reaches_the_caller(tmp_path: Path) -> None:
    async def body(pool: Any) -> None:
        request = VideoRequest("x", output_path=str(tmp_path / "out.mp4"), num_inference_steps=5)
        items = [c async for c in pool.open_stream(request)]
        assert [round(c.percent) for c in items[:-1]] == [20, 40, 60, 80, 100]
        assert all(isinstance(c, Progress) for c in items[:-1]) and isinstance(items[-1], VideoResult)
        assert items[-2].step == 5 and items[-2].total == 5

    run(body, "vid=tests.runner_fixtures:ProgressVideoRunner~family=video")


def test_siblings_of_a_failed_request_fail_with_its_problem_not_a_cancellation(tmp_path: Path) -> None:
    from ttmedia.runners.types import ImageRequest
    from ttmedia.scheduler import errors

    async def body(pool: Any) -> None:
        # Seed 1 runs on one worker while seed 0 fails on the other: the caller waits on seed 1
        # first, and must get seed 0's problem from it, not a cancellation.
        requests = [ImageRequest("x", seed=i, width=8, height=8) for i in (1, 0, 2, 3)]
        try:
            await pool.submit_all(requests)
        except errors.RunnerFailed as exc:
            assert "diverged" in exc.message
        else:
            raise AssertionError("no failure")
        await asyncio.sleep(1.2)  # seed 1 finishes on its device; its answer is dropped
        assert not pool.pending and not any(pool.calls_of(w).inflight for w in pool.workers)

    run(body, f"img=tests.runner_fixtures:FailingImageRunner@(0),(1)~family=image~log_dir={tmp_path}")


def test_a_stream_times_out_a_timeout_after_its_last_chunk_not_its_first() -> None:
    from ttmedia.scheduler import errors

    async def body(pool: Any) -> None:
        seen = []
        last = time.monotonic()
        try:
            async for chunk in pool.open_stream(LLMRequest("x", [1], max_tokens=8)):
                seen.append(chunk)
                last = time.monotonic()
            raise AssertionError("the silent stream did not time out")
        except errors.CallTimedOut as exc:
            quiet = time.monotonic() - last
            print(f"\n[stream silence] {len(seen)} tokens 0.6 s apart, then timed out after {quiet:.2f} s: {exc}")
        # Four tokens 0.6 s apart take 2.4 s, past the 1 s timeout: only silence counts.
        assert len(seen) == 4
        assert quiet >= 0.95

    run(body, "stall=tests.runner_fixtures:StallingLLMRunner~family=llm", request_processing_timeout_seconds=1.0)
