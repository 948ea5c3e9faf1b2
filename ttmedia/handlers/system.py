"""Health, liveness, resets and the model list."""

from __future__ import annotations

from starlette.responses import Response

from ttmedia import problems
from ttmedia.http import json_response
from ttmedia.runtime import current
from ttmedia.scheduler.devices import format_group

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


async def get_liveness() -> Response:
    scheduler = current().scheduler
    body = scheduler.liveness()
    if body["model_ready"]:
        return json_response(body)
    waits = [pl.retry_after() for pl in scheduler.pools.values() if not pl.state().serving] or [1.0]
    return json_response(body, status=503, headers=problems.retry_after_header(max(waits)))


async def deep_reset() -> Response:
    count = current().scheduler.deep_reset()
    return json_response({"status": "Reset scheduled", "workers": count}, status=202)


async def reset_device(device_id: str) -> Response:
    scheduler = current().scheduler
    worker = scheduler.find_worker(device_id)
    scheduler.reset_worker(worker)
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
        })
    return json_response({"object": "list", "data": data})
