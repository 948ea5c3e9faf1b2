"""Run the benchmark scenarios and print one table.

    python -m bench.run                 # every scenario, 10 s runs, median of 3 (interleaved)
    python -m bench.run --smoke         # seconds-long check that the harness works (used in CI)
    python -m bench.run -s 1 -s 4       # some scenarios only

The server runs as a service does: its default logging (one JSON line per request) written to
a file. Scenarios 1, 2 and 4 add "logging off" rows (LOG_LEVEL=warning), measured in the same
repeats, for comparison only, and measure the Starlette reference next to every repeat: their
goal ratios are the medians of the paired ratios. The server is pinned to core 0 and the load to core 1 when the
machine has two cores. Every figure is also printed as a ratio to a bare Starlette app measured
in the same run, so results from different days and machines can be compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from bench import load as L
from bench import looplag
from bench.servers import LOAD_CORE, compile_bytecode, http_status, pinning_available, port_open, starlette_server, ttmedia_server

COMPLETION = {"prompt": "Benchmark prompt", "max_tokens": 16}
STREAM = {"prompt": "Benchmark prompt", "max_tokens": 64, "stream": True}
# Qwen3-8B costs 0.025 s per token on an n150: SIM_SPEED 0.04 makes it 1 ms per token.
STREAM_ENV = {"MODELS": "Qwen3-8B", "SIM_SPEED": "0.04", "SIM_WARMUP_SECONDS": "0"}
# bge-m3 costs 0.014 s per one-input request on an n150: ×3.5714 makes it 50 ms, one at a time.
SCALING_SPEED = str(0.05 / 0.014)
# Scenario 7: bge-m3 at its n150 cost (0.01 s + 0.004 s per item, one call at a time per worker).
BATCH_SIZES = (1, 2, 4, 8)
BATCH_DELAY_MS = "2"
BATCH_CONCURRENCY = 16


@dataclass
class Row:
    scenario: str
    metric: str
    value: float
    target: str
    baseline: float | None = None  # the Starlette figure to compare with, when meaningful
    ratio_value: float | None = None  # the median of per-repeat ratios, when measured so

    def ratio(self) -> str:
        if self.ratio_value is not None:
            return f"{self.ratio_value:.2f}×"
        if not self.baseline:
            return ""
        return f"{self.value / self.baseline:.2f}×"


def median_of(runs: list[float]) -> float:
    return statistics.median(runs) if runs else float("nan")


def ratios(values: list[float], references: list[float]) -> float:
    """The median of each repeat's figure over the reference measured next to it: a machine whose
    speed drifts during the run moves both alike."""
    return median_of([v / r for v, r in zip(values, references, strict=True) if r])


class Bench:
    def __init__(self, seconds: float, repeats: int) -> None:
        self.seconds, self.repeats = seconds, repeats
        self.rows: list[Row] = []
        self.baseline: dict[str, float] = {}

    def measure_baseline(self) -> None:
        with starlette_server() as s:
            for c in (1, 8, 32):
                r = L.load(s.url + "/v1/completions", COMPLETION, c, self.seconds)
                self.baseline[f"rps_c{c}"] = r.rps
                self.baseline[f"p50_c{c}"] = r.p50_ms
            stream = L.streams(s.url + "/v1/completions", STREAM, 8, self.seconds)
            self.baseline["streams_c8"] = stream.streams_per_s
            self.baseline["ttft_c8"] = stream.ttft_p50_ms
            self.baseline["gap_p99_c8"] = stream.gap_p99_ms
        self.rows.append(Row("0 baseline", "bare Starlette req/s c=8", self.baseline["rps_c8"], "(reference)"))
        self.rows.append(Row("0 baseline", "bare Starlette c=8 streams/s (64×1 ms)", self.baseline["streams_c8"],
                             "(reference)"))
        self.rows.append(Row("0 baseline", "bare Starlette c=8 inter-token p99 ms", self.baseline["gap_p99_c8"],
                             "(reference)"))

    def reference_rps(self, connections: int) -> float:
        """The bare Starlette figure, measured next to each repeat of a scenario with a goal."""
        with starlette_server() as s:
            return L.load(s.url + "/v1/completions", COMPLETION, connections, self.seconds).rps

    def reference_streams(self) -> L.StreamResult:
        with starlette_server() as s:
            return L.streams(s.url + "/v1/completions", STREAM, 8, self.seconds)

    def completions(self) -> None:
        results: dict[int, list[L.LoadResult]] = {1: [], 8: [], 32: []}
        quiet: list[L.LoadResult] = []
        refs: list[float] = []
        env = {"MODELS": "Qwen3-8B", "SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0"}
        for _ in range(self.repeats):
            refs.append(self.reference_rps(8))
            with ttmedia_server(env) as s:
                for c in results:  # interleaved: each repeat runs every concurrency
                    results[c].append(L.load(s.url + "/v1/completions", COMPLETION, c, self.seconds))
            with ttmedia_server(env, logging="off") as s:
                quiet.append(L.load(s.url + "/v1/completions", COMPLETION, 8, self.seconds))
        for c, runs in results.items():
            rps = median_of([r.rps for r in runs])
            self.rows.append(Row("1 completions", f"c={c} req/s", rps,
                                 {1: "-", 8: "≥ 0.20×", 32: "≥ 1600"}[c], self.baseline.get(f"rps_c{c}"),
                                 ratios([r.rps for r in runs], refs) if c == 8 else None))
            self.rows.append(Row("1 completions", f"c={c} p50 ms", median_of([r.p50_ms for r in runs]),
                                 "≤ 1.2" if c == 1 else "-"))
            self.rows.append(Row("1 completions", f"c={c} p99 ms", median_of([r.p99_ms for r in runs]),
                                 {1: "-", 8: "≤ 45", 32: "≤ 85"}[c]))
            errors = sum(r.non_2xx for r in runs)
            if errors:
                self.rows.append(Row("1 completions", f"c={c} non-2xx answers", errors, "0"))
        self.rows.append(Row("1 completions", "c=8 req/s, logging off", median_of([r.rps for r in quiet]),
                             "(compare)", self.baseline.get("rps_c8"), ratios([r.rps for r in quiet], refs)))

    def warming(self) -> None:
        runs, quiet = [], []
        refs: list[float] = []
        retry_after_seen = True
        env = {"MODELS": "Qwen3-8B", "SIM_WARMUP_SECONDS": "100000"}
        for _ in range(self.repeats):
            refs.append(self.reference_rps(32))
            with ttmedia_server(env, wait="up") as s:
                runs.append(L.load(s.url + "/v1/completions", COMPLETION, 32, self.seconds))
                request = urllib.request.Request(s.url + "/v1/completions", data=b'{"prompt":"x"}',
                                                 headers={"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(request)
                except urllib.error.HTTPError as exc:
                    retry_after_seen &= exc.code == 503 and int(exc.headers["Retry-After"]) >= 1
            with ttmedia_server(env, wait="up", logging="off") as s:
                quiet.append(L.load(s.url + "/v1/completions", COMPLETION, 32, self.seconds))
        self.rows.append(Row("2 warming 503", "c=32 req/s", median_of([r.rps for r in runs]), "≥ 0.70×",
                             self.baseline.get("rps_c32"), ratios([r.rps for r in runs], refs)))
        self.rows.append(Row("2 warming 503", "c=32 req/s, logging off", median_of([r.rps for r in quiet]),
                             "(compare)", self.baseline.get("rps_c32"), ratios([r.rps for r in quiet], refs)))
        self.rows.append(Row("2 warming 503", "share of answers that were 503",
                             sum(r.non_2xx for r in runs) / max(sum(r.requests for r in runs), 1), "1.0"))
        self.rows.append(Row("2 warming 503", "Retry-After on a sampled 503", float(retry_after_seen), "1"))

    def scaling(self) -> None:
        for k in (1, 2, 4, 8):
            groups = ",".join(f"({i})" for i in range(k))
            runs = []
            for _ in range(self.repeats):
                env = {"MODELS": f"bge-m3@{groups}", "SIM_SPEED": SCALING_SPEED, "SIM_WARMUP_SECONDS": "0"}
                with ttmedia_server(env) as s:
                    runs.append(L.load(s.url + "/v1/embeddings", {"input": "scaling"}, 2 * k, self.seconds))
            ideal = k / 0.05
            self.rows.append(Row("3 scaling 50 ms", f"K={k} workers, c={2 * k} req/s", median_of([r.rps for r in runs]),
                                 f"≥ {0.95 * ideal:.0f}"))

    def streaming(self) -> None:
        results: dict[int, list[L.StreamResult]] = {1: [], 8: []}
        quiet: list[L.StreamResult] = []
        refs: list[L.StreamResult] = []
        for _ in range(self.repeats):
            refs.append(self.reference_streams())
            with ttmedia_server(STREAM_ENV) as s:
                for c in results:
                    results[c].append(L.streams(s.url + "/v1/completions", STREAM, c, self.seconds))
            with ttmedia_server(STREAM_ENV, logging="off") as s:
                quiet.append(L.streams(s.url + "/v1/completions", STREAM, 8, self.seconds))
        def paired(runs: list[L.StreamResult], field: str) -> float:
            return ratios([getattr(r, field) for r in runs], [getattr(r, field) for r in refs])

        for c, runs in results.items():
            at_c8 = c == 8
            self.rows.append(Row("4 streaming 64×1 ms", f"c={c} streams/s", median_of([r.streams_per_s for r in runs]),
                                 "≥ 110" if at_c8 else "-", None, paired(runs, "streams_per_s") if at_c8 else None))
            self.rows.append(Row("4 streaming 64×1 ms", f"c={c} TTFT p50 ms", median_of([r.ttft_p50_ms for r in runs]),
                                 "≤ 10" if at_c8 else "-", None, paired(runs, "ttft_p50_ms") if at_c8 else None))
            self.rows.append(Row("4 streaming 64×1 ms", f"c={c} inter-token p99 ms",
                                 median_of([r.gap_p99_ms for r in runs]), "≤ 1.2×" if at_c8 else "-",
                                 None, paired(runs, "gap_p99_ms") if at_c8 else None))
        self.rows.append(Row("4 streaming 64×1 ms", "c=8 inter-token p99 ms, logging off",
                             median_of([r.gap_p99_ms for r in quiet]), "(compare)", None, paired(quiet, "gap_p99_ms")))
        self.rows.append(Row("4 streaming 64×1 ms", "bare Starlette c=8 inter-token p99 ms (paired)",
                             median_of([r.gap_p99_ms for r in refs]), "(reference)"))

    def startup(self) -> None:
        answer_times, ready_times = [], []
        for _ in range(self.repeats):
            env = {"MODELS": "bge-m3@" + ",".join(f"({i})" for i in range(8)), "SIM_WARMUP_SECONDS": "2",
                   "SIM_SPEED": "1"}
            # The first HTTP answer, not the port: ttmedia serve binds its socket before anything else.
            with ttmedia_server(env, wait="up") as s:
                answer_times.append(time.monotonic() - s.launched_at)
                while http_status(s.url + "/health") != 200:
                    time.sleep(0.01)
                ready_times.append(time.monotonic() - s.launched_at)
        self.rows.append(Row("5 start-up", "first answer s", median_of(answer_times), "≤ 1.0"))
        self.rows.append(Row("5 start-up", "ready s (8 workers × 2 s warmup)", median_of(ready_times), "≤ 2.5"))

    def sigterm(self, requests: int = 10_000) -> None:
        exits = []
        for _ in range(self.repeats):
            with ttmedia_server({"MODELS": "Qwen3-8B", "SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0",
                                 "DRAIN_GRACE_SECONDS": "10"}) as s:
                done = 0
                while done < requests:
                    done += L.load(s.url + "/v1/completions", COMPLETION, 8, 2).requests
                s.stop()
                exits.append(s.stop_seconds)
                assert not port_open(s.port)
        self.rows.append(Row("6 SIGTERM", f"exit s after {requests} requests (grace 10 s)", max(exits), "≤ 10"))

    def batching(self) -> None:
        """Throughput of one embedding worker by MAX_BATCH_SIZE: a batch of B one-input requests
        costs 0.01 + 0.004·B s, so the ideal is B / (0.01 + 0.004·B) req/s."""
        for size in BATCH_SIZES:
            runs = []
            for _ in range(self.repeats):
                env = {"MODELS": "bge-m3@(0)", "SIM_SPEED": "1", "SIM_WARMUP_SECONDS": "0",
                       "MAX_BATCH_SIZE": str(size), "MAX_BATCH_DELAY_MS": BATCH_DELAY_MS}
                with ttmedia_server(env) as s:
                    runs.append(L.load(s.url + "/v1/embeddings", {"input": "batching"}, BATCH_CONCURRENCY,
                                       self.seconds))
            ideal = size / (0.01 + 0.004 * size)
            self.rows.append(Row("7 batching bge-m3", f"MAX_BATCH_SIZE={size}, c={BATCH_CONCURRENCY} req/s",
                                 median_of([r.rps for r in runs]), f"ideal {ideal:.0f}"))
            errors = sum(r.non_2xx for r in runs)
            if errors:
                self.rows.append(Row("7 batching bge-m3", f"MAX_BATCH_SIZE={size} non-2xx answers", errors, "0"))

    def loop_lag(self) -> None:
        """8 token streams while an image edit uploads 10 MB, a device reset runs a 2 s command,
        10,000 jobs are queued and a retention sweep deletes 1,000 finished jobs."""
        result = looplag.run(max(self.seconds, 8.0), repeats=self.repeats)
        self.rows.append(Row("8 loop lag", "idle: c=8 inter-token p99 ms", result.idle_gap_p99_ms, "(reference)"))
        self.rows.append(Row("8 loop lag", "loaded: c=8 inter-token p99 ms", result.loaded_gap_p99_ms, "≤ 1.3× idle",
                             result.idle_gap_p99_ms, result.ratio))
        self.rows.append(Row("8 loop lag", "idle: loop lag p99 ms (histogram)", result.idle_lag_p99_ms, "(reference)"))
        self.rows.append(Row("8 loop lag", "loaded: loop lag p99 ms (histogram)", result.lag_p99_ms, "< 5"))
        self.rows.append(Row("8 loop lag", "loaded: loop lag max ms (histogram)", result.lag_max_ms, "-"))
        self.rows.append(Row("8 loop lag", "loaded: longest token gap ms", result.loaded_gap_max_ms, "-"))
        for name, value in result.events.items():
            self.rows.append(Row("8 loop lag", name, value, "-"))

    def print_table(self) -> None:
        tool = "wrk" if L.have_wrk() else "asyncio client (install wrk for comparable numbers)"
        print(f"\nload: {tool}; pinning: {'server core 0, load core 1' if pinning_available() else 'none'}; "
              f"{self.seconds:g} s runs, median of {self.repeats}\n")
        print(f"{'scenario':<22} {'metric':<44} {'value':>10} {'target':>12} {'ratio':>8}")
        print("-" * 100)
        for r in self.rows:
            print(f"{r.scenario:<22} {r.metric:<44} {r.value:>10.2f} {r.target:>12} {r.ratio():>8}")
        print("\nratio: to the bare Starlette figure of this run; for the goals of scenarios 1, 2 and 4, the median of each\n"
              "repeat's ratio to a Starlette run next to it; scenario 8: the median of each pair's loaded / idle streams")


SCENARIOS: dict[int, Callable[[Bench], None]] = {
    1: Bench.completions, 2: Bench.warming, 3: Bench.scaling, 4: Bench.streaming, 5: Bench.startup, 6: Bench.sigterm,
    7: Bench.batching, 8: Bench.loop_lag,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--scenario", type=int, action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable); default all")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per scenario, median reported (default 3)")
    parser.add_argument("--smoke", action="store_true", help="1 s runs, one repeat, scenarios 1 and 4: checks the harness")
    args = parser.parse_args(argv)
    L.ensure_wrk()
    if pinning_available():
        os.sched_setaffinity(0, {int(LOAD_CORE)})  # the measuring client stays off the server's core
    compile_bytecode()
    bench = Bench(1.0 if args.smoke else args.seconds, 1 if args.smoke else args.repeats)
    chosen = [1, 4] if args.smoke else (args.scenario or sorted(SCENARIOS))
    bench.measure_baseline()
    for number in chosen:
        SCENARIOS[number](bench)
    bench.print_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
