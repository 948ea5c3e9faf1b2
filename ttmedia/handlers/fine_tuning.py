"""Fine-tuning jobs (upstream training service at /v1): catalog, jobs, metrics, logs, checkpoints.

Every /v1/jobs route is scoped by the organisation header (ttmedia.web.organization): a job of another
organisation does not exist for the caller (404, never 403, so ids do not leak).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool
from ttmedia.handlers._jobs import create_job, file_response, get_or_404, open_artifact, page, request_hash
from ttmedia.web.responses import json_response
from ttmedia.jobs.kinds import CHECKPOINT_DIR
from ttmedia.jobs.models import CHECKPOINT_ID_RE, JobType
from ttmedia.web.organization import current_org
from ttmedia.runners.catalog import CATALOG
from ttmedia.runners.types import TRAINING
from ttmedia.web.runtime import current

TRAINERS = ["lora"]
OPTIMIZERS = ["adamw", "adam", "sgd"]
DATASETS = [("SST2", "Stanford Sentiment Treebank v2"), ("Alpaca", "Stanford Alpaca instructions"),
            ("Custom", "Custom dataset (file_type + template)")]
LOCATION = "/v1/jobs/{id}"
#: Upstream: a Custom dataset names its file, the file's type and the prompt template.
CUSTOM_REQUIRES = ("train_dataset_path", "file_type", "template")


async def get_training_catalog() -> Response:
    runtime = current()
    served = {pl.model.info.name: pl for pl in runtime.scheduler.pools.values() if pl.model.family == TRAINING}
    models = [{"id": info.name, "display_name": info.hf_id or info.name, "supported": info.name in served,
               "model_config": {"runner": info.runner, "hf_id": info.hf_id}}
              for info in CATALOG.values() if info.family == TRAINING]
    workers = sum(len(pl.workers) for pl in served.values())
    devices = sum(len(g) for pl in served.values() for g in pl.model.groups)
    device = runtime.settings.device
    return json_response({
        "supported": {"trainers": TRAINERS, "optimizers": OPTIMIZERS},
        "models": models,
        "datasets": [{"id": d, "display_name": name, "supported": True} for d, name in DATASETS],
        "trainers": TRAINERS,
        "optimizers": OPTIMIZERS,
        "clusters": [{"id": device, "display_name": f"Tenstorrent {device}", "supported": True, "partition": None,
                      "mesh_shape": [1, max(1, devices)], "num_workers": workers,
                      "topology": {"mesh_shape": [1, max(1, devices)], "nodes": 1, "total_devices": devices}}],
    })


async def create_fine_tuning_job(body: dict[str, Any]) -> Response:
    runtime = current()
    org = current_org()
    pool = choose_pool(TRAINING, body.get("model"))
    pool.check_ready()
    device = runtime.settings.device
    requested = body.get("device_type") or device
    if requested != device:
        raise problems.InvalidRequest(f"Request device '{requested}' does not match server device '{device}'.")
    if body.get("dataset_loader") == "Custom":
        missing = [f for f in CUSTOM_REQUIRES if not body.get(f)]
        if missing:
            raise problems.InvalidRequest(f"dataset_loader 'Custom' requires {', '.join(missing)}.")
    # Only the declared fields: upstream ignores unknown ones, and echoing them would store
    # whatever a client sends (values JSON allows but the store cannot hold, like 2**80).
    params = {k: v for k, v in body.items() if k in _request_fields()}
    params.update(device_type=requested, model=pool.name)
    return await create_job(JobType.TRAINING, pool.name, params, params, request_hash("training", params), 201,
                      LOCATION, org_id=org)


@lru_cache(maxsize=1)
def _request_fields() -> frozenset[str]:
    from ttmedia.web.app import load_spec

    return frozenset(load_spec()["components"]["schemas"]["TrainingRequest"]["properties"])


async def list_fine_tuning_jobs(limit: int = 20, after: str | None = None) -> Response:
    jobs, has_more, last_id = await page(JobType.TRAINING, current_org(), limit, after)
    return json_response({"object": "list", "jobs": jobs, "has_more": has_more, "last_id": last_id})


async def get_fine_tuning_job(job_id: str) -> Response:
    return json_response((await get_or_404(job_id, JobType.TRAINING, current_org())).to_public())


async def get_fine_tuning_metrics(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.TRAINING, current_org())
    return json_response(await current().jobs.store.records(job.id, "metric"))


async def get_fine_tuning_logs(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.TRAINING, current_org())
    return json_response(await current().jobs.store.records(job.id, "log"))


async def list_fine_tuning_checkpoints(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.TRAINING, current_org())
    return json_response({"checkpoints": await current().jobs.store.checkpoints(job.id)})


async def download_fine_tuning_checkpoint(job_id: str, checkpoint_id: str) -> Response:
    jobs = current().jobs
    job = await get_or_404(job_id, JobType.TRAINING, current_org())
    missing = f"Checkpoint {checkpoint_id} of job {job_id} not found or no longer available."
    if not CHECKPOINT_ID_RE.match(checkpoint_id):
        raise problems.NotFound(missing)
    uri = await jobs.store.checkpoint_uri(job.id, checkpoint_id)
    if uri is None and any(c["id"] == checkpoint_id for c in await jobs.store.checkpoints(job.id)):
        uri = jobs.artifacts.uri(job.id, f"{CHECKPOINT_DIR}/{checkpoint_id}.zip")  # saved before uris were
    reader = await open_artifact(job, uri, missing)
    return await file_response(reader, job.id, "application/zip", f"adapter_{checkpoint_id}.zip", ranges=False)


async def cancel_fine_tuning_job(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.TRAINING, current_org())
    return json_response((await current().jobs.cancel(job)).to_public())
