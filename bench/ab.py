"""Interleaved A/B runs of two versions of the server: before and after a change, same run.

    python -m bench.ab HEAD~1 .                 # the last commit against the working tree
    python -m bench.ab main HEAD -s 1 -s 4 --rounds 5 --seconds 5

A version is a git revision (its ttmedia/ and openapi.yaml are exported to a temporary
directory and byte-compiled) or "." (this checkout). Each round measures the bare Starlette
reference, then A, then B (the order alternating between rounds), so a machine that speeds up
or slows down during the run moves all of them alike. Both run in the default logging
configuration, written to a file. The table has the medians, each as a ratio to the reference
of the same rounds, and B against A.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from io import BytesIO

from bench import load as L
from bench.run import COMPLETION, STREAM, STREAM_ENV
from bench.servers import LOAD_CORE, compile_bytecode, pinning_available, starlette_server, ttmedia_server
from ttmedia.testing.harness import group_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used: unlike throughput, barely moved by other
    load on a shared machine."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the server's own process and, apart, by its worker processes: the workers
    share the server's core, so their cost is part of what a token stream pays for."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # The server leads its own process group (started with start_new_session), and its
        # forkserver and workers are in it.
        self.workers = [member for member in group_members(pid) if member != pid]
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        total = 0.0
        for worker in self.workers:
            try:
                total += cpu_seconds(worker)
            except OSError:
                pass
        return cpu_seconds(self.pid), total

    def per(self, count: int) -> tuple[float, float]:
        """(server, workers) CPU µs per one of `count`."""
        end = self._now()
        return tuple((e - s) / max(count, 1) * 1e6 for e, s in zip(end, self.start))  # type: ignore[return-value]


Measured = tuple[float, tuple[float, float]]  # (figure, (server, workers) CPU µs per request)


def completions(source: str | None, seconds: float) -> Measured:
    with ttmedia_server({"MODELS": "Qwen3-8B", "SIM_SPEED": "0", "SIM_WARMUP_SECONDS": "0"}, source=source) as s:
        meter = CpuMeter(s.proc.pid)
        r = L.load(s.url + "/v1/completions", COMPLETION, 8, seconds)
        return r.rps, meter.per(r.requests)


def warming(source: str | None, seconds: float) -> Measured:
    with ttmedia_server({"MODELS": "Qwen3-8B", "SIM_WARMUP_SECONDS": "100000"}, wait="up", source=source) as s:
        meter = CpuMeter(s.proc.pid)
        r = L.load(s.url + "/v1/completions", COMPLETION, 32, seconds)
        return r.rps, meter.per(r.requests)


def streaming(source: str | None, seconds: float) -> Measured:
    with ttmedia_server(STREAM_ENV, source=source) as s:
        meter = CpuMeter(s.proc.pid)
        r = L.streams(s.url + "/v1/completions", STREAM, 8, seconds)
        return r.gap_p99_ms, meter.per(r.streams)


#: scenario → (metric, measure, reference key, higher is better)
SCENARIOS: dict[int, tuple[str, Callable[[str | None, float], Measured], str, bool]] = {
    1: ("completions c=8 req/s", completions, "rps_c8", True),
    2: ("warming 503 c=32 req/s", warming, "rps_c32", True),
    4: ("streaming c=8 inter-token p99 ms", streaming, "gap_p99_c8", False),
}


def reference(seconds: float) -> dict[str, float]:
    with starlette_server() as s:
        return {"rps_c8": L.load(s.url + "/v1/completions", COMPLETION, 8, seconds).rps,
                "rps_c32": L.load(s.url + "/v1/completions", COMPLETION, 32, seconds).rps,
                "gap_p99_c8": L.streams(s.url + "/v1/completions", STREAM, 8, seconds).gap_p99_ms}


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[str | None]:
    """The source of a version: None for this checkout, else an exported, compiled tree."""
    if revision == ".":
        yield None
        return
    where = tempfile.mkdtemp(prefix="ttmedia-ab-")
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", revision, "ttmedia", "openapi.yaml"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(where, filter="data")
        compile_bytecode(where)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="version A: a git revision, or . for this checkout")
    parser.add_argument("b", help="version B")
    parser.add_argument("-s", "--scenario", type=int, action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    L.ensure_wrk()
    if pinning_available():
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    compile_bytecode()
    chosen = args.scenario or sorted(SCENARIOS)
    refs: list[dict[str, float]] = []
    results: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[tuple[float, float]]] = {}
    with checkout(args.a) as source_a, checkout(args.b) as source_b:
        versions = [("A", source_a), ("B", source_b)]
        for round_number in range(args.rounds):
            refs.append(reference(args.seconds))
            order = versions if round_number % 2 == 0 else versions[::-1]
            for number in chosen:
                for name, source in order:
                    figure, per_request = SCENARIOS[number][1](source, args.seconds)
                    results.setdefault((number, name), []).append(figure)
                    cpu.setdefault((number, name), []).append(per_request)
    print(f"\nA = {args.a}, B = {args.b}; {args.rounds} interleaved rounds of {args.seconds:g} s; "
          f"load: {'wrk' if L.have_wrk() else 'asyncio client'}\n")
    print(f"{'metric':<36} {'A':>9} {'A/ref':>7} {'B':>9} {'B/ref':>7} {'B/A':>7}   runs A | runs B")
    for number in chosen:
        metric, _measure, key, _higher = SCENARIOS[number]
        ref = statistics.median(r[key] for r in refs)
        a, b = (statistics.median(results[(number, v)]) for v in ("A", "B"))
        runs = " ".join(f"{x:.0f}" if x > 100 else f"{x:.2f}" for x in results[(number, "A")]) + " | " + \
            " ".join(f"{x:.0f}" if x > 100 else f"{x:.2f}" for x in results[(number, "B")])
        print(f"{metric:<36} {a:>9.2f} {a / ref:>6.2f}× {b:>9.2f} {b / ref:>6.2f}× {b / a:>6.2f}×   {runs}")
        unit = "stream" if number == 4 else "request"
        for index, whose in enumerate(("server", "workers'")):
            cpu_a, cpu_b = (statistics.median(c[index] for c in cpu[(number, v)]) for v in ("A", "B"))
            print(f"{'  ' + whose + ' CPU µs per ' + unit:<36} {cpu_a:>9.0f} {'':>7} {cpu_b:>9.0f} {'':>7} "
                  f"{cpu_b / cpu_a if cpu_a else float('nan'):>6.2f}×")
    print(f"reference (bare Starlette, median): c=8 {statistics.median(r['rps_c8'] for r in refs):.0f} req/s, "
          f"c=32 {statistics.median(r['rps_c32'] for r in refs):.0f} req/s, "
          f"streams c=8 p99 {statistics.median(r['gap_p99_c8'] for r in refs):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
