"""Worker lifecycle with real processes: readiness, crashes, restarts, faults, queue bound, resets."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from ttmedia.runners.sim.tokenizer import encode
from ttmedia.runners.types import Completion, ImageRequest, LLMRequest
from ttmedia.scheduler import errors
from ttmedia.scheduler.readiness import ModelState, WorkerState
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings

BASE: dict[str, Any] = {"sim_speed": 0.0, "sim_warmup_seconds": 0.0, "worker_restart_backoff_seconds": 0.05,
                        "worker_heartbeat_seconds": 0.2, "models": "Qwen3-8B@(0)"}


def llm(prompt: str, max_tokens: int) -> LLMRequest:
    return LLMRequest(prompt, encode(prompt), max_tokens)


async def until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def run(coro_fn: Any, **settings: Any) -> Any:
    async def body() -> Any:
        scheduler = Scheduler(Settings(**{**BASE, **settings}))
        await scheduler.start()
        try:
            return await coro_fn(scheduler)
        finally:
            await scheduler.stop(grace_s=2)
            for pool in scheduler.pools.values():
                assert not any(w.alive for w in pool.workers), "a worker outlived the scheduler"
    return asyncio.run(body())


def test_warmup_then_ready_then_serves():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        assert pool.state() in (ModelState.STARTING, ModelState.WARMING)
        with pytest.raises(errors.NotReady) as info:
            await pool.submit(llm("x", 4))
        assert info.value.reason == "warming_up" and info.value.retry_after >= 1
        await until(lambda: pool.state() is ModelState.READY)
        result = await pool.submit(llm("x", 4))
        assert result.completion_tokens == 4
        chunks = [c async for c in pool.open_stream(llm("x", 3))]
        assert [isinstance(c, Completion) for c in chunks] == [False, False, False, True]
        worker = pool.workers[0]
        assert worker.pid and worker.pid != os.getpid()
    run(body, sim_warmup_seconds=0.5)


def test_sigkill_makes_model_unavailable_then_ready_again():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        old_pid = pool.workers[0].pid
        os.kill(old_pid, signal.SIGKILL)
        await until(lambda: pool.state() is ModelState.UNAVAILABLE, 5)
        with pytest.raises(errors.NotReady) as info:
            await pool.submit(llm("x", 1))
        assert info.value.reason == "no_workers"
        await until(lambda: pool.state() is ModelState.READY)
        assert pool.workers[0].pid != old_pid and pool.workers[0].restart_count == 1
        assert (await pool.submit(llm("x", 2))).completion_tokens == 2
    run(body)


def test_one_of_two_workers_killed_is_degraded_and_keeps_serving():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        await until(lambda: pool.state() is ModelState.DEGRADED, 5)
        assert (await pool.submit(llm("x", 2))).completion_tokens == 2
        await until(lambda: pool.state() is ModelState.READY)
    run(body, models="Qwen3-8B@(0),(1)", worker_restart_backoff_seconds=0.5)


def test_crash_mid_request_is_redispatched_to_another_worker():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        # Worker (0) dies on every request; worker (1) is healthy. Every request still succeeds.
        results = await asyncio.gather(*(pool.submit(llm(f"p{i}", 2)) for i in range(6)))
        assert all(r.completion_tokens == 2 for r in results)
        assert pool.workers[0].restart_count >= 1
    run(body, models="Qwen3-8B@(0),(1)", sim_faults="crash_after=0@(0)", worker_restart_backoff_seconds=0.3)


def test_crash_with_no_other_worker_fails_fast_with_worker_lost():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        started = time.monotonic()
        with pytest.raises(errors.NotReady) as info:
            await pool.submit(llm("x", 2))
        assert info.value.reason == "worker_lost" and time.monotonic() - started < 5
    run(body, sim_faults="crash_after=0", worker_restart_backoff_seconds=1.0)


def test_init_failure_exhausts_restarts_then_model_failed_and_reset_recovers_nothing_by_magic():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.FAILED)
        worker = pool.workers[0]
        assert worker.state is WorkerState.FAILED and worker.restart_count == 2
        assert "initialisation failed" in (worker.last_error or "")
        with pytest.raises(errors.NotReady) as info:
            await pool.submit(llm("x", 1))
        assert info.value.reason == "init_failed"
    run(body, sim_faults="init_fail", max_worker_restart_count=2)


def test_hung_device_times_out_and_worker_is_replaced():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        old_pid = pool.workers[0].pid
        with pytest.raises(errors.CallTimedOut):
            await pool.submit(llm("x", 2))
        await until(lambda: pool.workers[0].pid != old_pid and pool.state() is ModelState.READY)
    run(body, sim_faults="hang_after=0", request_processing_timeout_seconds=1.0)


def test_wedged_idle_worker_is_found_by_heartbeat():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        worker = pool.workers[0]
        os.kill(worker.pid, signal.SIGSTOP)  # alive but silent, like a wedged device
        await until(lambda: worker.restart_count == 1, 10)
        assert "heartbeat" in (worker.last_error or "")
        await until(lambda: pool.state() is ModelState.READY)
    run(body, worker_heartbeat_timeout_seconds=1.0)


def test_queue_bound_is_enforced_with_retry_after():
    image = ImageRequest("x", num_inference_steps=20, width=64, height=64)

    async def body(s: Scheduler) -> None:
        pool = s.pool("image")
        await until(lambda: pool.state() is ModelState.READY)
        # One worker, one request at a time, ~0.45 s each: one runs, two wait, the fourth is refused.
        tasks = [asyncio.ensure_future(pool.submit(image)) for _ in range(3)]
        await asyncio.sleep(0.1)
        with pytest.raises(errors.QueueFull) as info:
            await pool.submit(image)
        assert info.value.retry_after > 0
        assert all(r.data[:2] == b"\xff\xd8" for r in await asyncio.gather(*tasks))  # JPEG
    run(body, sim_speed=0.2, max_queue_size=2, models="stable-diffusion-xl-base-1.0@(0)")


def test_deep_reset_restarts_every_worker_and_failed_workers_recover():
    async def body(s: Scheduler) -> None:
        pool = s.pool("llm")
        await until(lambda: pool.state() is ModelState.READY)
        pids = [w.pid for w in pool.workers]
        assert await s.deep_reset() == 2
        await until(lambda: all(w.pid not in pids for w in pool.workers) and pool.state() is ModelState.READY)
        assert all(w.restart_count == 0 for w in pool.workers)
    run(body, models="Qwen3-8B@(0),(1)")


def test_unknown_device_reset_is_not_found():
    async def body(s: Scheduler) -> None:
        with pytest.raises(errors.UnknownDevice):
            s.find_worker("42")
        assert s.find_worker("0").worker_id == "0"
    run(body)


def test_batching_groups_queued_requests_up_to_the_batch_size():
    async def body(s: Scheduler) -> None:
        pool = s.pool("image")
        await until(lambda: pool.state() is ModelState.READY)
        sizes: list[int] = []
        pool.observer = type("Spy", (), {"dispatched": lambda self, m, waits: sizes.append(len(waits))})()
        await asyncio.gather(*(pool.submit(ImageRequest("x", num_inference_steps=12, width=32, height=32, seed=i))
                               for i in range(8)))
        # The delay lets the first request wait for the other seven: two full batches at most.
        assert sum(sizes) == 8 and max(sizes) == 4 and len(sizes) <= 3
    run(body, models="stable-diffusion-xl-base-1.0@(0)", max_batch_size=4, max_batch_delay_ms=50)


def test_a_request_that_times_out_after_waiting_in_the_queue_does_not_kill_a_healthy_worker():
    image = ImageRequest("x", num_inference_steps=20, width=32, height=32)

    async def body(s: Scheduler) -> None:
        pool = s.pool("image")
        await until(lambda: pool.state() is ModelState.READY)
        worker = pool.workers[0]
        pid = worker.pid
        # Each image takes ~0.9 s; the deadline (1.2 s) counts queue time. The second request is
        # dispatched at ~0.9 s and times out at 1.2 s while the device is working normally.
        first = asyncio.ensure_future(pool.submit(image))
        await asyncio.sleep(0.05)
        with pytest.raises(errors.CallTimedOut):
            await pool.submit(image)
        assert (await first).data[:2] == b"\xff\xd8"
        await asyncio.sleep(1.0)  # the late request finishes on the device; its answer is dropped
        assert worker.pid == pid and worker.restart_count == 0 and pool.state() is ModelState.READY
        assert not pool.calls_of(worker).inflight
    run(body, models="stable-diffusion-xl-base-1.0@(0)", sim_speed=0.4, request_processing_timeout_seconds=1.2)
