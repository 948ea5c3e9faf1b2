"""Job-store benchmark: SQLite (the embedded default) against PostgreSQL, in the same run.

  python -m bench.jobstore [--seconds 5] [--connections 8] [--queued 10000]

1. Through HTTP, `ttmedia serve` in its default logging configuration (info, JSON, written to a
   file) pinned to core 0, wrk on core 1: job creation (`POST /v1/videos/generations`) and
   status polls (`GET /v1/videos/generations/{id}`), once per store. The video model runs at its
   simulated speed, so nearly every created job stays queued: the figures are the store's.
2. In-process, the claim with `--queued` jobs waiting: its latency, and its query plan (EXPLAIN),
   which must search the partial index `jobs_queued`, not scan the table.

Every PostgreSQL figure is also given as a ratio to SQLite's, measured in the same run.
PostgreSQL is a throwaway server started here (PyPI `pgserver`), pinned to the load core (as if on
a host of its own), so the server core measures ttmedia alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.load import load
from bench.servers import LOAD_CORE, SERVER_CORE, free_port, http_status, pinned, pinning_available

T2V = "Wan2.2-T2V-A14B-Diffusers"
BODY = {"prompt": "a paper boat on a rainy street", "num_inference_steps": 20}


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="ttmedia-bench-pg-"), cleanup_mode="stop")
    pin_postgres(server)
    try:
        yield server
    finally:
        server.cleanup()


def pin_postgres(server: Any) -> None:
    """PostgreSQL onto the load core, as if on a host of its own: the server's core measures
    ttmedia alone. New backends inherit the postmaster's affinity."""
    if not pinning_available():
        return
    postmaster = int(server.get_pid())
    pids = [postmaster] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                           and _parent(int(p.name)) == postmaster]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {int(LOAD_CORE)})


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def fresh_database(server: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return str(server.get_uri(name))


@contextlib.contextmanager
def serve(store_url: str, log_path: Path) -> Iterator[str]:
    """ttmedia serve with default logging (to a file), one video model, MAX_JOBS out of the way."""
    port = free_port()
    env = {**os.environ, "MODELS": T2V, "DATA_DIR": tempfile.mkdtemp(prefix="ttmedia-bench-data-"),
           "JOB_STORE_URL": store_url, "MAX_JOBS": "10000000", "SIM_WARMUP_SECONDS": "0"}
    for name in ("LOG_LEVEL", "LOG_FORMAT", "SIM_SPEED"):
        env.pop(name, None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(pinned([sys.executable, "-m", "ttmedia", "serve", "--port", str(port)], SERVER_CORE),
                                env=env, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while http_status(url + "/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready; see {log_path}")
            time.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def http_rows(url: str, seconds: float, connections: int) -> dict[str, Any]:
    create = load(f"{url}/v1/videos/generations", BODY, connections, seconds)
    request = urllib.request.Request(f"{url}/v1/videos/generations", data=json.dumps(BODY).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as resp:
        job_id = json.load(resp)["id"]
    poll = load(f"{url}/v1/videos/generations/{job_id}", None, connections, seconds)
    import httpx

    one_by_one = []
    with httpx.Client(base_url=url) as client:  # one client, one request at a time: the latency floor
        for _ in range(200):
            started = time.perf_counter()
            client.get(f"/v1/videos/generations/{job_id}")
            one_by_one.append(time.perf_counter() - started)
    return {"create": create, "poll": poll, "sequential_p50_ms": statistics.median(one_by_one) * 1000}


async def claim_latency(store_url: str, data_dir: str, queued: int) -> dict[str, Any]:
    from ttmedia.jobs.models import Job, JobType, new_job_id
    from ttmedia.jobs.store import open_store

    store = open_store(store_url, data_dir, "bench")
    await store.open_if_exists()
    filled = time.perf_counter()
    for i in range(queued):
        # A realistic table: the queue behind a history of finished jobs of another model.
        await store.create(Job(id=new_job_id(), job_type=JobType.VIDEO, model=T2V if i % 2 else "mochi-1-preview",
                               created_at=time.time(), request_parameters={"prompt": "p"}, payload={"i": i}),
                           [], 10 * queued)
    filled = time.perf_counter() - filled
    if store.backend == "postgresql":
        async with store.pool.connection() as conn:  # type: ignore[attr-defined]
            await conn.execute("ANALYZE jobs")
    plan = await store.explain_claim(T2V)  # type: ignore[attr-defined]
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        job = await store.claim(T2V, 30)
        latencies.append(time.perf_counter() - started)
        assert job is not None
    await store.close()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "plan": plan, "insert_per_s": queued / filled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per HTTP measurement (default 5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--queued", type=int, default=10_000, help="queued jobs for the claim (default 10000)")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="ttmedia-bench-logs-"))
    results: dict[str, dict[str, Any]] = {}
    with postgres() as pg:
        stores = {"sqlite": "", "postgresql": fresh_database(pg, "bench_http")}
        for name, url in stores.items():
            with serve(url, logs / f"{name}.log") as base:
                results[name] = http_rows(base, args.seconds, args.connections)
        claim_urls = {"sqlite": "", "postgresql": fresh_database(pg, "bench_claim")}
        for name, url in claim_urls.items():
            results[name]["claim"] = asyncio.run(claim_latency(url, tempfile.mkdtemp(), args.queued))

    sq, pgr = results["sqlite"], results["postgresql"]
    print(f"\njob store, HTTP at c={args.connections} for {args.seconds:g} s each (server on core 0, default "
          f"logging to {logs}), claim with {args.queued} queued jobs\n")
    print("| measurement | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---|---|---|---|")
    for key, label in (("create", "job creation, req/s"), ("poll", "status poll, req/s")):
        print(f"| {label} | {sq[key].rps:,.0f} | {pgr[key].rps:,.0f} | {pgr[key].rps / sq[key].rps:.2f}x |")
        print(f"| {key} p99, ms | {sq[key].p99_ms:.1f} | {pgr[key].p99_ms:.1f} | "
              f"{pgr[key].p99_ms / sq[key].p99_ms:.2f}x |")
    print(f"| status poll one at a time, p50 ms | {sq['sequential_p50_ms']:.2f} | {pgr['sequential_p50_ms']:.2f} | "
          f"{pgr['sequential_p50_ms'] / sq['sequential_p50_ms']:.2f}x |")
    for key, label in (("p50_ms", "claim p50, ms"), ("p99_ms", "claim p99, ms")):
        print(f"| {label} | {sq['claim'][key]:.3f} | {pgr['claim'][key]:.3f} | "
              f"{pgr['claim'][key] / sq['claim'][key]:.2f}x |")
    print(f"| store inserts (in-process), jobs/s | {sq['claim']['insert_per_s']:,.0f} | "
          f"{pgr['claim']['insert_per_s']:,.0f} | {pgr['claim']['insert_per_s'] / sq['claim']['insert_per_s']:.2f}x |")
    bad = [r for name in results for r in (results[name]["create"], results[name]["poll"]) if r.non_2xx]
    if bad:
        print(f"\nWARNING: non-2xx answers during the run: {[r.non_2xx for r in bad]}")
    for name in ("sqlite", "postgresql"):
        print(f"\nclaim plan, {name}:\n  " + "\n  ".join(results[name]["claim"]["plan"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
