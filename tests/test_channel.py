"""The scheduler's pipe to a worker (scheduler/channel.py), against multiprocessing's own
Connection on the other end, as a worker process uses it."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

import pytest
import uvloop

from ttmedia.scheduler.channel import Channel

pytestmark = pytest.mark.timeout(60)

# The server runs on uvloop, which makes a descriptor non-blocking when it starts watching it.
LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])


def run(loop_factory: Any, main: Any) -> None:
    loop = loop_factory()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@LOOPS
def test_writes_never_block_the_loop_and_arrive_in_order_when_the_worker_reads_again(loop_factory: Any) -> None:
    ours, worker = multiprocessing.Pipe(duplex=True)
    big = b"x" * 100_000  # 200 of these are far more than a socket buffer holds

    async def main() -> None:
        channel = Channel(ours, asyncio.get_running_loop(), lambda messages: None, lambda: None)
        # The worker reads nothing yet (stopped, or busy): had a send blocked, the loop would be
        # stuck here for good and the reader below never started.
        for i in range(200):
            assert channel.send(("run", i, big))
        received: list[Any] = []
        reader = threading.Thread(target=lambda: received.extend(worker.recv() for _ in range(200)))
        reader.start()
        await asyncio.to_thread(reader.join, 30)
        assert [m[1] for m in received] == list(range(200))
        assert all(m[2] == big for m in received)
        channel.close()
        assert not channel.send(("run", 200, b""))

    run(loop_factory, main)


@LOOPS
def test_reads_every_message_a_worker_sends_then_reports_eof(loop_factory: Any) -> None:
    ours, worker = multiprocessing.Pipe(duplex=True)
    sizes = [0, 10, 70_000, 3, 1_000_000, 5]  # split across reads, and several in one read

    async def main() -> None:
        received: list[Any] = []
        eof = asyncio.Event()
        Channel(ours, asyncio.get_running_loop(), received.extend, eof.set)

        def send_all() -> None:
            for i, size in enumerate(sizes):
                worker.send(("result", i, b"y" * size))
            worker.close()

        threading.Thread(target=send_all).start()
        await asyncio.wait_for(eof.wait(), 30)
        assert [(m[1], len(m[2])) for m in received] == list(enumerate(sizes))

    run(loop_factory, main)


@LOOPS
def test_a_large_message_is_pickled_off_the_loop_and_keeps_its_place(loop_factory: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from ttmedia.runners.types import ImageRequest
    from ttmedia.scheduler import channel as channel_module
    from ttmedia.scheduler.protocol import BATCH

    ours, worker = multiprocessing.Pipe(duplex=True)
    pickled_on: list[str] = []
    real = channel_module.frame_pieces

    def recording(message: Any) -> list[Any]:
        pickled_on.append(threading.current_thread().name)
        return real(message)

    monkeypatch.setattr(channel_module, "frame_pieces", recording)
    pixels = np.arange(3 * 1024 * 1024, dtype=np.uint8).reshape(1024, 1024, 3)  # 3 MB, as an image edit's

    async def main() -> None:
        channel = Channel(ours, asyncio.get_running_loop(), lambda messages: None, lambda: None)
        assert channel.send(("run", "before", b"small"))
        assert channel.send(("run", "large", {"pixels": pixels}))
        assert channel.send(("run", "after", b"small"))  # behind the large one, not ahead of it
        # As the scheduler sends an image edit: a batch holding a request dataclass (slots).
        edit = ImageRequest(prompt="repaint", task="edit", image=pixels)
        assert channel.send((BATCH, [("run", "edit", edit), ("run", "tiny", b"")]))
        received = await asyncio.to_thread(lambda: [worker.recv() for _ in range(4)])
        assert [m[1] for m in received[:3]] == ["before", "large", "after"]
        assert np.array_equal(received[1][2]["pixels"], pixels)
        assert np.array_equal(received[3][1][0][2].image, pixels)
        assert pickled_on == ["worker-writer"] * 2, pickled_on  # not the loop's thread
        channel.close()

    run(loop_factory, main)


def test_a_pipe_error_is_logged_not_taken_for_a_quiet_end(caplog: pytest.LogCaptureFixture) -> None:
    import os
    import socket
    import struct

    ours, worker = multiprocessing.Pipe(duplex=True)
    eof = threading.Event()

    async def main() -> None:
        channel = Channel(ours, asyncio.get_running_loop(), lambda messages: None, eof.set, name="worker 0 of test")
        # The worker dies with our message unread: the next read fails with ECONNRESET.
        channel.send(("run", 1, b"unread"))
        await asyncio.sleep(0.05)
        worker_sock = socket.socket(fileno=os.dup(worker.fileno()))
        worker.close()
        worker_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        worker_sock.close()
        for _ in range(100):
            if eof.is_set():
                break
            await asyncio.sleep(0.02)

    import logging

    logger = logging.getLogger("ttmedia.scheduler")  # ours may not propagate to pytest's root handler
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="ttmedia.scheduler"):
            run(asyncio.new_event_loop, main)
    finally:
        logger.removeHandler(caplog.handler)
    assert eof.is_set()
    assert any("worker 0 of test" in r.getMessage() and "ECONNRESET" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


@LOOPS
def test_a_large_message_from_the_worker_is_read_into_place_not_into_a_growing_buffer(loop_factory: Any) -> None:
    from ttmedia.scheduler import channel as channel_module

    ours, worker = multiprocessing.Pipe(duplex=True)
    result = bytes(range(256)) * (12 * 1024)  # 3 MB, as an image result

    async def main() -> None:
        received: list[Any] = []
        eof = asyncio.Event()
        channel = Channel(ours, asyncio.get_running_loop(), received.extend, eof.set)
        largest = 0
        real_readable = channel._readable

        def watched() -> None:
            nonlocal largest
            real_readable()
            largest = max(largest, len(channel._buffer))

        asyncio.get_running_loop().remove_reader(channel.sock.fileno())
        asyncio.get_running_loop().add_reader(channel.sock.fileno(), watched)

        def send_all() -> None:
            worker.send(("small", 1, b"x"))
            worker.send(("result", 2, result))
            worker.send(("small", 3, b"y"))
            worker.close()

        threading.Thread(target=send_all).start()
        await asyncio.wait_for(eof.wait(), 30)
        assert [m[:2] for m in received] == [("small", 1), ("result", 2), ("small", 3)]
        assert received[1][2] == result
        # The read buffer holds at most a read's worth: the result went straight into its own.
        assert largest <= 2 * channel_module._READ_SIZE, largest

    run(loop_factory, main)
