"""Prometheus metrics: request counters kept by the middleware, scheduler state read at scrape time.

Each app has its own CollectorRegistry (tests build many apps in one process). Gauges that
mirror scheduler state are collected on scrape from the scheduler itself, so /metrics can never
disagree with /tt-liveness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ttmedia.observability.looplag import LAG_BUCKETS
from ttmedia.scheduler.readiness import ModelState, WorkerState

if TYPE_CHECKING:
    from ttmedia.scheduler.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ttmedia_http_requests_total", "HTTP requests by operation and status.",
            ["operation", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "ttmedia_http_request_duration_seconds", "Time to the response's first byte, by operation.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stream_failures = Counter(
            "ttmedia_stream_failures_total", "Streams that failed after their 200 was sent, by reason.",
            ["reason"], registry=self.registry)
        self.not_ready = Counter(
            "ttmedia_not_ready_responses_total", "503 answers by readiness reason.",
            ["reason"], registry=self.registry)
        self.queue_wait = Histogram(
            "ttmedia_queue_wait_seconds", "Time requests waited in a model's queue before a worker took them.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            "ttmedia_batch_size", "Requests per batch handed to a worker.",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.warmup = Histogram(
            "ttmedia_worker_warmup_duration_seconds", "Worker warmup time, spawn to ready.",
            ["model"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=self.registry)
        self.loop_lag = Histogram(
            "ttmedia_event_loop_lag_seconds", "How late the event loop ran a callback that was due (sampled).",
            buckets=LAG_BUCKETS, registry=self.registry)

    def attach(self, scheduler: Scheduler) -> None:
        self.registry.register(SchedulerCollector(scheduler))
        scheduler.observer = self

    async def render_in_steps(self) -> bytes:
        """The text format of every metric (what `generate_latest` returns for the registry),
        made one metric family at a time with the event loop running between families. In one call, a scrape held the loop for 3-10 ms (prometheus_client's
        text format is plain Python: ~500 lines for the latency histogram of 25 operations),
        and every token stream waited that long at each scrape."""
        parts: list[bytes] = []
        since = time.perf_counter()

        async def step() -> None:  # collecting a family and formatting it are ~2.5 ms each at most
            nonlocal since
            if time.perf_counter() - since > _STEP_S:
                await asyncio.sleep(0)
                since = time.perf_counter()

        for family in self.registry.collect():
            await step()
            parts.append(generate_latest(_OneFamily(family)))
            await step()
        return b"".join(parts)

    # --- scheduler events -----------------------------------------------------------------------

    def dispatched(self, model: str, waits: list[float]) -> None:
        self.batch_size.labels(model).observe(len(waits))
        histogram = self.queue_wait.labels(model)
        for wait in waits:
            histogram.observe(wait)

    def worker_ready(self, model: str, seconds: float) -> None:
        self.warmup.labels(model).observe(seconds)


#: Longest stretch of rendering between two yields to the loop.
_STEP_S = 0.001


class _OneFamily(Collector):
    """A collector of one family already collected, for generate_latest's text format of it."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("ttmedia_queue_depth", "Requests waiting per model.", labels=["model"])
        inflight = GaugeMetricFamily("ttmedia_requests_in_flight", "Requests held by workers per model.",
                                     labels=["model"])
        model_state = GaugeMetricFamily("ttmedia_model_state", "1 for the model's current readiness state.",
                                        labels=["model", "state"])
        worker_state = GaugeMetricFamily("ttmedia_worker_state", "1 for each worker's current state.",
                                         labels=["model", "devices", "state"])
        restarts = CounterMetricFamily("ttmedia_worker_restarts", "Worker restarts after a crash or hang.",
                                       labels=["model", "devices"])
        errors = CounterMetricFamily("ttmedia_worker_errors", "Runner errors and init failures per worker.",
                                     labels=["model", "devices"])
        # The Gateway API Inference Extension's model-server protocol, with vLLM's names and
        # meaning: waiting = queued in the scheduler (including calls sent ahead that a busy
        # worker has not started); running = on the devices now. `model_name` as vLLM labels it.
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to be scheduled on a device.",
                                    labels=["model_name"])
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests running on the devices.",
                                    labels=["model_name"])
        for name, pool in self.scheduler.pools.items():
            ahead, on_device = queued_and_running(pool)
            waiting.add_metric([name], len(pool.pending) + ahead)
            running.add_metric([name], on_device)
            depth.add_metric([name], len(pool.pending))
            inflight.add_metric([name], sum(len(pool.calls_of(w).inflight) for w in pool.workers))
            current = pool.state()
            for state in ModelState:
                model_state.add_metric([name, state.value], 1.0 if state is current else 0.0)
            for w in pool.workers:
                for wstate in WorkerState:
                    worker_state.add_metric([name, w.worker_id, wstate.value], 1.0 if w.state is wstate else 0.0)
                restarts.add_metric([name, w.worker_id], w.restart_count)
                errors.add_metric([name, w.worker_id], w.error_count)
        yield from (depth, inflight, model_state, worker_state, restarts, errors, waiting, running)


def queued_and_running(pool: Any) -> tuple[int, int]:
    """(requests sent ahead to a busy worker but not started, requests on the devices), read
    from the pool's workers without changing them."""
    sent = [pool.calls_of(w) for w in pool.workers]
    ahead = sum(len(tickets) for c in sent for _call_id, tickets in c.calls_ahead)
    held = sum(len(c.inflight) for c in sent)
    return ahead, held - ahead
