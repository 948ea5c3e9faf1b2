"""The scheduler under faults and overload, through HTTP against a live uvicorn server.

Nothing hangs (every client call has a bounded timeout, and the server's own request timeout is
shorter), nothing is lost (every request gets an answer), and every answer is true: 200, or a
problem whose status and reason say what happened (503 worker_lost/no_workers with Retry-After,
504 timeout, 429 queue_full with Retry-After, 500 internal for a genuine runner error, 422 for a
request the model rejects). Counts are bounded and sleeps short, so each test stays well under a
minute on a busy two-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import LiveServer, live_server, wait_until

pytestmark = pytest.mark.timeout(120)

LLM = "Qwen3-8B"
IMAGE = "stable-diffusion-xl-base-1.0"
#: Bounded client timeout: far above any answer the server should give here, far below "forever".
CLIENT_TIMEOUT = 30.0
NOT_READY = {"worker_lost", "no_workers"}


# --- helpers --------------------------------------------------------------------------------------

def liveness(server: LiveServer, model: str) -> dict[str, Any]:
    body = httpx.get(server.url + "/tt-liveness", timeout=10).json()
    return body["models"][model]


def worker_pids(server: LiveServer, model: str) -> dict[str, int | None]:
    return {wid: w["pid"] for wid, w in liveness(server, model)["worker_info"].items()}


def healthy(server: LiveServer) -> bool:
    try:
        return httpx.get(server.url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def model_ready(server: LiveServer, model: str) -> bool:
    try:
        info = liveness(server, model)
    except httpx.HTTPError:
        return False
    return info["state"] == "ready" and all(w["is_alive"] for w in info["worker_info"].values())


def problem_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == response.status_code and isinstance(body["detail"], str), body
    return body


def retry_after(response: httpx.Response) -> int:
    value = response.headers.get("Retry-After", "")
    assert value.isdigit() and int(value) >= 1, f"Retry-After {value!r} on {response.status_code}"
    return int(value)


# --- 1. SIGKILL of a worker under concurrent load ---------------------------------------------------

KILL_ENV = {
    "MODELS": f"{LLM}@(0),(1);{IMAGE}@(2)",
    # Qwen3-8B: 8 ms prefill + 5 ms per token; SDXL at 12 steps: ~0.3 s. Requests are always in flight.
    "SIM_SPEED": "0.2",
    "WORKER_RESTART_BACKOFF_SECONDS": "0.1",
    "WORKER_RESTART_BACKOFF_MAX_SECONDS": "0.3",
    "MAX_WORKER_RESTART_COUNT": "50",
    "REQUEST_PROCESSING_TIMEOUT_SECONDS": "20",
}
ROUNDS_PER_MODEL = 5
CLIENTS = 8


@pytest.fixture(scope="module")
def kill_server() -> Iterator[LiveServer]:
    with live_server(KILL_ENV) as server:
        yield server


def _hammer(server: LiveServer, path: str, body: dict[str, Any], stop: threading.Event,
            out: list[tuple[int, str | None, str | None, float]]) -> None:
    """One client: requests back to back until `stop`; record (status, reason, Retry-After, seconds)."""
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = client.post(path, json=body)
            except httpx.TimeoutException:
                out.append((-1, "client timeout", None, time.monotonic() - started))
                continue
            except httpx.HTTPError as exc:
                out.append((-2, repr(exc), None, time.monotonic() - started))
                continue
            reason = r.json().get("reason") if r.status_code != 200 else None
            out.append((r.status_code, reason, r.headers.get("Retry-After"), time.monotonic() - started))
            if r.status_code != 200:
                time.sleep(0.05)  # a polite client backs off a little on 503


def _kill_rounds(server: LiveServer, model: str, path: str, body: dict[str, Any]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for round_no in range(ROUNDS_PER_MODEL):
        assert wait_until(lambda: model_ready(server, model), 30, 0.1), f"round {round_no}: {model} not ready"
        pids = worker_pids(server, model)
        victim_id = sorted(pids)[round_no % len(pids)]
        victim = pids[victim_id]
        assert victim
        stop = threading.Event()
        results: list[tuple[int, str | None, str | None, float]] = []
        threads = [threading.Thread(target=_hammer, args=(server, path, body, stop, results), daemon=True)
                   for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        # Load is flowing (answers come back), so every client has a request queued or on the device.
        flowing = wait_until(lambda: any(s == 200 for s, *_ in results), 15, 0.02)
        time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.6)
        stop.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in threads), f"round {round_no}: a client hung"
        assert flowing, "no request completed before the kill: the load did not run"
        bad = [r for r in results if r[0] not in (200, 503)]
        assert not bad, f"round {round_no} ({model}): unexpected answers {bad[:5]}"
        for status, reason, ra, _ in results:
            if status == 503:
                assert reason in NOT_READY, reason
                assert ra is not None and ra.isdigit() and int(ra) >= 1, ra
                totals[f"503 {reason}"] += 1
            else:
                totals["200"] += 1
        # The model comes back: a new process in the victim's place, /health 200, a request served.
        assert wait_until(lambda: model_ready(server, model) and healthy(server), 30, 0.1), \
            f"round {round_no}: {model} did not recover: {liveness(server, model)}"
        new_pid = worker_pids(server, model)[victim_id]
        assert new_pid and new_pid != victim
        assert httpx.post(server.url + path, json=body, timeout=CLIENT_TIMEOUT).status_code == 200
        totals["rounds"] += 1
    return totals


def test_sigkill_under_load_two_workers_loses_nothing(kill_server: LiveServer, capsys: Any) -> None:
    body = {"prompt": "kill me softly", "max_tokens": 24}
    totals = _kill_rounds(kill_server, LLM, "/v1/completions", body)
    with capsys.disabled():
        print(f"\n[sigkill {LLM}@(0),(1)] {dict(totals)}")
    assert totals["rounds"] == ROUNDS_PER_MODEL and totals["200"] > 0
    # With a second ready worker, every request the dead one held is re-dispatched: no 503 at all.
    assert totals["503 worker_lost"] == totals["503 no_workers"] == 0, totals


def test_sigkill_under_load_one_worker_answers_503_then_recovers(kill_server: LiveServer, capsys: Any) -> None:
    body = {"prompt": "a lighthouse", "num_inference_steps": 12, "size": "512x512"}
    totals = _kill_rounds(kill_server, IMAGE, "/v1/images/generations", body)
    with capsys.disabled():
        print(f"\n[sigkill {IMAGE}@(2)] {dict(totals)}")
    # With the only worker dead, its in-flight and queued requests cannot be re-dispatched.
    assert totals["rounds"] == ROUNDS_PER_MODEL and totals["503 worker_lost"] > 0 and totals["200"] > 0


# --- 2. a hung device: 504 within the request timeout, the worker is replaced -------------------------

def test_hang_answers_504_within_the_timeout_and_replaces_the_worker(capsys: Any) -> None:
    timeout = 2.0
    env = {"MODELS": f"{LLM}@(0)", "SIM_FAULTS": "hang_after=1",
           "REQUEST_PROCESSING_TIMEOUT_SECONDS": str(timeout), "WORKER_RESTART_BACKOFF_SECONDS": "0.1"}
    body = {"prompt": "hang on", "max_tokens": 4}
    with live_server(env) as server, server.client() as client:
        old = worker_pids(server, LLM)["0"]
        assert client.post("/v1/completions", json=body).status_code == 200  # request 1: fine
        started = time.monotonic()
        r = client.post("/v1/completions", json=body)  # request 2: wedges the worker
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert problem_of(r)["reason"] == "timeout"
        # Bounded by the timeout, with generous room for a loaded machine.
        assert timeout - 0.2 <= elapsed <= timeout + 8, elapsed
        assert wait_until(lambda: worker_pids(server, LLM)["0"] not in (None, old) and model_ready(server, LLM),
                          30, 0.1), liveness(server, LLM)
        info = liveness(server, LLM)["worker_info"]["0"]
        assert info["restart_count"] == 1 and "wedged" in (info["last_error"] or "")
        assert healthy(server)
        assert client.post("/v1/completions", json=body).status_code == 200
        # A stream on the wedged worker: the 200 is gone, so the timeout arrives in-band, then the end.
        started = time.monotonic()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200
            text = "".join(s.iter_text())
        stream_elapsed = time.monotonic() - started
        assert '"type":"timeout"' in text.replace(" ", ""), text
        assert stream_elapsed <= timeout + 8
    with capsys.disabled():
        print(f"\n[hang] 504 after {elapsed:.2f} s (timeout {timeout:g} s); in-band stream timeout after "
              f"{stream_elapsed:.2f} s")


# --- 3. overload: 429 queue_full beyond the queue, streams refused before their 200 ------------------

def test_flood_beyond_the_queue_is_429_with_retry_after_and_the_rest_200(capsys: Any) -> None:
    env = {"MODELS": f"{IMAGE}@(0)", "SIM_SPEED": "0.5", "MAX_QUEUE_SIZE": "3"}
    body = {"prompt": "flood", "num_inference_steps": 12, "size": "512x512"}  # ~0.7 s per image
    n = 16
    barrier = threading.Barrier(n)
    results: list[tuple[int, str | None, str | None]] = []

    def one() -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            barrier.wait()
            try:
                r = client.post(server.url + "/v1/images/generations", json=body)
            except httpx.HTTPError as exc:
                results.append((-1, repr(exc), None))
                return
            reason = problem_of(r)["reason"] if r.status_code != 200 else None
            results.append((r.status_code, reason, r.headers.get("Retry-After")))

    with live_server(env) as server:
        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert len(results) == n, "a client hung"
        statuses = Counter(s for s, *_ in results)
        assert set(statuses) <= {200, 429}, results
        assert statuses[429] >= 1 and statuses[200] >= 4, statuses  # 1 on the device + 3 queued at least
        for status, reason, ra in results:
            if status == 429:
                assert reason == "queue_full" and ra is not None and ra.isdigit() and int(ra) >= 1, (reason, ra)
    with capsys.disabled():
        print(f"\n[flood] {dict(statuses)}")


async def _open_stream(host: str, port: int, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST a streaming request on a raw socket; return the status line's code and the whole body."""
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    rest = await reader.read()  # Connection: close: the server ends the body by closing
    writer.close()
    return status, rest


def test_stream_flood_is_refused_before_any_200(capsys: Any) -> None:
    # One LLM worker takes 32 streams at once; 3 more may wait; the rest must be refused up front.
    env = {"MODELS": f"{LLM}@(0)", "SIM_SPEED": "0.2", "MAX_QUEUE_SIZE": "3"}
    body = {"prompt": "stream flood", "max_tokens": 150, "stream": True}  # ~0.75 s per stream
    n = 50

    async def flood(url: str) -> list[tuple[int, bytes]]:
        host, port = url.removeprefix("http://").split(":")
        return await asyncio.wait_for(asyncio.gather(*(_open_stream(host, int(port), body) for _ in range(n))),
                                      CLIENT_TIMEOUT)

    with live_server(env) as server:
        results = asyncio.run(flood(server.url))
    statuses = Counter(s for s, _ in results)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[429] + statuses[503] >= 1 and statuses[200] >= 32, statuses
    for status, raw in results:
        if status == 200:
            # Every admitted stream ran to its end: no refusal hidden inside a 200.
            assert b"data: [DONE]" in raw and b'"error"' not in raw, raw[-300:]
        else:
            head, _, payload = raw.partition(b"\r\n\r\n")
            assert b"application/problem+json" in head and b"retry-after:" in head.lower(), head
            assert b"data:" not in raw
            reason = json.loads(payload)["reason"]
            assert reason == "queue_full" if status == 429 else reason in NOT_READY, reason
    with capsys.disabled():
        print(f"\n[stream flood] {dict(statuses)}")


# --- 6. error isolation -------------------------------------------------------------------------------

def test_runner_errors_are_500_for_that_request_only_and_the_worker_keeps_serving(capsys: Any) -> None:
    env = {"MODELS": f"{LLM}@(0);{IMAGE}@(1)", "SIM_FAULTS": f"{LLM}:error_rate=0.5"}
    body = {"prompt": "coin flip", "max_tokens": 4}
    with live_server(env) as server, server.client() as client:
        pid = worker_pids(server, LLM)["0"]
        statuses: Counter[int] = Counter()
        for i in range(40):
            r = client.post("/v1/completions", json={**body, "seed": i})
            statuses[r.status_code] += 1
            if r.status_code == 500:
                problem = problem_of(r)
                assert problem["reason"] == "internal" and "injected fault" in problem["detail"], problem
            else:
                assert r.status_code == 200, r.text
        assert statuses[500] >= 5 and statuses[200] >= 5, statuses
        info = liveness(server, LLM)["worker_info"]["0"]
        assert info["pid"] == pid and info["restart_count"] == 0 and info["error_count"] == statuses[500]
        assert healthy(server)
        # A request the model rejects is the client's fault: 422, and nothing is restarted.
        r = client.post("/v1/images/image-to-image",
                        json={"prompt": "winter", "image": "bm90IGFuIGltYWdl"})  # base64 of "not an image"
        assert r.status_code == 422 and problem_of(r)["reason"] == "invalid_request", r.text
        assert liveness(server, IMAGE)["worker_info"]["1"]["restart_count"] == 0
    with capsys.disabled():
        print(f"\n[error_rate=0.5] {dict(statuses)}; same pid {pid}")


# --- 5. SIGTERM under load, after a worker was replaced: no process of the server survives ------------

def _group_members(pgid: int) -> list[tuple[int, str, str]]:
    """Live (non-zombie) processes of a process group, from the process table (/proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append((int(entry), comm, state))
    return members


def test_sigterm_under_load_after_a_restart_leaves_no_process_behind(capsys: Any) -> None:
    env = {"MODELS": f"{LLM}@(0),(1);{IMAGE}@(2)", "SIM_SPEED": "0.5", "DRAIN_GRACE_SECONDS": "15",
           "WORKER_RESTART_BACKOFF_SECONDS": "0.1"}
    image = {"prompt": "last light", "num_inference_steps": 12, "size": "512x512"}  # ~0.7 s each
    stream = {"prompt": "last words", "max_tokens": 60, "stream": True}  # ~0.8 s each
    results: list[tuple[str, int, str]] = []

    def post(kind: str, path: str, body: dict[str, Any]) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client, \
                    client.stream("POST", path, json=body) as r:
                results.append((kind, r.status_code, "".join(r.iter_text())))
        except httpx.HTTPError as exc:
            results.append((kind, -1, repr(exc)))

    with live_server(env) as server:
        pgid = server.proc.pid  # start_new_session: the server leads its own group
        # A worker that was killed and replaced: its successor must not outlive the server either.
        old = worker_pids(server, LLM)["0"]
        assert old
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: worker_pids(server, LLM)["0"] not in (None, old) and model_ready(server, LLM), 30)
        members_before = _group_members(pgid)
        assert len(members_before) >= 4, members_before  # uvicorn + 3 workers (+ multiprocessing helpers)
        threads = [threading.Thread(target=post, args=("image", "/v1/images/generations", image), daemon=True)
                   for _ in range(2)]
        threads += [threading.Thread(target=post, args=("stream", "/v1/completions", stream), daemon=True)
                    for _ in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: sum(w["in_flight"] for m in ("Qwen3-8B", IMAGE)
                                      for w in liveness(server, m)["worker_info"].values()) >= 3, 15)
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, grace=30)
        exit_s = time.monotonic() - started
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert code in (0, -signal.SIGTERM), code
        assert wait_until(lambda: not _group_members(pgid), 10), f"left behind: {_group_members(pgid)}"
    assert len(results) == len(threads), "a client hung"
    for kind, status, text in results:
        # In flight when SIGTERM landed: finished (streams to [DONE]), or refused as draining.
        assert status in (200, 503), (kind, status, text[:300])
        if status == 200 and kind == "stream":
            assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text, text[-300:]
        if status == 503:
            assert '"draining"' in text, text
    with capsys.disabled():
        print(f"\n[sigterm] exit after {exit_s:.2f} s; answers {Counter((k, s) for k, s, _ in results)}; "
              f"group had {len(members_before)} processes, none left")
