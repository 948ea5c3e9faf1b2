"""Load generators: wrk (Debian package) when present, else a small asyncio HTTP/1.1 client.

The asyncio client also measures streams (time to first token, gaps between tokens), which wrk
cannot see.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import LOAD_CORE, pinned


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    tool: str


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def ensure_wrk() -> None:
    """Install wrk with the system's package manager when it is missing and we may (root with
    apt-get, as in CI); otherwise the asyncio client stands in."""
    if have_wrk() or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, body: dict | None, connections: int, seconds: float) -> LoadResult:
    script = ""
    if body is not None:
        script = (f"wrk.method = 'POST'\nwrk.body = [[{json.dumps(body)}]]\n"
                  "wrk.headers['Content-Type'] = 'application/json'\n")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = pinned(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", f.name, url], LOAD_CORE)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    Path(f.name).unlink(missing_ok=True)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return LoadResult(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), _ms(pct["50"]), _ms(pct["99"]),
                      total, int(non2xx.group(1)) if non2xx else 0, "wrk")


# --- the asyncio client ---------------------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection; enough protocol for our server's answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_body = b""  # the last answer's body, when it had a Content-Length

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"",
                      on_chunk: object = None) -> tuple[int, dict[str, str]]:
        assert self.reader and self.writer
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                if on_chunk is not None:
                    on_chunk(data[:-2])  # type: ignore[operator]
        else:
            self.last_body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers

    def close(self) -> None:
        if self.writer:
            self.writer.close()


async def _drive(url: str, body: dict | None, connections: int, seconds: float) -> LoadResult:
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    path = url.split(port, 1)[1] or "/"
    payload = json.dumps(body).encode() if body is not None else b""
    method = "POST" if body is not None else "GET"
    latencies: list[float] = []
    non2xx = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal non2xx
        conn = Connection(host, int(port))
        await conn.open()
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status, _ = await conn.request(method, path, payload)
            latencies.append(time.perf_counter() - started)
            non2xx += not 200 <= status < 400
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return LoadResult(len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
                      latencies[int(len(latencies) * 0.99)] * 1000, len(latencies), non2xx, "asyncio")


def python_load(url: str, body: dict | None, connections: int, seconds: float) -> LoadResult:
    return asyncio.run(_drive(url, body, connections, seconds))


def load(url: str, body: dict | None, connections: int, seconds: float) -> LoadResult:
    return wrk(url, body, connections, seconds) if have_wrk() else python_load(url, body, connections, seconds)


# --- streams ----------------------------------------------------------------------------------------

@dataclass
class StreamResult:
    streams_per_s: float
    ttft_p50_ms: float
    gap_p99_ms: float
    streams: int
    tokens_per_stream: float
    gaps: list[float] = field(repr=False, default_factory=list)


async def _streams(url: str, body: dict, concurrency: int, seconds: float) -> StreamResult:
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    path = url.split(port, 1)[1]
    payload = json.dumps(body).encode()
    ttfts: list[float] = []
    gaps: list[float] = []
    tokens: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        conn = Connection(host, int(port))
        await conn.open()
        while time.monotonic() < deadline:
            started = time.perf_counter()
            stamps: list[float] = []

            def on_chunk(data: bytes) -> None:
                now = time.perf_counter()
                stamps.extend(now for _ in range(max(data.count(b'"text":"') - data.count(b'"text":""'), 0)))

            status, _ = await conn.request("POST", path, payload, on_chunk)
            if status == 200 and stamps:
                ttfts.append(stamps[0] - started)
                gaps.extend(b - a for a, b in zip(stamps, stamps[1:]))
                tokens.append(len(stamps))
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    gaps.sort()
    return StreamResult(len(ttfts) / elapsed, statistics.median(ttfts) * 1000 if ttfts else float("nan"),
                        gaps[int(len(gaps) * 0.99)] * 1000 if gaps else float("nan"), len(ttfts),
                        statistics.mean(tokens) if tokens else 0.0, gaps)


def streams(url: str, body: dict, concurrency: int, seconds: float) -> StreamResult:
    return asyncio.run(_streams(url, body, concurrency, seconds))
