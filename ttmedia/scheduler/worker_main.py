"""The device worker process: one per device group, running one runner.

It reads requests from its pipe on a thread and runs them on its own asyncio loop, so a runner
can have several calls in flight (`max_concurrency`) and heartbeats keep flowing while the
device works. If the scheduler's end of the pipe closes, the worker exits: no orphans.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import selectors
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

from ttmedia.runners import registry
from ttmedia.runners.base import Runner, RunnerRequestError
from ttmedia.runners.faults import FaultPlan
from ttmedia.scheduler import protocol as p
from ttmedia.scheduler.protocol import WorkerSpec


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        # select() takes its timeout in microseconds; epoll (asyncio's default) rounds every
        # timer up to the next whole millisecond, which made a simulated 1 ms token take up to
        # 2 ms and a 50 ms device call 50.5 ms on average. A worker's loop watches a handful of
        # file descriptors (its self-pipe, a runner's own), far below select()'s limit.
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Calls beyond the runner's max_concurrency wait here, in arrival order. The scheduler
        # sends one call ahead of a busy worker, so the device starts its next call the moment
        # the current one ends, without waiting a round trip through the scheduler.
        self.on_device: set[str] = set()  # calls holding one of the runner's slots
        self.waiting: deque[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = deque()
        self.faults = FaultPlan(list(spec.faults), seed=f"{spec.context.model}/{spec.context.worker_id}/{spec.incarnation}")
        self.runner: Runner | None = None
        self.stopping = asyncio.Event()
        self._outbox = p.Outbox(self.loop, conn.send)

    def send(self, message: tuple[Any, ...]) -> None:
        """Everything sent in one loop iteration leaves as one pipe write (protocol.Outbox)."""
        self._outbox.put(message)

    # --- reading requests -----------------------------------------------------------------------

    def _reader(self) -> None:
        """Blocking reads on a thread; each message is handed to the loop."""
        while True:
            try:
                batch = [self.conn.recv()]
                while self.conn.poll(0):
                    batch.append(self.conn.recv())
            except (EOFError, OSError):
                os._exit(0)  # the scheduler is gone; nobody will read our results
            self.loop.call_soon_threadsafe(self._dispatch_all, batch)

    def _dispatch_all(self, messages: list[tuple[Any, ...]]) -> None:
        for message in p.unbatch(messages):
            self._dispatch(message)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == p.RUN:
            _, batch_id, items = message
            self._start(batch_id, lambda: self._run_batch(batch_id, items))
        elif kind == p.STREAM:
            _, request_id, payload = message
            self._start(request_id, lambda: self._run_stream(request_id, payload))
        elif kind == p.CANCEL:
            self._cancel(message[1])
        elif kind == p.DROP:
            self._drop_waiting(message[1])
        elif kind == p.STOP:
            self.stopping.set()

    @property
    def capacity(self) -> int:
        return self.runner.max_concurrency if self.runner is not None else 1

    def _start(self, key: str, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if len(self.on_device) < self.capacity:
            self.on_device.add(key)
            task = self.loop.create_task(call())
            self.tasks[key] = task
            task.add_done_callback(lambda _t: self._call_ended(key))
        else:
            self.waiting.append((key, call))

    def _call_ended(self, key: str) -> None:
        self.tasks.pop(key, None)
        self._device_done(key)

    def _device_done(self, key: str) -> None:
        """`key`'s device work is over: start the next waiting call now, before its results are
        sent. Sending wakes the scheduler, which on a busy core can hold the CPU for a while."""
        if key in self.on_device:
            self.on_device.discard(key)
            if self.waiting:
                self._start(*self.waiting.popleft())

    def _cancel(self, key: str) -> None:
        task = self.tasks.get(key)
        if task:
            task.cancel()
        else:
            self._drop_waiting(key)

    def _drop_waiting(self, key: str) -> None:
        """Forget a call that has not started. One that has keeps running: interrupting a
        device call mid-way helps nobody, and the scheduler ignores its results."""
        for entry in self.waiting:
            if entry[0] == key:
                self.waiting.remove(entry)
                return

    # --- faults ---------------------------------------------------------------------------------

    def _inject(self) -> bool:
        """Apply this request's fault, if any. True when the request must fail with an error."""
        fault = self.faults.next_request()
        if fault == "crash":
            os._exit(17)
        if fault == "hang":
            # A wedged device blocks the whole process: no results, no heartbeats.
            threading.Event().wait()
        return fault == "error"

    # --- running work ---------------------------------------------------------------------------

    async def _run_batch(self, batch_id: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        assert self.runner is not None
        live = []
        for request_id, payload in items:
            if self._inject():
                self.send((p.ERROR, request_id, p.ERROR_INTERNAL, "injected fault: runner error"))
            else:
                live.append((request_id, payload))
        if not live:
            return
        try:
            try:
                results = await self.runner.run([payload for _, payload in live])
            finally:
                self._device_done(batch_id)
        except asyncio.CancelledError:
            return
        except RunnerRequestError as exc:
            for request_id, _ in live:
                self.send((p.ERROR, request_id, p.ERROR_REQUEST, str(exc)))
            return
        except Exception as exc:  # a runner bug fails its own requests, not the worker
            message = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
            for request_id, _ in live:
                self.send((p.ERROR, request_id, p.ERROR_INTERNAL, message))
            return
        for (request_id, _), result in zip(live, results, strict=True):
            self.send((p.RESULT, request_id, result))

    async def _run_stream(self, request_id: str, payload: dict[str, Any]) -> None:
        assert self.runner is not None
        if self._inject():
            self.send((p.ERROR, request_id, p.ERROR_INTERNAL, "injected fault: runner error"))
            return
        try:
            async for chunk in self.runner.stream(payload):
                if chunk.get("final"):
                    self._device_done(request_id)
                    self.send((p.END, request_id, chunk))
                    return
                self.send((p.CHUNK, request_id, chunk))
            self._device_done(request_id)
            self.send((p.END, request_id, {}))
        except asyncio.CancelledError:
            return
        except RunnerRequestError as exc:
            self.send((p.ERROR, request_id, p.ERROR_REQUEST, str(exc)))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.send((p.ERROR, request_id, p.ERROR_INTERNAL, f"{type(exc).__name__}: {exc}"))

    async def _heartbeat(self) -> None:
        while True:
            self.send((p.HEARTBEAT, time.monotonic()))
            await asyncio.sleep(self.spec.heartbeat_seconds)

    async def _warmup_or_stop(self) -> bool:
        """Warm up; True if a stop request came first (a shutdown must not wait out a warmup)."""
        assert self.runner is not None
        warmup = asyncio.ensure_future(_maybe_await(self.runner.warmup()))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({warmup, stop}, return_when=asyncio.FIRST_COMPLETED)
        if warmup.done():
            stop.cancel()
            warmup.result()  # re-raise an init failure
            return False
        warmup.cancel()
        await _maybe_await(self.runner.close())
        return True

    async def main(self) -> int:
        threading.Thread(target=self._reader, name="worker-reader", daemon=True).start()
        heartbeat = asyncio.ensure_future(self._heartbeat())
        started = time.monotonic()
        try:
            runner_cls = registry.load(self.spec.runner)
            self.runner = runner_cls(self.spec.context)
            self.send((p.HELLO, os.getpid(), self.runner.max_concurrency))
            if self.faults.init_fails:
                await asyncio.sleep(min(self.spec.context.timing.warmup_s, 0.2))
                raise RuntimeError("injected fault: device initialisation failed")
            if await self._warmup_or_stop():
                return 0
        except Exception as exc:
            self.send((p.INIT_FAILED, f"{type(exc).__name__}: {exc}"))
            self._outbox.flush()
            return 3
        self.send((p.READY, time.monotonic() - started))
        await self.stopping.wait()
        while self.tasks:  # waiting calls start as running ones end
            await asyncio.wait(list(self.tasks.values()))
        heartbeat.cancel()
        await _maybe_await(self.runner.close())
        return 0


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def main(conn: Connection, spec: WorkerSpec) -> None:
    """Process entry point (multiprocessing target)."""
    # The scheduler decides when workers stop: Ctrl-C in a terminal or a SIGTERM to the process
    # group must not kill them before the server has drained. If the server dies, the pipe
    # closes and the worker exits on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(spec.env)
    worker = Worker(conn, spec)
    code = worker.loop.run_until_complete(worker.main())
    conn.close()
    os._exit(code)
