"""A client that goes away stops costing device time.

(a) A queued non-streaming request whose client disconnects is dropped from the queue and never
    dispatched to a worker (seen from outside: /tt-liveness queue_size and the
    `ttmedia_queue_wait_seconds_count` metric, which counts calls started on a device). A call
    sent ahead to a busy worker (short calls only) is dropped by the worker if its client leaves.
(b) A streaming client that disconnects stops its generation on the worker: the server runs
    in-process (uvicorn on a thread, real sockets) so a spy on the pool can count the chunks the
    worker still sends after the client closed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import FAST, LiveServer, live_server, wait_until
from ttmedia.web.app import create_app
from ttmedia.settings import Settings
from ttmedia.testing import metric_value, serve_in_thread

pytestmark = pytest.mark.timeout(120)

IMAGE = "stable-diffusion-xl-base-1.0"
LLM = "Qwen3-8B"


def _metric(server_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`; 0 before the first one."""
    return metric_value(httpx.get(server_url + "/metrics", timeout=10).text, name, **labels) or 0.0


def _queue_size(server: LiveServer, model: str) -> int:
    return int(httpx.get(server.url + "/tt-liveness", timeout=10).json()["models"][model]["queue_size"])


def _raw_post(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    payload = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


# --- (a) a queued request whose client left is never run ---------------------------------------------

def test_queued_request_of_a_disconnected_client_is_never_dispatched(capsys: Any) -> None:
    # One worker, ~2.8 s per image: the first request holds the device, the second waits in the queue.
    env = {"MODELS": f"{IMAGE}@(0)", "SIM_SPEED": "2"}
    body = {"prompt": "patience", "num_inference_steps": 12, "size": "512x512"}
    dispatched = "ttmedia_queue_wait_seconds_count"
    with live_server(env) as server:
        first: list[int] = []
        holder = threading.Thread(target=lambda: first.append(
            httpx.post(server.url + "/v1/images/generations", json=body, timeout=30).status_code), daemon=True)
        holder.start()
        assert wait_until(lambda: _metric(server.url, dispatched, model=IMAGE) == 1, 15), "first never dispatched"
        sock = _raw_post(server.url, "/v1/images/generations", {**body, "prompt": "never run"})
        assert wait_until(lambda: _queue_size(server, IMAGE) == 1, 10), "second request never queued"
        sock.close()  # the client gives up while its request waits
        left_queue = time.monotonic()
        assert wait_until(lambda: _queue_size(server, IMAGE) == 0, 5), "abandoned request stayed queued"
        left_queue = time.monotonic() - left_queue
        holder.join(30)
        assert first == [200]
        time.sleep(0.5)  # had it stayed queued, the free worker would have taken it by now
        assert _metric(server.url, dispatched, model=IMAGE) == 1, "the abandoned request was dispatched"
        # Recorded as nginx's 499 "client closed request" (never sent: nobody is listening).
        assert _metric(server.url, "ttmedia_http_requests_total", operation="create_image", status="499") == 1
        # The model still serves, and the next request is the second dispatch.
        assert httpx.post(server.url + "/v1/images/generations", json=body, timeout=30).status_code == 200
        assert _metric(server.url, dispatched, model=IMAGE) == 2
    with capsys.disabled():
        print(f"\n[disconnect queued] removed from the queue within {left_queue:.2f} s; dispatches: 2 of 3 requests")


# --- (b) a disconnected stream stops on the worker -----------------------------------------------------

@contextlib.contextmanager
def inprocess_server(**overrides: Any) -> Iterator[tuple[Any, str]]:
    """uvicorn on a thread of this process, so the test can reach the app's scheduler."""
    def make_app(data_dir: str) -> Any:
        settings = {**FAST, "validate_responses": False, "data_dir": data_dir, **overrides}
        return create_app(Settings(**settings))

    with serve_in_thread(make_app) as server:
        yield server.app, server.url


# --- (a') a call sent ahead to a busy worker is dropped when its client leaves ---------------------------

EMBEDDING = "bge-m3"


def test_call_ahead_of_a_disconnected_client_is_dropped_by_the_worker() -> None:
    # bge-m3 at ×60: 0.84 s per call, under a second, so a busy worker is sent its next call ahead.
    with inprocess_server(models=f"{EMBEDDING}@(0)", sim_speed=60.0) as (app, url):
        pool = app.runtime.scheduler.pools[EMBEDDING]
        worker = pool.workers[0]
        sent = pool.calls_of(worker)  # what the pool has handed that worker
        answered: list[str] = []  # request ids the worker sent results for
        original = pool.on_result

        def spy(w: Any, ticket_id: str, result: Any) -> None:
            answered.append(ticket_id)
            original(w, ticket_id, result)

        pool.on_result = spy  # type: ignore[method-assign]
        body = {"input": "ahead"}
        assert httpx.post(url + "/v1/embeddings", json=body, timeout=30).status_code == 200  # learns the call time
        holder = threading.Thread(target=lambda: httpx.post(url + "/v1/embeddings", json=body, timeout=30),
                                  daemon=True)
        holder.start()
        assert wait_until(lambda: sent.load == 1, 10)
        sock = _raw_post(url, "/v1/embeddings", {"input": "left early"})
        assert wait_until(lambda: len(sent.calls_ahead) == 1, 5), "never sent ahead"
        assert not pool.pending  # it waits in the worker, not in the scheduler's queue
        liveness = httpx.get(url + "/tt-liveness", timeout=10).json()
        assert liveness["models"][EMBEDDING]["worker_info"][worker.worker_id]["calls_ahead"] == 1
        dropped = sent.calls_ahead[0][1][0].id
        sock.close()
        assert wait_until(lambda: not sent.calls_ahead, 5), "never dropped"
        holder.join(30)
        time.sleep(1.2)  # more than a call's device time: a result for it would be here by now
        assert len(answered) == 2 and dropped not in answered, answered
        assert not sent.inflight and sent.load == 0
        assert httpx.post(url + "/v1/embeddings", json=body, timeout=30).status_code == 200


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "tell me everything", "max_tokens": 2000, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 2000,
                              "stream": True}),
])
def test_disconnected_stream_stops_generating(path: str, body: dict[str, Any], capsys: Any) -> None:
    # SIM_SPEED 1: 25 ms per token, so 2000 tokens would take 50 s if nobody stopped the worker.
    with inprocess_server(models=f"{LLM}@(0)", sim_speed=1.0) as (app, url):
        pool = app.runtime.scheduler.pools[LLM]
        stamps: list[float] = []
        original = pool.on_chunk

        def spy(worker: Any, ticket_id: str, chunk: dict[str, Any]) -> None:
            stamps.append(time.monotonic())
            original(worker, ticket_id, chunk)

        pool.on_chunk = spy  # type: ignore[method-assign]
        sock = _raw_post(url, path, body)
        received = b""
        while received.count(b"data: ") < 10:
            data = sock.recv(65536)
            assert data, "the server closed the stream early"
            received += data
        assert received.startswith(b"HTTP/1.1 200")
        sock.close()
        closed_at = time.monotonic()
        before = sum(t <= closed_at for t in stamps)
        time.sleep(1.5)  # 60 tokens' worth of device time
        after_close = [t - closed_at for t in stamps if t > closed_at]
        settled = len(stamps)
        time.sleep(0.5)
        assert len(stamps) == settled, "chunks still arriving 1.5 s after the client closed"
        # A few tokens may already be in the pipe when the cancel lands; not a stream's worth.
        assert len(after_close) <= 10, after_close
        assert not after_close or max(after_close) < 1.0, after_close
        sent = pool.calls_of(pool.workers[0])
        assert not sent.inflight and sent.load == 0
        # The worker is free and serves the next request.
        r = httpx.post(url + "/v1/completions", json={"prompt": "next", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200
    with capsys.disabled():
        last = f"{max(after_close):.3f} s" if after_close else "-"
        print(f"\n[disconnect stream {path}] chunks before close {before}, after close {len(after_close)} "
              f"(last {last} after)")
