"""Health, liveness, resets and the model list."""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.web.context import note
from ttmedia.web.scheduler_problems import as_problem
from ttmedia.web.responses import json_response
from ttmedia.observability.looplag import WINDOW_S
from ttmedia.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ttmedia.web.runtime import current
from ttmedia.scheduler.devices import format_group
from ttmedia.scheduler.errors import ResetFailed
from ttmedia.scheduler.protocol import RunnerInfo
from ttmedia.scheduler.readiness import WorkerState
from ttmedia.scheduler.scheduler import matches
from ttmedia.scheduler.status import SchedulerStatus, WorkerStatus

#: `created` in /v1/models: fixed, as upstream, since simulated models have no build date.
MODEL_CREATED = 1700000000


async def get_health() -> Response:
    scheduler = current().scheduler
    pools = list(scheduler.pools.values())
    not_serving = [pl for pl in pools if not pl.state().serving]
    if not pools:
        raise problems.NotReady("No model is served yet.", reason="warming_up", retry_after=1)
    if not_serving:
        # Report the model furthest from ready: its wait is the one that matters.
        raise max(not_serving, key=lambda pl: pl.retry_after()).not_ready()
    return json_response({})


def _worker_entry(w: WorkerStatus) -> dict[str, Any]:
    """Upstream's worker_info entry, plus our state, load, last error and mesh."""
    return {
        "pid": w.pid,
        "is_alive": w.alive,
        "start_time": w.start_time,
        "is_ready": w.state is WorkerState.READY,
        "restart_count": w.restart_count,
        "error_count": w.error_count,
        "ready_time": w.ready_time,
        "state": w.state.value,
        "devices": list(w.devices),
        "in_flight": w.in_flight,
        "calls_ahead": w.calls_ahead,
        "last_error": w.last_error,
        "warmup_progress": w.warmup_progress,
        "last_canary_ok": w.last_canary_ok,
        "mesh_shape": list(w.mesh_shape),
    }


def _liveness_body(status: SchedulerStatus) -> dict[str, Any]:
    """Upstream's /tt-liveness body for the whole server, with a `models` entry per model."""
    worker_info: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for m in status.models:
        infos = {w.worker_id: _worker_entry(w) for w in m.workers}
        worker_info.update(infos)
        models[m.name] = {
            "family": m.family,
            "state": m.state.value,
            "model_ready": m.state.serving,
            "queue_size": m.queue_size,
            "runner_in_use": m.runner,
            "runner_target": m.runner_target,
            "simulated": m.simulated,
            "worker_info": infos,
        }
    # Upstream serves one model on one mesh; with several, the first worker's.
    mesh = next((w.mesh_shape for m in status.models for w in m.workers), RunnerInfo().mesh_shape)
    return {
        "status": "alive",
        "model_ready": bool(status.models) and all(m.state.serving for m in status.models),
        "queue_size": sum(m.queue_size for m in status.models),
        "max_queue_size": status.max_queue_size,
        "device_mesh_shape": list(mesh),
        "device": status.device,
        "worker_info": worker_info,
        "runner_in_use": ",".join(sorted({m.runner for m in status.models})),
        "pid": os.getpid(),
        "models": models,
    }


async def get_liveness() -> Response:
    scheduler = current().scheduler
    body = _liveness_body(scheduler.status())
    if body["model_ready"]:
        return json_response(body)
    not_serving = [pl for pl in scheduler.pools.values() if not pl.state().serving]
    problem: problems.Problem
    if not not_serving:
        problem = problems.NotReady("No model is served yet.", reason="warming_up", retry_after=1)
    else:
        # The model furthest from ready, as /health reports it.
        problem = as_problem(max(not_serving, key=lambda pl: pl.retry_after()).not_ready())
    note(reason=problem.reason)
    return json_response({"status": body.pop("status"), "reason": problem.reason, "detail": problem.detail, **body},
                         status=503, headers=problem.headers)


async def deep_reset() -> Response:
    try:
        count = await current().scheduler.deep_reset()
    except ResetFailed as exc:
        raise problems.Internal(f"The reset command failed; no worker was restarted: {exc}") from None
    return json_response({"status": "Reset scheduled", "workers": count}, status=202)


async def reset_device(device_id: str) -> Response:
    scheduler = current().scheduler
    worker = scheduler.find_worker(device_id)
    try:
        await scheduler.reset_worker(worker)
    except ResetFailed as exc:
        raise problems.Internal(f"The reset command failed; the worker was not restarted: {exc}") from None
    return json_response({"status": f"Reset of device {device_id} scheduled", "workers": 1}, status=202)


async def list_models() -> Response:
    scheduler = current().scheduler
    data = []
    for pool in scheduler.pools.values():
        state = pool.state()
        data.append({
            "id": pool.name,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": "tenstorrent",
            "family": pool.model.family,
            "ready": state.serving,
            "state": state.value,
            "routes": list(pool.model.info.routes),
            "devices": [format_group(g) for g in pool.model.groups],
            "runner": pool.model.runner,
            "runner_target": pool.model.runner_target,
            "simulated": pool.model.simulated,
        })
    return json_response({"object": "list", "data": data})


# --- probes and metrics ----------------------------------------------------------------------

def _check_live() -> tuple[float, float]:
    """Seconds of uptime and the worst recent event-loop lag; 503 if the loop has been stuck
    (a callback ran that late) or the scheduler's watchdog has stopped."""
    runtime = current()
    scheduler = runtime.scheduler
    now = time.monotonic()
    limit = max(10 * scheduler.settings.worker_heartbeat_seconds, 5.0)
    lag = runtime.loop_lag.worst_recent()
    if lag > limit:
        raise problems.NotReady(f"The event loop was stuck for {lag:.1f} s in the last {WINDOW_S:.0f} s.",
                                reason="no_workers", retry_after=limit)
    stalled_for = now - scheduler.last_watch
    if scheduler.watching and stalled_for > limit:
        raise problems.NotReady(f"The scheduler watchdog has not run for {stalled_for:.0f} s.",
                                reason="no_workers", retry_after=limit)
    return now - scheduler.started_at, lag


async def get_livez() -> Response:
    uptime, lag = _check_live()
    return json_response({"live": True, "uptime_seconds": round(uptime, 3), "event_loop_lag_seconds": round(lag, 4)})


async def get_v2_live() -> Response:
    _check_live()
    return json_response({"live": True})


async def get_v2_ready() -> Response:
    await get_health()  # raises the same 503 when not ready
    return json_response({"ready": True})


async def get_v2_model_ready(model: str) -> Response:
    scheduler = current().scheduler
    strict = scheduler.settings.strict_model_names
    pool = next((pl for pl in scheduler.pools.values() if matches(pl, model, strict)), None)
    if pool is None:
        raise problems.ModelNotFound(f"Model {model!r} is not served here.")
    pool.check_ready()
    return json_response({"name": pool.name, "ready": True})


async def get_metrics() -> Response:
    return Response(await current().metrics.render_in_steps(), media_type=METRICS_CONTENT_TYPE)
