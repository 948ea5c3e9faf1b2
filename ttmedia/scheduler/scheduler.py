"""The Scheduler: every served model's pool, worker lifecycle (restart with backoff, watchdog,
warmup deadline, idle canary, device errors, resets) and the snapshot that /health and
/tt-liveness report."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import replace
from collections.abc import Callable
from typing import Any

from ttmedia.runners.base import RunnerContext
from ttmedia.runners.catalog import DEVICE_SPEED
from ttmedia.runners.faults import Fault, parse_faults
from ttmedia.runners.types import EMBEDDING, LLM
from ttmedia.scheduler import protocol as p
from ttmedia.scheduler.errors import ResetFailed, UnknownDevice, UnknownModel
from ttmedia.scheduler.devices import DeviceGroup, ServedModel, format_group, served_models
from ttmedia.scheduler.pool import ModelPool
from ttmedia.scheduler.protocol import WorkerSpec
from ttmedia.scheduler.readiness import ModelState, WorkerState
from ttmedia.scheduler.forkserver import start_forkserver
from ttmedia.scheduler.status import SchedulerStatus
from ttmedia.scheduler.worker import EARLY_LAUNCH, WorkerHandle
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.scheduler")


#: Seconds a reset command may run before it counts as failed.
RESET_COMMAND_TIMEOUT_S = 120.0
#: Lines of a failed reset command's stderr kept for the answer and the log.
RESET_STDERR_LINES = 5

_canary_ids = itertools.count(1)


def worker_spec(settings: Settings, faults: tuple[Fault, ...], model: ServedModel, group: DeviceGroup,
                incarnation: int = 0) -> WorkerSpec:
    """What the worker process of `model` on `group` is started with."""
    info = model.info
    timing = info.timing
    if model.simulated:  # real runners take what their devices take; the timing is only an estimate
        timing = timing.scaled(settings.sim_speed * DEVICE_SPEED.get(settings.device, 1.0))
        if settings.sim_warmup_seconds is not None:
            timing = replace(timing, warmup_s=settings.sim_warmup_seconds)
    if model.warmup_s is not None:
        timing = replace(timing, warmup_s=model.warmup_s)
    return WorkerSpec(
        runner=model.runner_target or info.runner,
        context=RunnerContext(model.name, info.family, settings.device, group, timing, dict(info.options)),
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        faults=tuple(f for f in faults if f.applies_to(model.name, group)),
        incarnation=incarnation,
        # Nothing downloads at run time: Hugging Face libraries read local files only.
        env={"TT_VISIBLE_DEVICES": format_group(group), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


def launch_workers_early(settings: Settings, models: list[ServedModel]) -> None:
    """Start every worker's first process now, in the background; the Scheduler adopts them."""
    faults = tuple(parse_faults(settings.sim_faults))
    EARLY_LAUNCH.start([worker_spec(settings, faults, m, g, incarnation=1) for m in models for g in m.groups])


def model_names(pool: ModelPool, strict: bool = False) -> list[str]:
    """The names a request may give for `pool`'s model: its served name and Hugging Face id
    (and, unless strict, its catalog name), without repeats, the served name first."""
    info = pool.model.info
    names = [pool.name, info.hf_id] if strict else [pool.name, info.name, info.hf_id]
    return list(dict.fromkeys(n for n in names if n))


def matches(pool: ModelPool, name: str, strict: bool = False) -> bool:
    if strict:
        return name in model_names(pool, strict=True)
    wanted = name.casefold()
    return any(wanted == n.casefold() for n in model_names(pool))


class Scheduler:
    def __init__(self, settings: Settings, models: list[ServedModel] | None = None) -> None:
        self.settings = settings
        self.models = models if models is not None else served_models(settings)
        self.faults = tuple(parse_faults(settings.sim_faults))
        self.pools: dict[str, ModelPool] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        self.last_watch = time.monotonic()  # the watchdog's last tick: /livez checks it
        self.observer: Any = None  # ttmedia.observability.metrics.Metrics, when attached
        self._background: set[asyncio.Task[None]] = set()
        start_forkserver()  # overlaps the rest of the server's start-up

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker of every model at once; return without waiting for warmup."""
        loop = asyncio.get_running_loop()
        for model in self.models:
            self.pools[model.name] = ModelPool(model, self.settings, loop, self._make_worker_factory(loop),
                                               observer=self.observer)
        for pool in self.pools.values():
            for worker in pool.workers:
                if pool.model.missing:
                    worker.state = WorkerState.FAILED
                    worker.last_error = (f"runner {pool.model.runner} needs the Python package(s) "
                                         f"{', '.join(pool.model.missing)}: pip install 'ttmedia[cpu]'")
                    log.error("model %s cannot start: %s", pool.name, worker.last_error)
                else:
                    worker.spawn()
        for pool in self.pools.values():
            if pool.model.family in (LLM, EMBEDDING) and not pool.model.missing:
                pool.load_tokenizer_soon()
        self._watchdog = asyncio.ensure_future(self._watch())
        log.info("scheduler started: %s", ", ".join(
            f"{m.name}@{','.join('(' + format_group(g) + ')' for g in m.groups)}" for m in self.models))

    def _make_worker_factory(self, loop: asyncio.AbstractEventLoop) -> Any:
        def make(pool: ModelPool, group: DeviceGroup) -> WorkerHandle:
            spec = worker_spec(self.settings, self.faults, pool.model, group)
            return WorkerHandle(spec, loop, self._on_message, lambda w, code: self._on_exit(pool, w, code))

        return make

    def begin_drain(self, grace_s: float | None = None) -> float:
        """Refuse new work from now on; return the drain deadline (monotonic)."""
        grace = self.settings.drain_grace_seconds if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        for pool in self.pools.values():
            if not pool.draining:
                pool.draining, pool.drain_deadline = True, deadline
        return min((pool.drain_deadline for pool in self.pools.values()), default=deadline)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new work, let in-flight work finish within the grace period, stop workers."""
        deadline = self.begin_drain(grace_s)
        grace = max(deadline - time.monotonic(), 0.0)
        idle = [asyncio.ensure_future(pool.idle.wait()) for pool in self.pools.values()]
        if idle:
            await asyncio.wait(idle, timeout=grace)
            for waiter in idle:
                waiter.cancel()
        if self._watchdog:
            self._watchdog.cancel()
        for task in list(self._background):
            task.cancel()
        workers = [w for pool in self.pools.values() for w in pool.workers]
        for w in workers:
            w.stop()
        await asyncio.to_thread(self._reap, workers, max(deadline - time.monotonic(), 2.0))
        for pool in self.pools.values():
            for w in pool.workers:
                w.state = WorkerState.STOPPED
                pool.on_worker_lost(w)

    @staticmethod
    def _reap(workers: list[WorkerHandle], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for w in workers:
            if w.process is not None:
                w.process.join(max(deadline - time.monotonic(), 0.05))
        for w in workers:
            if w.process is not None and w.process.is_alive():
                w.process.kill()
                w.process.join(2)

    # --- worker events --------------------------------------------------------------------------

    def _pool_of(self, worker: WorkerHandle) -> ModelPool:
        return self.pools[worker.spec.context.model]

    def _on_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        pool = self._pool_of(worker)
        if kind == p.HEARTBEAT:
            worker.last_heartbeat = time.monotonic()
        elif kind == p.TOKEN:
            pool.on_token(worker, message[1], message[2], message[3])
        elif kind == p.RESULT:
            pool.on_result(worker, message[1], message[2])
            worker.last_active = time.monotonic()
        elif kind == p.CHUNK:
            pool.on_chunk(worker, message[1], message[2])
        elif kind == p.END:
            pool.on_end(worker, message[1], message[2])
            worker.last_active = time.monotonic()
        elif kind == p.ERROR:
            pool.on_error(worker, message[1], message[2], message[3])
        elif kind == p.PROGRESS:
            if message[1] is None:
                worker.warmup_progress = message[2].percent
            else:
                pool.on_progress(worker, message[1], message[2])
        elif kind == p.CANARY_RESULT:
            self._canary_done(pool, worker, message[1], message[2], message[3])
        elif kind == p.DEVICE_ERROR:
            worker.device_error = worker.last_error = f"device error: {message[1]}"
            log.error("worker %s of %s reports a device error: %s", worker.worker_id, pool.name, message[1])
            pool.on_device_error(worker, message[2], message[1])
        elif kind == p.HELLO:
            worker.info = pool.runner_info = message[2]
            worker.state = WorkerState.WARMING
        elif kind == p.READY:
            worker.info = pool.runner_info = message[2]
            worker.state = WorkerState.READY
            worker.ready_time = time.time()
            worker.warmup_progress = None
            worker.last_active = time.monotonic()
            log.info("worker %s of %s ready after %.2fs", worker.worker_id, pool.name, message[1])
            if self.observer is not None:
                self.observer.worker_ready(pool.name, time.monotonic() - worker.spawned_at)
            pool.pump()
        elif kind == p.INIT_FAILED:
            worker.last_error = message[1]
            worker.error_count += 1
            log.error("worker %s of %s failed to initialise: %s", worker.worker_id, pool.name, message[1])

    def _on_exit(self, pool: ModelPool, worker: WorkerHandle, exitcode: int | None) -> None:
        was_expected = worker.expect_exit
        if not was_expected and worker.state is not WorkerState.STOPPED:
            worker.last_error = worker.last_error or f"worker process exited with code {exitcode}"
            log.warning("worker %s of %s exited (code %s)", worker.worker_id, pool.name, exitcode)
        if worker.state is WorkerState.STOPPED or pool.draining:
            worker.state = WorkerState.STOPPED
            pool.on_worker_lost(worker)
            return
        if was_expected:  # a reset: come back at once, with a clean record
            worker.state = WorkerState.RESTARTING
            pool.on_worker_lost(worker)
            worker.restart_times.clear()
            worker.spawn()
            return
        if worker.device_error is not None:
            # The device broke: reset it (RESET_DEVICE_COMMAND) before a fresh worker opens it.
            worker.state = WorkerState.RESTARTING
            pool.on_worker_lost(worker)
            self._in_background(asyncio.ensure_future(self._reset_then_restart(worker)))
            return
        self._schedule_restart(worker)
        pool.on_worker_lost(worker)

    def _in_background(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reset_then_restart(self, worker: WorkerHandle) -> None:
        try:
            await self.run_reset_command()
        except ResetFailed as exc:
            worker.state = WorkerState.FAILED
            worker.last_error = f"{worker.device_error}; the reset after it failed: {exc}"
            log.error("worker %s of %s stays down: %s", worker.worker_id, worker.spec.context.model, exc)
            return
        if worker.state is WorkerState.RESTARTING:  # not stopped or reset meanwhile
            self._schedule_restart(worker)

    def _schedule_restart(self, worker: WorkerHandle) -> None:
        s = self.settings
        now = time.monotonic()
        worker.restart_times = [t for t in worker.restart_times if now - t < s.worker_restart_window_seconds]
        if len(worker.restart_times) >= s.max_worker_restart_count:
            worker.state = WorkerState.FAILED
            log.error("worker %s of %s failed %d times in %.0fs; giving up until a reset",
                      worker.worker_id, worker.spec.context.model, len(worker.restart_times) + 1,
                      s.worker_restart_window_seconds)
            return
        worker.restart_times.append(now)
        worker.restart_count += 1
        delay = min(s.worker_restart_backoff_seconds * 2 ** (len(worker.restart_times) - 1),
                    s.worker_restart_backoff_max_seconds)
        worker.state = WorkerState.RESTARTING
        worker.spawn(delay_s=delay)

    async def _watch(self) -> None:
        """The explicit hang checks. A worker process that stops sending heartbeats (sent from
        a thread of their own, whatever its runner does) is frozen; a warmup past
        WARMUP_TIMEOUT_SECONDS failed; a call without progress past its deadline hung; an idle
        worker whose canary fails or overruns is wedged. Each is replaced."""
        s = self.settings
        while True:
            await asyncio.sleep(min(s.worker_heartbeat_seconds, 1.0))
            now = self.last_watch = time.monotonic()
            for pool in self.pools.values():
                for w in pool.workers:
                    if w.alive:
                        self._check(pool, w, now)

    def _check(self, pool: ModelPool, w: WorkerHandle, now: float) -> None:
        s = self.settings
        live = w.state in (WorkerState.STARTING, WorkerState.WARMING, WorkerState.READY)
        if live and now - w.last_heartbeat > s.worker_heartbeat_timeout_seconds:
            w.last_error = f"no heartbeat for {now - w.last_heartbeat:.1f} s; killed as wedged"
            log.error("worker %s of %s is wedged; killing it", w.worker_id, pool.name)
            w.kill()
        elif w.state in (WorkerState.STARTING, WorkerState.WARMING) and now - w.spawned_at > s.warmup_timeout_seconds:
            w.last_error = (f"warmup did not finish within WARMUP_TIMEOUT_SECONDS "
                            f"({s.warmup_timeout_seconds:g} s); initialisation failed")
            w.error_count += 1
            log.error("worker %s of %s: %s", w.worker_id, pool.name, w.last_error)
            w.kill()
        elif pool.wedged_tickets(w, now):
            log.error("worker %s of %s made no progress on a request; killing it", w.worker_id, pool.name)
            pool.replace_wedged(w)
        elif w.canary is not None and now > w.canary[1]:
            self._canary_failed(pool, w, f"the canary request did not finish within {w.info.canary_timeout_s:g} s")
        elif self._canary_due(pool, w, now):
            call_id = f"c{next(_canary_ids)}"
            w.canary = (call_id, now + w.info.canary_timeout_s)
            pool.hold_slot(w)  # the canary holds a device slot: requests queue behind it
            w.send_soon((p.CANARY, call_id))

    def _canary_due(self, pool: ModelPool, w: WorkerHandle, now: float) -> bool:
        interval = self.settings.canary_interval_seconds
        return (interval > 0 and w.info.canary and w.canary is None and w.state is WorkerState.READY
                and pool.calls_of(w).idle and now - w.last_active >= interval)

    def _canary_done(self, pool: ModelPool, w: WorkerHandle, call_id: str, ok: bool, message: str) -> None:
        if w.canary is None or w.canary[0] != call_id:
            return  # an answer after its deadline: the worker is being replaced already
        w.canary = None
        pool.release_slot(w)
        w.last_active = time.monotonic()
        if ok:
            w.canary_ok_at = time.time()
            pool.pump()
        else:
            self._canary_failed(pool, w, f"the canary request failed: {message}")

    def _canary_failed(self, pool: ModelPool, w: WorkerHandle, why: str) -> None:
        w.canary = None
        w.error_count += 1
        w.last_error = f"{why}; replaced as wedged"
        log.error("worker %s of %s: %s", w.worker_id, pool.name, w.last_error)
        w.kill()

    # --- lookup ---------------------------------------------------------------------------------

    def pool(self, family: str, model: str | None = None,
             serves: Callable[[ModelPool], bool] | None = None) -> ModelPool:
        """The pool that answers a request of `family` naming `model` (None: the default).

        A name matches a served model by its served name, catalog name or Hugging Face id,
        case-insensitively (exactly, served name or Hugging Face id only, with
        STRICT_MODEL_NAMES). A name that matches nothing reaches the route's only candidate when
        there is exactly one: upstream serves one model per process and its clients send
        `"test"` or `"default"`. With several candidates it is UnknownModel, listing them. `serves`
        says which of the family's models can serve this route (video: text- or image-to-video);
        by default all of them. The caller refuses a named model that cannot.
        """
        family_pools = [pl for pl in self.pools.values() if pl.model.family == family]
        if not family_pools:
            raise UnknownModel(f"No {family} model is served by this server.")
        candidates = [pl for pl in family_pools if serves is None or serves(pl)] or family_pools
        chosen: ModelPool | None = candidates[0]
        if model:
            strict = self.settings.strict_model_names
            chosen = next((pl for pl in family_pools if matches(pl, model, strict)), None)
            if chosen is None and not strict and len(candidates) == 1:
                chosen = candidates[0]
            if chosen is None:
                served = ", ".join(pl.name for pl in candidates)
                raise UnknownModel(
                    f"Model {model!r} is not served here (served for this route: {served}).")
        assert chosen is not None
        return chosen

    @property
    def watching(self) -> bool:
        return self._watchdog is not None and not self._watchdog.done()

    def families(self) -> set[str]:
        return {pl.model.family for pl in self.pools.values()}

    def gate(self, family: str) -> None:
        """Raise NotReady unless at least one model of the family can serve (the readiness gate)."""
        candidates = [pl for pl in self.pools.values() if pl.model.family == family]
        if not candidates:
            raise UnknownModel(f"No {family} model is served by this server.")
        if not any(pl.state().serving for pl in candidates):
            raise min(candidates, key=lambda pl: pl.retry_after()).not_ready()

    # --- resets ---------------------------------------------------------------------------------

    def find_worker(self, device_id: str) -> WorkerHandle:
        wanted = device_id.strip().strip("()").replace(" ", "")
        for pool in self.pools.values():
            for w in pool.workers:
                if wanted == w.worker_id or wanted in {str(d) for d in w.spec.context.device_group}:
                    return w
        raise UnknownDevice(f"No worker uses device {device_id!r}.")

    async def reset_worker(self, worker: WorkerHandle) -> None:
        """Reset the device (RESET_DEVICE_COMMAND), then restart its worker now, whatever its
        state (a failed worker gets a fresh start). A failed command leaves the worker as it
        is and raises ResetFailed."""
        await self.run_reset_command()
        self._restart_now(worker)

    async def deep_reset(self) -> int:
        """One reset command for the whole host, then every worker restarts."""
        await self.run_reset_command()
        workers = [w for pool in self.pools.values() for w in pool.workers]
        for w in workers:
            self._restart_now(w)
        return len(workers)

    @staticmethod
    def _restart_now(worker: WorkerHandle) -> None:
        worker.restart_times.clear()
        if worker.alive:
            worker.expect_exit = True
            worker.kill()
        else:
            worker.state = WorkerState.RESTARTING
            worker.spawn()

    async def run_reset_command(self) -> None:
        """RESET_DEVICE_COMMAND as a child process the event loop waits on (a reset can take
        minutes; the server keeps serving meanwhile). Nothing to do when it is unset."""
        command = self.settings.reset_device_command
        if not command:
            return
        log.info("running the reset command: %s", command)
        proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), RESET_COMMAND_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise ResetFailed(f"{command!r} did not finish within {RESET_COMMAND_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-RESET_STDERR_LINES:])
            log.error("reset command %r exited with %s: %s", command, proc.returncode, tail)
            raise ResetFailed(f"{command!r} exited with code {proc.returncode}" + (f": {tail}" if tail else ""))

    # --- reporting ------------------------------------------------------------------------------

    def model_states(self) -> dict[str, ModelState]:
        return {name: pool.state() for name, pool in self.pools.items()}

    def status(self) -> SchedulerStatus:
        """Every model and worker as they stand now (what /tt-liveness reports)."""
        return SchedulerStatus(self.settings.device, self.settings.max_queue_size,
                               tuple(pool.status() for pool in self.pools.values()))
