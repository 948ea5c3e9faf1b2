"""The Scheduler: every served model's pool, worker lifecycle (restart with backoff, watchdog,
resets) and the views that /health and /tt-liveness report."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from dataclasses import replace
from typing import Any

from ttmedia import problems
from ttmedia.context import note
from ttmedia.runners.base import RunnerContext
from ttmedia.runners.catalog import DEVICE_SPEED
from ttmedia.runners.faults import Fault, parse_faults
from ttmedia.scheduler import protocol as p
from ttmedia.scheduler.devices import DeviceGroup, ServedModel, format_group, served_models
from ttmedia.scheduler.pool import ModelPool
from ttmedia.scheduler.protocol import WorkerSpec
from ttmedia.scheduler.readiness import ModelState, WorkerState
from ttmedia.scheduler.forkserver import start_forkserver
from ttmedia.scheduler.worker import EARLY_LAUNCH, WorkerHandle
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.scheduler")


def worker_spec(settings: Settings, faults: tuple[Fault, ...], model: ServedModel, group: DeviceGroup,
                incarnation: int = 0) -> WorkerSpec:
    """What the worker process of `model` on `group` is started with."""
    info = model.info
    timing = info.timing.scaled(settings.sim_speed * DEVICE_SPEED.get(settings.device, 1.0))
    if settings.sim_warmup_seconds is not None:
        timing = replace(timing, warmup_s=settings.sim_warmup_seconds)
    if model.warmup_s is not None:
        timing = replace(timing, warmup_s=model.warmup_s)
    return WorkerSpec(
        runner=info.runner,
        context=RunnerContext(model.name, info.family, settings.device, group, timing, dict(info.options)),
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        faults=tuple(f for f in faults if f.applies_to(model.name, group)),
        incarnation=incarnation,
        env={"TT_VISIBLE_DEVICES": format_group(group)},
    )


def launch_workers_early(settings: Settings, models: list[ServedModel]) -> None:
    """Start every worker's first process now, in the background; the Scheduler adopts them."""
    faults = tuple(parse_faults(settings.sim_faults))
    EARLY_LAUNCH.start([worker_spec(settings, faults, m, g, incarnation=1) for m in models for g in m.groups])


class Scheduler:
    def __init__(self, settings: Settings, models: list[ServedModel] | None = None) -> None:
        self.settings = settings
        self.models = models if models is not None else served_models(settings)
        self.faults = tuple(parse_faults(settings.sim_faults))
        self.pools: dict[str, ModelPool] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        self.last_watch = time.monotonic()  # the watchdog's last tick: /livez checks it
        self.observer: Any = None  # ttmedia.metrics.Metrics, when attached
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
                worker.spawn()
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
        elif kind == p.RESULT:
            pool.on_result(worker, message[1], message[2])
        elif kind == p.CHUNK:
            pool.on_chunk(worker, message[1], message[2])
        elif kind == p.END:
            pool.on_end(worker, message[1], message[2])
        elif kind == p.ERROR:
            pool.on_error(worker, message[1], message[2], message[3])
        elif kind == p.HELLO:
            worker.capacity = max(1, int(message[2]))
            worker.state = WorkerState.WARMING
        elif kind == p.READY:
            worker.state = WorkerState.READY
            worker.ready_time = time.time()
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
        self._schedule_restart(worker)
        pool.on_worker_lost(worker)

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
        """Kill workers whose heartbeat stopped: a wedged device or a stuck process."""
        limit = self.settings.worker_heartbeat_timeout_seconds
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_seconds)
            now = self.last_watch = time.monotonic()
            for pool in self.pools.values():
                for w in pool.workers:
                    live = w.state in (WorkerState.STARTING, WorkerState.WARMING, WorkerState.READY)
                    if live and w.alive and now - w.last_heartbeat > limit:
                        w.last_error = f"no heartbeat for {now - w.last_heartbeat:.1f} s; killed as wedged"
                        log.error("worker %s of %s is wedged; killing it", w.worker_id, pool.name)
                        w.kill()
                    elif w.alive and pool.wedged_tickets(w, now):
                        log.error("worker %s of %s made no progress on a request; killing it",
                                  w.worker_id, pool.name)
                        pool.replace_wedged(w)

    # --- lookup ---------------------------------------------------------------------------------

    def pool(self, family: str, model: str | None = None) -> ModelPool:
        """The pool serving `model` (default: the family's first served model)."""
        candidates = [pl for pl in self.pools.values() if pl.model.family == family]
        if model:
            for pl in candidates:
                if model in (pl.name, pl.model.info.name, pl.model.info.hf_id):
                    note(model=pl.name)
                    return pl
            served = ", ".join(pl.name for pl in candidates) or "none"
            raise problems.ModelNotFound(f"Model {model!r} is not served here (served for this route: {served}).")
        if not candidates:
            raise problems.ModelNotFound(f"No {family} model is served by this server.")
        note(model=candidates[0].name)
        return candidates[0]

    @property
    def watching(self) -> bool:
        return self._watchdog is not None and not self._watchdog.done()

    def families(self) -> set[str]:
        return {pl.model.family for pl in self.pools.values()}

    def gate(self, family: str) -> None:
        """Raise 503 unless at least one model of the family can serve (the readiness gate)."""
        candidates = [pl for pl in self.pools.values() if pl.model.family == family]
        if not candidates:
            raise problems.ModelNotFound(f"No {family} model is served by this server.")
        if not any(pl.state().serving for pl in candidates):
            raise min(candidates, key=lambda pl: pl.retry_after()).not_ready()

    # --- resets ---------------------------------------------------------------------------------

    def find_worker(self, device_id: str) -> WorkerHandle:
        wanted = device_id.strip().strip("()").replace(" ", "")
        for pool in self.pools.values():
            for w in pool.workers:
                if wanted == w.worker_id or wanted in {str(d) for d in w.spec.context.device_group}:
                    return w
        raise problems.NotFound(f"No worker uses device {device_id!r}.")

    def reset_worker(self, worker: WorkerHandle) -> None:
        """Restart one worker now, whatever its state (a failed worker gets a fresh start)."""
        self._run_reset_command()
        worker.restart_times.clear()
        if worker.alive:
            worker.expect_exit = True
            worker.kill()
        else:
            worker.state = WorkerState.RESTARTING
            worker.spawn()

    def deep_reset(self) -> int:
        workers = [w for pool in self.pools.values() for w in pool.workers]
        for w in workers:
            self.reset_worker(w)
        return len(workers)

    def _run_reset_command(self) -> None:
        if self.settings.reset_device_command:
            subprocess.run(self.settings.reset_device_command, shell=True, check=False, timeout=120)

    # --- reporting ------------------------------------------------------------------------------

    def model_states(self) -> dict[str, ModelState]:
        return {name: pool.state() for name, pool in self.pools.items()}

    def liveness(self) -> dict[str, Any]:
        states = self.model_states()
        worker_info: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for name, pool in self.pools.items():
            infos = {w.worker_id: w.liveness() for w in pool.workers}
            worker_info.update(infos)
            models[name] = {
                "family": pool.model.family,
                "state": states[name].value,
                "model_ready": states[name].serving,
                "queue_size": len(pool.pending),
                "runner_in_use": pool.model.info.runner,
                "worker_info": infos,
            }
        return {
            "status": "alive",
            "model_ready": bool(states) and all(s.serving for s in states.values()),
            "queue_size": sum(len(pool.pending) for pool in self.pools.values()),
            "max_queue_size": self.settings.max_queue_size,
            "device_mesh_shape": [1, 1],
            "device": self.settings.device,
            "worker_info": worker_info,
            "runner_in_use": ",".join(sorted({pl.model.info.runner for pl in self.pools.values()})),
            "pid": os.getpid(),
            "models": models,
        }
