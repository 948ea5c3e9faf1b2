"""The device worker process: one per device group, running one runner.

Three kinds of thread, so that nothing a runner does can silence the worker:
* the device thread runs every synchronous runner method (TT runtimes want one thread per
  device): construction, warmup, run, stream steps, canary, close;
* the event loop dispatches calls, runs async runners, sends results (several calls may be in
  flight: `max_concurrency`);
* a reader thread takes the scheduler's messages, and a heartbeat thread reports that the
  process lives. A runner blocking for an hour in warmup is never killed for silence; a call
  that makes no progress is found by its deadline (the scheduler's watchdog).
If the scheduler's end of the pipe closes, the worker exits: no orphans.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import os
import pickle
import selectors
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from ttmedia.media.priority import background_threads
from ttmedia.runners import registry
from ttmedia.runners.base import CURRENT_CALL, CallControl, DeviceError, Runner, RunnerRequestError
from ttmedia.runners.faults import FaultPlan
from ttmedia.runners.types import FAMILIES, FINAL_TYPES, EncodedImage, ImageRequest, ImageResult, Progress, TokenChunk
from ttmedia.scheduler import protocol as p
from ttmedia.scheduler.protocol import RunnerInfo, WorkerSpec

_DONE = object()


class RunnerBug(Exception):
    """The runner broke the SDK's contract (wrong result type or count): an internal error that says why."""


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.family = spec.context.family
        # select() takes its timeout in microseconds; epoll (asyncio's default) rounds every
        # timer up to the next whole millisecond, which made a simulated 1 ms token take up to
        # 2 ms and a 50 ms device call 50.5 ms on average. A worker's loop watches a handful of
        # file descriptors (its self-pipe, a runner's own), far below select()'s limit.
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self.device = ThreadPoolExecutor(1, thread_name_prefix="ttmedia-device")
        # Encoding pixels is bulk work, run in the background (SCHED_IDLE) as the server's media
        # decoding is, so that on a shared host it yields the core to the event loop and the
        # token streams. As many threads as cores, as the default executor had for it: a runner
        # with several calls in flight may have several results to encode at once (threads
        # start only when needed).
        self.encoders = background_threads(os.cpu_count() or 1, "ttmedia-encode")
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.controls: dict[str, CallControl] = {}
        # Calls beyond the runner's max_concurrency wait here, in arrival order. The scheduler
        # sends one call ahead of a busy worker, so the device starts its next call the moment
        # the current one ends, without waiting a round trip through the scheduler.
        self.on_device: set[str] = set()  # calls holding one of the runner's slots
        self.waiting: deque[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = deque()
        self.faults = FaultPlan(list(spec.faults), seed=f"{spec.context.model}/{spec.context.worker_id}/{spec.incarnation}")
        self.runner: Runner | None = None
        self._stream_is_generator: bool | None = None  # of runner.stream, looked up once
        self.info = RunnerInfo()
        self.stopping = asyncio.Event()
        self._pipe_lock = threading.Lock()  # the loop and the heartbeat thread both write
        self._outbox = p.Outbox(self.loop, self._write)

    def _write(self, message: tuple[Any, ...]) -> None:
        # Plain pickle, not Connection.send's ForkingPickler (a new pickler with its reducer
        # table per message): nothing we send needs multiprocessing's reducers, and the
        # scheduler reads with pickle.loads.
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._pipe_lock:
            self.conn.send_bytes(data)

    def send(self, message: tuple[Any, ...]) -> None:
        """Everything sent in one loop iteration leaves as one pipe write (protocol.Outbox)."""
        self._outbox.put(message)

    def send_threadsafe(self, message: tuple[Any, ...]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.send, message)
        except RuntimeError:  # the loop has closed: the worker is exiting
            pass

    # --- threads that never wait for the runner -------------------------------------------------

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

    def _heartbeat(self) -> None:
        while True:
            try:
                self._write((p.HEARTBEAT, time.monotonic()))
            except OSError:
                return  # the pipe is gone; the reader exits the process
            time.sleep(self.spec.heartbeat_seconds)

    # --- dispatch -------------------------------------------------------------------------------

    def _dispatch_all(self, messages: list[tuple[Any, ...]]) -> None:
        for message in p.unbatch(messages):
            self._dispatch(message)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == p.RUN:
            _, call_id, items = message
            self._start(call_id, lambda: self._run_batch(call_id, items))
        elif kind == p.STREAM:
            _, request_id, request = message
            self._start(request_id, lambda: self._run_stream(request_id, request))
        elif kind == p.CANARY:
            call_id = message[1]
            self._start(call_id, lambda: self._run_canary(call_id))
        elif kind == p.CANCEL:
            self._cancel(message[1])
        elif kind == p.DROP:
            self._drop_waiting(message[1])
        elif kind == p.STOP:
            self.stopping.set()

    def _start(self, key: str, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if len(self.on_device) < self.info.max_concurrency:
            self.on_device.add(key)
            task = self.loop.create_task(call())
            self.tasks[key] = task
            task.add_done_callback(lambda _t: self._call_ended(key))
        else:
            self.waiting.append((key, call))

    def _call_ended(self, key: str) -> None:
        self.tasks.pop(key, None)
        self.controls.pop(key, None)
        self._device_done(key)

    def _device_done(self, key: str) -> None:
        """`key`'s device work is over: start the next waiting call now, before its results are
        sent. Sending wakes the scheduler, which on a busy core can hold the CPU for a while."""
        if key in self.on_device:
            self.on_device.discard(key)
            if self.waiting:
                self._start(*self.waiting.popleft())

    def _cancel(self, key: str) -> None:
        control = self.controls.get(key)
        if control is not None:
            control.cancel()  # a synchronous runner sees it through self.cancelled()
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

    # --- calling the runner ---------------------------------------------------------------------

    def _control(self, key: str, report: Callable[[Progress], None] | None) -> CallControl:
        """The current task's call: the runner's progress() and cancelled() find it."""
        control = CallControl(report)
        self.controls[key] = control
        CURRENT_CALL.set(control)
        return control

    async def _invoke(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A runner method: async ones on this loop, plain ones on the device thread."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await self.loop.run_in_executor(self.device, contextvars.copy_context().run, fn, *args)
        return await result if inspect.isawaitable(result) else result

    def _report_threadsafe(self, build: Callable[[Progress], tuple[Any, ...]]) -> Callable[[Progress], None]:
        def report(progress: Progress) -> None:
            if threading.current_thread() is threading.main_thread():
                self.send(build(progress))
            else:
                self.send_threadsafe(build(progress))
        return report

    def _inject(self) -> bool:
        """Apply this request's fault, if any. True when the request must fail with an error."""
        fault = self.faults.next_request()
        if fault == "crash":
            os._exit(17)
        if fault == "hang":
            # A wedged device: the call never returns and the worker's loop is stuck with it.
            threading.Event().wait()
        return fault == "error"

    async def _run_batch(self, call_id: str, items: list[tuple[str, Any]]) -> None:
        assert self.runner is not None
        self._control(call_id, self._report_threadsafe(lambda pr: (p.PROGRESS, call_id, pr)))
        live = []
        for request_id, request in items:
            if self._inject():
                self.send((p.ERROR, request_id, p.ERROR_INTERNAL, "injected fault: runner error"))
            else:
                live.append((request_id, request))
        if not live:
            return
        requests = [request for _, request in live]
        try:
            try:
                results = await self._invoke(self.runner.run, self._padded(requests))
                results = self._check_results(results, len(requests))
            finally:
                self._device_done(call_id)
            results = await self._encode(requests, results)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the scheduler
            self._failed([rid for rid, _ in live], exc)
            return
        for (request_id, _), result in zip(live, results, strict=True):
            self.send((p.RESULT, request_id, result))

    def _padded(self, requests: list[Any]) -> list[Any]:
        """A batch of a size the runner accepts: the smallest declared size that holds it."""
        sizes = self.info.batch_sizes
        if not sizes or len(requests) in sizes:
            return requests
        size = next((s for s in sizes if s >= len(requests)), None)
        if size is None:  # the scheduler never sends more than the largest size
            raise RunnerBug(f"a batch of {len(requests)} is larger than every accepted size {sizes}")
        return requests + [requests[-1]] * (size - len(requests))

    def _check_results(self, results: Any, count: int) -> list[Any]:
        expected = FAMILIES[self.family][1]
        if not isinstance(results, list | tuple) or len(results) < count:
            raise RunnerBug(f"run() must return a list of {count} {expected.__name__} results, "
                            f"got {type(results).__name__}")
        results = list(results[:count])
        for result in results:
            if not isinstance(result, expected | EncodedImage):
                raise RunnerBug(f"run() returned a {type(result).__name__}; the {self.family} family "
                                f"returns {expected.__name__}")
        return results

    async def _encode(self, requests: list[Any], results: list[Any]) -> list[Any]:
        """Pixels leave the worker encoded, in a thread: the device is already on its next call."""
        if not any(isinstance(r, ImageResult) for r in results):
            return results
        from ttmedia.media import images

        def encode() -> list[Any]:
            return [EncodedImage(images.encode_image(res.pixels, req.output_format.upper(), req.output_quality),
                                 req.output_format.upper())
                    if isinstance(res, ImageResult) and isinstance(req, ImageRequest) else res
                    for req, res in zip(requests, results, strict=True)]

        return await self.loop.run_in_executor(self.encoders, encode)

    def _failed(self, request_ids: list[str], exc: BaseException) -> None:
        if isinstance(exc, DeviceError):
            self._device_broken(request_ids, exc)
        elif isinstance(exc, RunnerRequestError):
            for request_id in request_ids:
                self.send((p.ERROR, request_id, p.ERROR_REQUEST, str(exc)))
        else:  # a runner bug fails its own requests, not the worker
            if not isinstance(exc, RunnerBug):
                traceback.print_exception(exc, file=sys.stderr)
            for request_id in request_ids:
                self.send((p.ERROR, request_id, p.ERROR_INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _device_broken(self, request_ids: list[str], exc: BaseException) -> None:
        """Tell the scheduler, then exit: it resets the device and starts a fresh worker."""
        self.send((p.DEVICE_ERROR, f"{type(exc).__name__}: {exc}", request_ids))
        self._outbox.flush()
        os._exit(4)

    async def _run_stream(self, request_id: str, request: Any) -> None:
        assert self.runner is not None
        self._control(request_id, self._report_threadsafe(lambda pr: (p.CHUNK, request_id, pr)))
        if self._inject():
            self.send((p.ERROR, request_id, p.ERROR_INTERNAL, "injected fault: runner error"))
            return
        try:
            if not self.info.streams:  # one run() call; its progress() reports are the chunks
                results = self._check_results(await self._invoke(self.runner.run, self._padded([request])), 1)
                self._device_done(request_id)
                self.send((p.END, request_id, (await self._encode([request], results))[0]))
                return
            items = await self._items(request)
            try:
                async for item in items:
                    if isinstance(item, TokenChunk):
                        self.send((p.TOKEN, request_id, item.text, item.token_ids))
                    elif isinstance(item, FINAL_TYPES):
                        self._device_done(request_id)
                        self.send((p.END, request_id, item))
                        return
                    else:
                        self.send((p.CHUNK, request_id, item))
            finally:
                # Closed here, after its final item: left to the collector, asyncio would close
                # it from a task of its own, woken through the loop's self-pipe.
                await _close(items)
            raise RunnerBug(f"stream() ended without a final {FAMILIES[self.family][1].__name__}")
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the scheduler
            self._failed([request_id], exc)

    async def _items(self, request: Any) -> AsyncIterator[Any]:
        """The runner's stream as an async iterator: an async generator as it is (no wrapper
        between its tokens and the pipe), a plain one stepped on the device thread."""
        assert self.runner is not None
        method = self.runner.stream
        if self._stream_is_generator is None:
            self._stream_is_generator = inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method)
        if self._stream_is_generator:
            iterator: Any = method(request)
        else:
            iterator = await self._invoke(method, request)
        return iterator if hasattr(iterator, "__anext__") else self._device_steps(iterator)

    async def _device_steps(self, iterator: Iterator[Any]) -> AsyncIterator[Any]:
        """A plain generator's steps, each on the device thread (so a cancelled stream simply
        gets no further steps)."""
        context = contextvars.copy_context()
        try:
            step: Any = context.run  # run_in_executor's typing cannot follow run(next, iterator, default)
            while (item := await self.loop.run_in_executor(self.device, step, next, iterator, _DONE)) is not _DONE:
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # after the step in progress, on the thread that runs the generator
                self.device.submit(context.run, close)

    async def _run_canary(self, call_id: str) -> None:
        assert self.runner is not None
        self._control(call_id, None)
        try:
            request = await self._invoke(self.runner.canary)
            if request is not None:
                if self._inject():
                    raise RuntimeError("injected fault: runner error")
                if self.info.streams and type(self.runner).run is Runner.run:
                    async for _ in await self._items(request):
                        pass
                else:
                    self._check_results(await self._invoke(self.runner.run, self._padded([request])), 1)
        except asyncio.CancelledError:
            return
        except DeviceError as exc:
            self._device_broken([], exc)
        except Exception as exc:  # noqa: BLE001 - a failed canary is the news the scheduler wants
            self.send((p.CANARY_RESULT, call_id, False, f"{type(exc).__name__}: {exc}"))
            return
        self.send((p.CANARY_RESULT, call_id, True, ""))

    # --- life -----------------------------------------------------------------------------------

    async def _warmup_or_stop(self) -> bool:
        """Warm up; True if a stop request came first (a shutdown must not wait out a warmup)."""
        assert self.runner is not None
        self._control("warmup", self._report_threadsafe(lambda pr: (p.PROGRESS, None, pr)))
        warmup = asyncio.ensure_future(self._invoke(self.runner.warmup))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({warmup, stop}, return_when=asyncio.FIRST_COMPLETED)
        self.controls.pop("warmup", None)
        CURRENT_CALL.set(None)
        if warmup.done():
            stop.cancel()
            warmup.result()  # re-raise an init failure
            return False
        warmup.cancel()  # a synchronous warmup cannot be interrupted: the process just exits
        return True

    def _construct(self) -> Runner:
        runner_cls = registry.load(self.spec.runner)
        return runner_cls(self.spec.context)

    async def main(self) -> int:
        threading.Thread(target=self._reader, name="worker-reader", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True).start()
        started = time.monotonic()
        try:
            # Importing and constructing a real runner can take seconds (torch): on the device
            # thread, where its later calls run too.
            self.runner = await self.loop.run_in_executor(self.device, self._construct)
            self.info = RunnerInfo.of(self.runner, len(self.spec.context.device_group))
            self.send((p.HELLO, os.getpid(), self.info))
            if self.faults.init_fails:
                await asyncio.sleep(min(self.spec.context.timing.warmup_s, 0.2))
                raise RuntimeError("injected fault: device initialisation failed")
            if await self._warmup_or_stop():
                return 0
        except DeviceError as exc:
            self.send((p.INIT_FAILED, f"device error: {exc}"))
            self._device_broken([], exc)
        except Exception as exc:
            self.send((p.INIT_FAILED, f"{type(exc).__name__}: {exc}"))
            self._outbox.flush()
            return 3
        assert self.runner is not None
        self.info = RunnerInfo.of(self.runner, len(self.spec.context.device_group))  # warmup may settle it
        # The runner's modules and model objects (torch's alone are hundreds of thousands) live
        # as long as the worker: out of the collector's scans, a full collection no longer
        # holds up a stream's tokens for tens of milliseconds.
        gc.freeze()
        self.send((p.READY, time.monotonic() - started, self.info))
        await self.stopping.wait()
        while self.tasks:  # waiting calls start as running ones end
            await asyncio.wait(list(self.tasks.values()))
        await self._invoke(self.runner.close)
        self._outbox.flush()
        return 0


async def _close(items: Any) -> None:
    """aclose() an async generator whose consumer is done with it; a runner whose generator
    refuses to close (it yields again) has a bug, printed like the others."""
    close = getattr(items, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception as exc:  # noqa: BLE001 - the stream's outcome is already sent
        traceback.print_exception(exc, file=sys.stderr)


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
    # Not conn.close() and not the interpreter's exit: the device thread may still be inside a
    # warmup that a stop overtook, and the exit must not wait for it.
    os._exit(code)
