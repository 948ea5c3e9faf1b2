"""Units of the hardening: settings errors, the bearer rule, JSON depth, chunked resampling, image
reduction, URLs, the log writer and the loop-lag sampler."""

from __future__ import annotations

import asyncio
import io
import sys
import json
import time
import wave

import numpy as np
import pytest
from PIL import Image

from ttmedia.observability import logs
from ttmedia.web.listen import url_of
from ttmedia.observability.looplag import INTERVAL_S, LoopLag
from ttmedia.media import audio, images
from ttmedia.web.problems import MalformedBody
from ttmedia.web.security import BindRefused, bearer_token, check_bind_allowed, header_authorized
from ttmedia.settings import Settings, SettingsError, load_settings
from ttmedia.web.validation import MAX_JSON_DEPTH, json_depth, parse_json


@pytest.mark.parametrize(("env", "line"), [
    ({"DEVICE": "n15"}, "DEVICE='n15' is not accepted; expected one of: n150, n300, t3k"),
    ({"SIM_SPEED": "fast"}, "SIM_SPEED='fast' is not accepted; expected a number >= 0 and <= 1000"),
    ({"LOG_FORMAT": "pretty"}, "LOG_FORMAT='pretty' is not accepted; expected one of: auto, json, text"),
    ({"LOG_REQUESTS": "some"}, "LOG_REQUESTS='some' is not accepted; expected one of: all, probes, errors"),
    ({"NO_AUTH": "maybe"}, "NO_AUTH='maybe' is not accepted; expected a boolean"),
    ({"MAX_AUDIO_SECONDS": "0"}, "MAX_AUDIO_SECONDS='0' is not accepted; expected a number > 0"),
    ({"WORKER_HEARTBEAT_SECONDS": "2", "WORKER_HEARTBEAT_TIMEOUT_SECONDS": "1"},
     "WORKER_HEARTBEAT_TIMEOUT_SECONDS=1 is not accepted; expected more than WORKER_HEARTBEAT_SECONDS=2"),
])
def test_a_bad_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(line), caught.value.lines


def test_settings_take_any_case_for_their_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "N300")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    settings = load_settings()
    assert (settings.device, settings.log_level) == ("n300", "warning")


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer k", "k"), ("bearer k", "k"), ("Bearer k ", "k"), ("Bearer  k", "k"), ("Bearer\tk", "k"),
    ("Bearer", None), ("Bearer ", None), ("Basic k", None), ("k", None), (None, None), (b"Bearer k ", "k"),
])
def test_one_reading_of_the_authorization_header(header: str | bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token
    assert header_authorized(header, ("k",)) is (token == "k")


def test_the_bind_rule() -> None:
    open_server = Settings()
    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        check_bind_allowed(host, open_server)
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(BindRefused, match="API_KEY"):
            check_bind_allowed(host, open_server)
    check_bind_allowed("0.0.0.0", Settings(api_key="k"))
    check_bind_allowed("0.0.0.0", Settings(no_auth=True))


def test_urls_bracket_ipv6_literals() -> None:
    assert url_of("::1", 8001) == "http://[::1]:8001"
    assert url_of("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert url_of("localhost", 80) == "http://localhost:80"


def test_json_nesting_is_counted_without_recursion() -> None:
    assert json_depth({"a": [1, {"b": []}]}, 64) == 4
    deep: list = []
    node = deep
    for _ in range(100_000):  # far past Python's recursion limit
        node.append([])
        node = node[0]
    assert json_depth(deep, MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1  # counting stops past the limit
    assert parse_json(json.dumps({"messages": [{"content": [{"type": "text"}]}]}).encode())
    with pytest.raises(MalformedBody, match="more than 64 deep"):
        parse_json(b'{"prompt": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}")
    assert parse_json(b'{"ids": ' + json.dumps([[i] for i in range(500)]).encode() + b"}")  # many, not deep


@pytest.mark.parametrize(("src", "dst", "frames"), [(44_100, 16_000, 700_001), (8_000, 16_000, 300_001),
                                                      (1, 16_000, 40), (16_000, 16_000, 5_000)])
def test_wav_resampling_in_pieces_gives_the_samples_of_one_piece(src: int, dst: int, frames: int) -> None:
    rng = np.random.default_rng(src)
    pcm = np.round(rng.uniform(-0.9, 0.9, frames) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(src)
        out.writeframes(pcm.tobytes())
    samples, rate = audio.decode_audio(buf.getvalue(), target_rate=dst)
    signal = pcm.astype(np.float32) / 32768.0
    count = max(1, round(frames * dst / src))
    expected = np.interp(np.arange(count, dtype=np.float64) * (src / dst), np.arange(frames), signal)
    assert rate == dst and samples.shape == expected.shape
    assert np.abs(samples - expected).max() < 1e-6


def test_audio_longer_than_the_limit_is_refused_from_its_header() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(1)
        out.writeframes(b"\x80" * 4000)
    with pytest.raises(audio.MediaTooLong, match="4000.0 s long; the limit is 1800 s"):
        audio.decode_audio(buf.getvalue(), limit_seconds=1800)


def test_a_large_image_is_reduced_while_it_is_decoded() -> None:
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (4000, 3000), (200, 30, 30)).save(buf, fmt)
        full = images.decode_image(buf.getvalue())
        reduced = images.decode_image(buf.getvalue(), min_side=256)
        assert full.size == (4000, 3000)
        assert min(reduced.size) >= 256 and reduced.size[0] < 1000, (fmt, reduced.size)
        assert abs(reduced.size[0] / reduced.size[1] - 4 / 3) < 0.02
        assert np.abs(np.asarray(reduced, dtype=np.int16)[50, 50] - (200, 30, 30)).max() < 6


def test_image_errors_name_no_python_object() -> None:
    with pytest.raises(images.UndecodableMedia) as caught:
        images.decode_image(b"not an image")
    assert "object at 0x" not in str(caught.value)


def test_the_log_writer_drops_and_counts_what_a_stalled_stderr_cannot_take(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(3600)  # never returns (a daemon thread dies with the test process)
            return 0

    monkeypatch.setattr(logs, "MAX_QUEUED", 10)
    writer = logs._Writer(Stalled())
    started = time.monotonic()
    for i in range(100):
        writer.put(f"line {i}")
    assert time.monotonic() - started < 0.5  # putting never waits for the stream
    time.sleep(logs.WRITE_INTERVAL_S * 3)
    # The queue held 10; the writer took at most one piece (64) before the stream stalled it.
    assert writer.dropped >= 100 - 64 - 10 and len(writer.records) <= 10
    writer.write_through()  # gives up on the stalled thread after EXIT_FLUSH_S, without blocking here
    assert writer.direct is False


def test_loop_lag_counts_the_samples_a_stall_kept_from_being_taken() -> None:
    seen: list[float] = []

    class Histogram:
        def observe(self, value: float) -> None:
            seen.append(value)

    async def main() -> float:
        lag = LoopLag(Histogram())
        lag.start()
        await asyncio.sleep(INTERVAL_S * 2)
        time.sleep(0.3)  # the loop stalls
        await asyncio.sleep(INTERVAL_S * 2)
        worst = lag.worst_recent()
        lag.stop()
        return worst

    worst = asyncio.run(main())
    assert worst >= 0.25
    stalled = [v for v in seen if v >= INTERVAL_S]
    assert len(stalled) >= 0.25 / INTERVAL_S - 2, stalled  # one per interval the stall covered


def test_big_integers_stay_exact_and_digits_inside_strings_do_not_matter() -> None:
    from ttmedia.web.validation import parse_json

    assert parse_json(b'{"seed": 123456789012345678901234}')["seed"] == 123456789012345678901234
    text = parse_json(b'{"image": "AAAA1234567890123456789012BBBB", "seed": 7}')
    assert text == {"image": "AAAA1234567890123456789012BBBB", "seed": 7}


def test_base64_fields_decode_the_same_whole_and_in_pieces() -> None:
    import asyncio
    import base64

    from ttmedia.handlers import _uploads
    from ttmedia.web.problems import InvalidRequest

    data = bytes(range(256)) * 2048  # 512 KiB: past BASE64_PIECE_CHARS once encoded
    for text in (base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode().rstrip("=")):
        assert len(text) > _uploads.BASE64_PIECE_CHARS
        assert asyncio.run(_uploads.b64decode_in_pieces(text, "image")) == data
    assert _uploads.b64decode("AQID\nBA", "x") == b"\x01\x02\x03\x04"
    with pytest.raises(InvalidRequest):
        _uploads.b64decode("é", "x")


def test_token_events_serialised_once_per_stream_are_the_same_bytes() -> None:
    from ttmedia.web.responses import SSE_SLOT, sse_event, sse_events_like

    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "Qwen3-8B"}
    event = sse_events_like({**base, "choices": [{"index": 0, "delta": {"content": SSE_SLOT}, "finish_reason": None}]})
    for text in ("hi", ' "quoted" ', "é\n\u0000", "", "\\"):
        assert event(text) == sse_event({**base, "choices": [
            {"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    with pytest.raises(ValueError):
        sse_events_like({"no": "slot"})


def test_stream_chunks_hand_items_over_in_order_and_survive_a_cancelled_wait() -> None:
    import asyncio

    from ttmedia.scheduler.pool import StreamChunks

    async def body() -> list[int]:
        chunks = StreamChunks()
        waiting = asyncio.ensure_future(chunks.get())
        await asyncio.sleep(0)
        waiting.cancel()  # a client that left while waiting
        await asyncio.sleep(0)
        chunks.put_nowait(1)
        got = [await chunks.get()]
        later = asyncio.ensure_future(chunks.get())
        await asyncio.sleep(0)
        chunks.put_nowait(2)
        chunks.put_nowait(3)
        got.append(await later)
        got.append(chunks.get_nowait())
        assert chunks.empty()
        return got

    assert asyncio.run(body()) == [1, 2, 3]


def _priority() -> tuple[int, int]:
    """The calling thread's scheduling policy and niceness."""
    import os
    import threading

    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_media_decoding_threads_run_below_the_event_loops_priority() -> None:
    import asyncio
    import os

    from ttmedia.handlers import _uploads
    from ttmedia.media.priority import BULK_NICENESS

    async def body() -> tuple[int, int]:
        return await _uploads._off_loop(_priority)

    base = _priority()
    assert asyncio.run(body()) == (os.SCHED_IDLE, max(base[1], BULK_NICENESS))
    assert _priority() == base  # the loop's own thread keeps its priority


_PRELOAD_PROBE = """
import sys, time
from tests.helpers import app_client
with app_client(models=sys.argv[1]) as client:
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline and "PIL.PngImagePlugin" not in sys.modules:
        time.sleep(0.05)
    time.sleep(0.5)
    print("numpy" in sys.modules, "PIL.PngImagePlugin" in sys.modules)
"""


@pytest.mark.parametrize("models, wait, expected", [("stable-diffusion-xl-base-1.0", 15, "True True"),
                                                    ("Qwen3-8B", 2, "False False")])
def test_the_media_stack_is_imported_at_start_when_a_media_model_is_served(models: str, wait: int, expected: str) -> None:
    """Not by the first image request: its ~0.3 s of imports would hold the GIL under that
    request and every token stream beside it."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _PRELOAD_PROBE, models, str(wait)], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == expected


def test_the_media_stack_imported_at_start_is_kept_out_of_the_collector() -> None:
    """Its ~12,000 objects would otherwise cost every full collection ~3 ms of a held loop."""
    import subprocess
    from pathlib import Path

    probe = ("import gc\nfrom ttmedia.web.app import import_media_stack\nbefore = gc.get_freeze_count()\n"
             "import_media_stack()\nprint(gc.get_freeze_count() - before)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 5_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_a_simulators_device_work_and_a_workers_encoding_run_below_the_loops_priority() -> None:
    """On TT hardware the device computes, not the host's CPU: the simulators' pixels and frames
    are made in the background (SCHED_IDLE), and a worker encodes its results there too."""
    import asyncio
    import os

    from ttmedia.media.priority import BULK_NICENESS, background_threads
    from ttmedia.runners.sim import on_sim_device

    base = _priority()
    background = (os.SCHED_IDLE, max(base[1], BULK_NICENESS))
    assert asyncio.run(on_sim_device(_priority)) == background
    with background_threads(1, "test-encode") as pool:  # what a worker encodes on
        assert pool.submit(_priority).result() == background
    assert _priority() == base


def test_metrics_render_in_steps_gives_the_same_text_with_the_loop_running_between_families(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import generate_latest

    from ttmedia.observability import metrics as metrics_module

    metrics = metrics_module.Metrics()
    for i in range(25):
        metrics.requests.labels(f"operation_{i}", "POST", "200").inc()
        metrics.latency.labels(f"operation_{i}").observe(0.01 * i)
    metrics.loop_lag.observe(0.001)
    monkeypatch.setattr(metrics_module, "_STEP_S", 0.0)  # a yield at every step, on any machine
    families = len(list(metrics.registry.collect()))

    async def body() -> tuple[bytes, int]:
        ticks = 0
        stop = False

        async def tick() -> None:
            nonlocal ticks
            while not stop:
                await asyncio.sleep(0)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        ticks = 0
        text = await metrics.render_in_steps()
        stop = True
        await ticker
        return text, ticks

    text, ticks = asyncio.run(body())
    assert text == generate_latest(metrics.registry)  # the one-call rendering, byte for byte
    assert b'ttmedia_http_request_duration_seconds_bucket{le="0.25",operation="operation_24"} 1.0' in text
    assert ticks >= 2 * families  # the loop ran after each family was collected and after it was formatted
