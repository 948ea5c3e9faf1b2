"""The scheduler's side of one device worker process.

The event loop reads each worker's pipe itself (scheduler/channel.py): no polling, no thread
hop between a result and its handler. When the process dies, the loop sees EOF at once, so a
crash is noticed in milliseconds, not at the next health-check tick.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from ttmedia.scheduler import protocol as p
from ttmedia.scheduler import worker_main
from ttmedia.scheduler.channel import Channel
from ttmedia.scheduler.forkserver import CONTEXT
from ttmedia.scheduler.protocol import RunnerInfo, WorkerSpec
from ttmedia.scheduler.readiness import WorkerState, WorkerView

@dataclass
class Launched:
    process: multiprocessing.process.BaseProcess
    conn: Connection  # the scheduler's end of the worker's pipe
    at: float  # monotonic
    wall: float


def start_process(spec: WorkerSpec) -> Launched:
    parent_conn, child_conn = CONTEXT.Pipe(duplex=True)
    process = CONTEXT.Process(
        target=worker_main.main,
        args=(child_conn, spec),
        name=f"ttmedia-worker-{spec.context.model}-{spec.context.worker_id}",
        daemon=True,
    )
    process.start()
    child_conn.close()  # so EOF reaches us when the child dies
    return Launched(process, parent_conn, time.monotonic(), time.time())


class EarlyLaunch:
    """Worker processes that `ttmedia serve` starts as soon as it knows its models, before the
    web stack is imported: devices warm up while the server loads (bench scenario 5). Each
    WorkerHandle adopts its process on first launch. A worker's messages wait in its pipe
    until then. Processes nothing adopts (a failed start-up) are killed by kill_unadopted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._done.set()
        self._launched: list[tuple[WorkerSpec, Launched]] = []
        self._closed = False

    def start(self, specs: list[WorkerSpec]) -> None:
        with self._lock:
            self._closed = False
        self._done.clear()
        threading.Thread(target=self._run, args=(specs,), name="early-worker-launch", daemon=True).start()

    def _run(self, specs: list[WorkerSpec]) -> None:
        try:
            for spec in specs:
                launched = start_process(spec)
                with self._lock:
                    closed = self._closed
                    if not closed:
                        self._launched.append((spec, launched))
                if closed:  # start-up was given up meanwhile
                    _kill(launched)
                    return
        except Exception:  # noqa: BLE001 - the scheduler's own launch of that worker meets it and reports it
            return
        finally:
            self._done.set()

    def take(self, spec: WorkerSpec) -> Launched | None:
        """The process launched early for exactly this spec, if any (waits for the launches)."""
        self._done.wait()
        with self._lock:
            for i, (early_spec, launched) in enumerate(self._launched):
                if early_spec == spec:
                    del self._launched[i]
                    return launched
        return None

    def kill_unadopted(self) -> None:
        """Kill every process launched early that no worker took, now and from now on: once the
        scheduler has started, or start-up failed, nothing will take them."""
        with self._lock:
            self._closed = True
            left, self._launched = self._launched, []
        for _spec, launched in left:
            _kill(launched)


def _kill(launched: Launched) -> None:
    launched.conn.close()
    if launched.process.is_alive():
        launched.process.kill()
    launched.process.join(5)


EARLY_LAUNCH = EarlyLaunch()

#: Seconds a freshly spawned interpreter needs before the runner starts warming (imports).
SPAWN_OVERHEAD_S = 1.0


class WorkerHandle:
    def __init__(
        self,
        spec: WorkerSpec,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerHandle, tuple[Any, ...]], None],
        on_exit: Callable[[WorkerHandle, int | None], None],
    ) -> None:
        self.spec = spec
        self.loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self.state = WorkerState.STOPPED
        self.process: multiprocessing.process.BaseProcess | None = None
        self.channel: Channel | None = None
        self.pid: int | None = None
        self.info = RunnerInfo()  # what the runner declared (HELLO, READY)
        self.restart_count = 0
        self.restart_times: list[float] = []
        self.error_count = 0
        self.start_time: float | None = None  # wall clock, for /tt-liveness
        self.ready_time: float | None = None
        self.spawned_at = 0.0  # monotonic
        self.ready_due = 0.0  # monotonic: when we expect it to be ready
        self.last_heartbeat = 0.0
        self.last_error: str | None = None
        self.expected_warmup_s = spec.context.timing.warmup_s + SPAWN_OVERHEAD_S
        self.incarnation = 0
        self.expect_exit = False  # set when we stop or reset it on purpose
        self.device_error: str | None = None  # the runner reported a broken device; reset before restart
        self.warmup_progress: float | None = None  # percent, when the runner reports it
        self.last_active = time.monotonic()  # the last call's end: the idle canary counts from it
        self.canary: tuple[str, float] | None = None  # (call id, deadline) of a canary in flight
        self.canary_ok_at: float | None = None  # wall clock of the last canary that passed
        self._outbox = p.Outbox(loop, self.send)

    @property
    def worker_id(self) -> str:
        return self.spec.context.worker_id

    @property
    def capacity(self) -> int:
        return self.info.max_concurrency

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def view(self, now: float) -> WorkerView:
        eta = 0.0 if self.state is WorkerState.READY else max(self.ready_due - now, 0.0)
        return WorkerView(self.state, self.restart_count, eta)

    def spawn(self, delay_s: float = 0.0) -> None:
        """Start a fresh process (after `delay_s`, the restart backoff)."""
        now = time.monotonic()
        self.ready_due = now + delay_s + self.expected_warmup_s
        if delay_s > 0:
            self.state = WorkerState.RESTARTING
            self.loop.call_later(delay_s, self._launch_if_due, self.incarnation)
        else:
            self._launch()

    def _launch_if_due(self, incarnation: int) -> None:
        # A reset or shutdown may have overtaken this scheduled restart.
        if incarnation == self.incarnation and self.state is WorkerState.RESTARTING:
            self._launch()

    def _launch(self) -> None:
        self.incarnation += 1
        self.expect_exit = False
        spec = replace(self.spec, incarnation=self.incarnation)
        launched = (self.incarnation == 1 and EARLY_LAUNCH.take(spec)) or start_process(spec)
        process, incarnation = launched.process, self.incarnation
        if self.channel is not None:
            self.channel.close()
        self.channel = Channel(launched.conn, self.loop, lambda messages: self._on_messages(incarnation, messages),
                               lambda: self._reap(process, incarnation))
        self.process, self.pid = process, process.pid
        self.state = WorkerState.STARTING
        self.start_time, self.ready_time = launched.wall, None
        self.spawned_at = launched.at
        self.last_heartbeat = time.monotonic()
        self.ready_due = max(self.ready_due, self.spawned_at + self.expected_warmup_s)
        self.canary, self.device_error, self.warmup_progress = None, None, None

    def _reap(self, process: multiprocessing.process.BaseProcess, incarnation: int) -> None:
        """The pipe closed: the process is exiting. Collect its exit code off the loop."""
        def wait() -> None:
            process.join(timeout=5)
            try:
                self.loop.call_soon_threadsafe(self._exited, incarnation, process.exitcode)
            except RuntimeError:  # loop closed: the server is gone
                pass

        threading.Thread(target=wait, name=f"worker-reaper-{self.worker_id}", daemon=True).start()

    def _on_messages(self, incarnation: int, messages: list[tuple[Any, ...]]) -> None:
        if incarnation == self.incarnation:
            for message in p.unbatch(messages):
                self._on_message(self, message)

    def _exited(self, incarnation: int, exitcode: int | None) -> None:
        if incarnation == self.incarnation:
            self.channel = None
            self._on_exit(self, exitcode)

    def send_soon(self, message: tuple[Any, ...]) -> None:
        """Queue work for the worker; one pipe write per loop iteration carries all of it."""
        self._outbox.put(message)

    def send(self, message: tuple[Any, ...]) -> bool:
        """Write to the worker without blocking the loop (see Channel)."""
        return self.channel is not None and self.channel.send(message)

    def stop(self) -> None:
        """Ask the worker to finish its in-flight work and exit."""
        self.expect_exit = True
        if not self.send((p.STOP,)):
            self.kill()

    def kill(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            process.kill()
