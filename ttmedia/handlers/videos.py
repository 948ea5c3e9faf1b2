"""Video generation jobs (upstream /v1/videos): text-to-video, image-to-video, poll, download."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import Response

from ttmedia import problems
from ttmedia.context import note
from ttmedia.handlers._jobs import create_job, file_response, get_or_404, open_artifact, page, request_hash
from ttmedia.handlers._uploads import decode_image, upload_bytes
from ttmedia.http import json_response
from ttmedia.jobs.kinds import VIDEO_FILE
from ttmedia.jobs.models import JobStatus, JobType, describe_blob, valid_job_id
from ttmedia.runtime import current
from ttmedia.scheduler.pool import ModelPool

#: Upstream's cap on an uploaded conditioning image, and the image types it accepts.
MAX_IMAGE_UPLOAD_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
LOCATION = "/v1/videos/generations/{id}"


def _pool(model: str | None, mode: str) -> ModelPool:
    """The served video model for `mode` ("t2v" | "i2v"); 422 if it cannot do that mode."""
    scheduler = current().scheduler
    if model:
        pool = scheduler.pool("video", model)
    else:
        candidates = [pl for pl in scheduler.pools.values() if pl.model.family == "video"]
        if not candidates:
            raise problems.ModelNotFound("No video model is served by this server.")
        pool = next((pl for pl in candidates if pl.model.info.options.get(mode, mode == "t2v")), candidates[0])
    options = pool.model.info.options
    if mode == "t2v" and not options.get("t2v", True):
        raise problems.InvalidRequest(
            f"{pool.name} requires image conditioning. Use POST /v1/videos/generations/i2v (JSON with "
            "image_prompts) or POST /v1/videos/generations/i2v/upload (multipart) instead.")
    if mode == "i2v" and not options.get("i2v", False):
        raise problems.InvalidRequest(
            f"{pool.name} is a text-to-video model and cannot take images; use POST /v1/videos/generations.")
    pool.check_ready()  # the gate checked the family; this checks the model chosen
    note(model=pool.name)  # the request log names the model chosen, as scheduler.pool() does
    return pool


def _params(body: dict[str, Any], pool: ModelPool, default_steps: int) -> dict[str, Any]:
    steps = body.get("num_inference_steps")
    return {"prompt": body["prompt"], "negative_prompt": body.get("negative_prompt"),
            "num_inference_steps": default_steps if steps is None else int(steps), "seed": body.get("seed"),
            "model": pool.name}


async def _create(pool: ModelPool, params: dict[str, Any], digest: str, images: list[tuple[bytes, int]]) -> Response:
    payload = {**params, "frame_positions": [pos for _, pos in images]}
    if images:
        params = {**params, "image_prompts": [{"image": describe_blob(data), "frame_pos": pos}
                                              for data, pos in images]}
    return await create_job(JobType.VIDEO, pool.name, params, payload, digest, 202, LOCATION,
                      inputs=[data for data, _ in images])


async def create_video_generation(body: dict[str, Any]) -> Response:
    pool = _pool(body.get("model"), "t2v")
    params = _params(body, pool, 20)
    return await _create(pool, params, request_hash("t2v", params), [])


async def create_video_generation_i2v(body: dict[str, Any]) -> Response:
    pool = _pool(body.get("model"), "i2v")
    prompts = body["image_prompts"]
    positions = [int(p.get("frame_pos") or 0) for p in prompts]
    if len(set(positions)) != len(positions):
        raise problems.InvalidRequest("image_prompts: frame_pos values must be unique.")
    images = []
    for index, (item, pos) in enumerate(zip(prompts, positions, strict=True)):
        field = f"image_prompts[{index}].image"
        data = _base64_image(item["image"], field)
        await decode_image(data, field)  # 422 now, not a failed job later
        images.append((data, pos))
    params = _params(body, pool, 20)
    return await _create(pool, params, request_hash("i2v", params, *(d for d, _ in images), positions), images)


async def create_video_generation_i2v_upload(body: dict[str, Any], image: UploadFile | None = None) -> Response:
    if image is None:
        raise problems.InvalidRequest("'image' is required: a PNG, JPEG or WebP file.")
    content_type = (image.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES:
        raise problems.UnsupportedMediaType(
            f"'image' is {content_type or 'untyped'}; send image/png, image/jpeg or image/webp.")
    pool = _pool(body.get("model"), "i2v")
    data = await upload_bytes(body, image, "image", MAX_IMAGE_UPLOAD_BYTES)
    await decode_image(data, "image")
    params = _params(body, pool, 12)  # upstream's multipart default is 12 steps, JSON's 20
    pos = int(body.get("frame_pos") or 0)
    return await _create(pool, params, request_hash("i2v", params, data, [pos]), [(data, pos)])


def _base64_image(text: str, field: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    payload = "".join(payload.split()).translate(str.maketrans("-_", "+/"))
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise problems.InvalidRequest(f"'{field}' is not valid base64 or a data URI.") from None


# --- the job resource -----------------------------------------------------------------------------

async def get_video_generation(job_id: str) -> Response:
    if job_id == "i2v":
        # GET /v1/videos/generations/i2v routes here ({job_id} matches); it is a wrong method on
        # the i2v path, and 405 must never be confused with anything else (DESIGN.md).
        raise problems.MethodNotAllowed("GET is not allowed here; allowed: POST.", ["POST"])
    if not valid_job_id(job_id):
        raise problems.NotFound(f"Video job {job_id} not found.")
    return json_response((await get_or_404(job_id, JobType.VIDEO)).to_public())


async def list_video_jobs(limit: int = 20, after: str | None = None) -> Response:
    data, has_more, last_id = await page(JobType.VIDEO, None, limit, after)
    return json_response({"object": "list", "data": data, "has_more": has_more, "last_id": last_id})


async def download_video_generation(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.VIDEO)
    if job.status is not JobStatus.COMPLETED:
        raise problems.Conflict(f"Video job {job_id} is {job.status.value}; the video is available once it "
                                "is completed.")
    jobs = current().jobs
    recorded = await jobs.store.artifact(job.id, VIDEO_FILE)
    # Jobs completed before artifacts were recorded keep their file at the store's usual place.
    uri = recorded[0] if recorded else jobs.artifacts.uri(job.id, VIDEO_FILE)
    reader = await open_artifact(job, uri, f"The video of job {job_id} is no longer available.")
    return await file_response(reader, job.id, "video/mp4", f"video_{job.id}.mp4")


async def cancel_video_generation(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.VIDEO)
    return json_response((await current().jobs.cancel(job)).to_public())
