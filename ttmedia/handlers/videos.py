"""Video generation jobs (upstream /v1/videos): text-to-video, image-to-video, poll, download."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool
from ttmedia.handlers._jobs import (
    file_response,
    get_or_404,
    open_artifact,
    page,
    page_jobs,
    request_hash,
    save_job,
)
from ttmedia.handlers._uploads import decode_image, image_bytes, upload_bytes
from ttmedia.web.responses import json_response
from ttmedia.jobs.kinds import VIDEO_FILE, video_geometry
from ttmedia.jobs.models import Job, JobStatus, JobType, describe_blob, valid_job_id
from ttmedia.runners.catalog import video_mode
from ttmedia.runners.types import VIDEO
from ttmedia.web.runtime import current
from ttmedia.scheduler.pool import ModelPool

#: Upstream's cap on an uploaded conditioning image, and the image types it accepts.
MAX_IMAGE_UPLOAD_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
LOCATION = "/v1/videos/generations/{id}"


def _pool(model: str | None, mode: str) -> ModelPool:
    """The served video model for `mode`; 422 if the model named cannot do that mode."""
    pool = choose_pool(VIDEO, model, serves=lambda pl: video_mode(pl.model.info, mode))
    if mode == "t2v" and not video_mode(pool.model.info, "t2v"):
        raise problems.InvalidRequest(
            f"{pool.name} requires image conditioning. Use POST /v1/videos/generations/i2v (JSON with "
            "image_prompts) or POST /v1/videos/generations/i2v/upload (multipart) instead.")
    if mode == "i2v" and not video_mode(pool.model.info, "i2v"):
        raise problems.InvalidRequest(
            f"{pool.name} is a text-to-video model and cannot take images; use POST /v1/videos/generations.")
    pool.check_ready()  # the gate checked the family; this checks the model chosen
    return pool


def _params(body: dict[str, Any], pool: ModelPool, default_steps: int) -> dict[str, Any]:
    steps = body.get("num_inference_steps")
    params = {"prompt": body["prompt"], "negative_prompt": body.get("negative_prompt"),
              "num_inference_steps": default_steps if steps is None else int(steps), "seed": body.get("seed"),
              "model": pool.name}
    for optional in ("aspect_ratio", "duration_seconds"):  # echoed only when asked for
        if body.get(optional) is not None:
            params[optional] = body[optional]
    return params


async def _save(pool: ModelPool, params: dict[str, Any], digest: str, images: list[tuple[bytes, int]]) -> Job:
    payload = {**params, "frame_positions": [pos for _, pos in images]}
    if images:
        params = {**params, "image_prompts": [{"image": describe_blob(data), "frame_pos": pos}
                                              for data, pos in images]}
    return await save_job(JobType.VIDEO, pool.name, params, payload, digest, inputs=[data for data, _ in images])


async def _create(pool: ModelPool, params: dict[str, Any], digest: str, images: list[tuple[bytes, int]]) -> Response:
    job = await _save(pool, params, digest, images)
    return json_response(job.to_public(), 202, headers={"Location": LOCATION.format(id=job.id)})


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
        data = await image_bytes(item["image"], field)
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


# --- the job resource -----------------------------------------------------------------------------

async def get_video_generation(job_id: str) -> Response:
    if job_id == "i2v":
        # GET /v1/videos/generations/i2v routes here ({job_id} matches); it is a wrong method on
        # the i2v path, and 405 must never be confused with anything else (docs/architecture.md).
        raise problems.MethodNotAllowed("GET is not allowed here; allowed: POST.", ["POST"])
    if not valid_job_id(job_id):
        raise problems.NotFound(f"Video job {job_id} not found.")
    return json_response((await get_or_404(job_id, JobType.VIDEO)).to_public())


async def list_video_jobs(limit: int = 100, after: str | None = None) -> Response:
    """Upstream's shape, a bare array; the next page is in a Link header."""
    data, has_more, last_id = await page(JobType.VIDEO, None, limit, after)
    headers = {"Link": f'</v1/videos/jobs?limit={limit}&after={last_id}>; rel="next"'} if has_more else None
    return json_response(data, headers=headers)


async def download_video_generation(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.VIDEO)
    return await file_response(await _video_file(job), job.id, "video/mp4", f"video_{job.id}.mp4")


async def cancel_video_generation(job_id: str) -> Response:
    job = await get_or_404(job_id, JobType.VIDEO)
    return json_response((await current().jobs.cancel(job)).to_public())


async def _video_file(job: Job) -> Any:
    """The job's MP4 as an open artifact (409 until it is completed, 404 once it is gone)."""
    if job.status is not JobStatus.COMPLETED:
        raise problems.Conflict(f"Video job {job.id} is {job.status.value}; the video is available once it "
                                "is completed.")
    jobs = current().jobs
    recorded = await jobs.store.artifact(job.id, VIDEO_FILE)
    # Jobs completed before artifacts were recorded keep their file at the store's usual place.
    uri = recorded[0] if recorded else jobs.artifacts.uri(job.id, VIDEO_FILE)
    return await open_artifact(job, uri, f"The video of job {job.id} is no longer available.")


# --- OpenAI's Videos API (the openai SDK's client.videos), on the same jobs ----------------------

OPENAI_LOCATION = "/v1/videos/{id}"
#: OpenAI's four statuses: a job being cancelled is still in progress, a cancelled one failed.
OPENAI_STATUS = {JobStatus.QUEUED: "queued", JobStatus.IN_PROGRESS: "in_progress",
                 JobStatus.CANCELLING: "in_progress", JobStatus.COMPLETED: "completed",
                 JobStatus.FAILED: "failed", JobStatus.CANCELLED: "failed"}
#: OpenAI's default clip length.
OPENAI_SECONDS = 4


def _openai_video(job: Job) -> dict[str, Any]:
    params = job.request_parameters
    settings = current().settings
    width, height, frames, fps = video_geometry(settings, params.get("aspect_ratio"), params.get("duration_seconds"))
    result = job.result or {}
    if result:  # what was rendered
        width, height, frames, fps = result["width"], result["height"], result["frames"], result["fps"]
    seconds = params.get("seconds") or f"{frames / max(fps, 1):g}"
    if job.status is JobStatus.CANCELLED:
        error: dict[str, str] | None = {"code": "cancelled", "message": f"Video job {job.id} was cancelled."}
    elif job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    else:
        error = None
    expires = int(job.completed_at + settings.job_retention_seconds) if job.completed_at else None
    return {"id": job.id, "object": "video", "model": job.model, "status": OPENAI_STATUS[job.status],
            "progress": job.progress, "created_at": int(job.created_at),
            "completed_at": None if job.completed_at is None else int(job.completed_at), "expires_at": expires,
            "prompt": params.get("prompt"), "seconds": str(seconds), "size": f"{width}x{height}",
            "remixed_from_video_id": None, "error": error}


def _aspect(size: str) -> str:
    across, down = (int(x) for x in size.split("x"))
    divisor = math.gcd(across, down)
    return f"{across // divisor}:{down // divisor}"


async def _reference_image(body: dict[str, Any], upload: UploadFile | None) -> bytes | None:
    """The `input_reference` image: a multipart file, or `{image_url}` (the SDK's multipart form
    flattens it to `input_reference[image_url]`); None for text-to-video."""
    if upload is not None:
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        # Untyped or generic parts are judged by their bytes (422 if not an image).
        if content_type not in IMAGE_TYPES and content_type not in ("", "application/octet-stream"):
            raise problems.UnsupportedMediaType(
                f"'input_reference' is {content_type or 'untyped'}; send image/png, image/jpeg or image/webp.")
        data = await upload_bytes(body, upload, "input_reference", MAX_IMAGE_UPLOAD_BYTES)
    else:
        reference = body.get("input_reference")
        url = reference.get("image_url") if isinstance(reference, dict) else body.get("input_reference[image_url]")
        if not url:
            return None
        data = await image_bytes(url, "input_reference.image_url")
    await decode_image(data, "input_reference")  # 422 now, not a failed job later
    return data


async def create_video(body: dict[str, Any], input_reference: UploadFile | None = None) -> Response:
    image = await _reference_image(body, input_reference)
    pool = _pool(body.get("model"), "i2v" if image else "t2v")
    seconds = int(body.get("seconds") or OPENAI_SECONDS)
    params = {**_params(body, pool, 20), "seconds": str(seconds), "duration_seconds": seconds}
    if body.get("size"):
        params.update(size=body["size"], aspect_ratio=_aspect(body["size"]))
    images = [(image, 0)] if image else []
    job = await _save(pool, params, request_hash("openai", params, *(d for d, _ in images)), images)
    return json_response(_openai_video(job), headers={"Location": OPENAI_LOCATION.format(id=job.id)})


async def get_video(video_id: str) -> Response:
    return json_response(_openai_video(await get_or_404(video_id, JobType.VIDEO)))


async def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> Response:
    jobs, has_more = await page_jobs(JobType.VIDEO, None, limit, after, ascending=order == "asc")
    return json_response({"object": "list", "data": [_openai_video(j) for j in jobs],
                          "first_id": jobs[0].id if jobs else None, "last_id": jobs[-1].id if jobs else None,
                          "has_more": has_more})


async def delete_video(video_id: str) -> Response:
    jobs = current().jobs
    job = await get_or_404(video_id, JobType.VIDEO)
    if job.status is JobStatus.QUEUED:
        job = await jobs.cancel(job)  # never started: nothing to stop
    if not job.status.terminal:
        raise problems.Conflict(f"Video {job.id} is {job.status.value}; cancel it (POST "
                                f"/v1/videos/generations/{job.id}/cancel) before deleting it.")
    # One server on its own disk (SQLite): a download in progress keeps its open file, so the
    # deletion needs no wait. A shared store's volume may be another host's (NFS): held files stay
    # until the downloads' holds lapse (JOB_DOWNLOAD_HOLD_SECONDS).
    if not await jobs.store.delete_unheld(job.id, force=jobs.store.exclusive):
        raise problems.Conflict(f"Video {job.id} is being downloaded; delete it once the download ends "
                                f"(within {jobs.settings.job_download_hold_seconds:g} s).")
    await jobs.artifacts.remove(job.id)
    return json_response({"id": job.id, "object": "video.deleted", "deleted": True})


async def get_video_content(video_id: str, variant: str = "video") -> Response:
    job = await get_or_404(video_id, JobType.VIDEO)
    reader = await _video_file(job)
    if variant == "video":
        return await file_response(reader, job.id, "video/mp4", f"{job.id}.mp4")
    try:
        data = b"".join([chunk async for chunk in reader.chunks(0, reader.size - 1)])
    finally:
        await reader.close()
    from ttmedia.media import video

    result = job.result or {}
    frames = await asyncio.to_thread(video.decode_frames, data, int(result["width"]), int(result["height"]))
    if variant == "thumbnail":
        return Response(await asyncio.to_thread(video.thumbnail_webp, frames), media_type="image/webp",
                        headers={"Content-Disposition": f'attachment; filename="{job.id}.webp"'})
    return Response(await asyncio.to_thread(video.spritesheet_jpeg, frames), media_type="image/jpeg",
                    headers={"Content-Disposition": f'attachment; filename="{job.id}_spritesheet.jpg"'})
