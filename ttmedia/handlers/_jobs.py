"""Shared by the job handlers (videos, fine_tuning): creation with Idempotency-Key, paging,
and file downloads with single byte ranges."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from connexion import request
from starlette.responses import Response, StreamingResponse

from ttmedia.web import problems
from ttmedia.web.responses import json_response
from ttmedia.jobs.artifacts import ArtifactReader
from ttmedia.jobs.models import Job, JobType, new_job_id
from ttmedia.jobs.store import UnknownCursor
from ttmedia.web.runtime import current


def request_hash(*parts: Any) -> str:
    """Canonical hash of a request (sorted keys), to tell a retry from a different request."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else orjson.dumps(part, option=orjson.OPT_SORT_KEYS))
        digest.update(b"\x00")
    return digest.hexdigest()


async def save_job(job_type: JobType, model: str, params: dict[str, Any], payload: dict[str, Any], digest: str,
                   inputs: list[bytes] | None = None, org_id: str = "") -> Job:
    """Persist a queued job; a repeated Idempotency-Key gives the original (409 with another body)."""
    key = (request.headers.get("Idempotency-Key") or "").strip() or None
    job_id = new_job_id()
    job = Job(id=job_id, job_type=job_type, model=model, created_at=time.time(), request_parameters=params,
              org_id=org_id, payload={**payload, "job_id": job_id}, idempotency_key=key, request_hash=digest)
    saved, _created = await current().jobs.create(job, inputs)
    return saved


async def create_job(job_type: JobType, model: str, params: dict[str, Any], payload: dict[str, Any], digest: str,
                     status: int, location: str, inputs: list[bytes] | None = None, org_id: str = "") -> Response:
    """Persist a queued job and answer with it; a repeated Idempotency-Key answers the original."""
    saved = await save_job(job_type, model, params, payload, digest, inputs, org_id)
    return json_response(saved.to_public(), status, headers={"Location": location.format(id=saved.id)})


async def get_or_404(job_id: str, job_type: JobType, org_id: str | None = None) -> Job:
    job = await current().jobs.get(job_id, job_type, org_id)
    if job is None:
        what = "Video job" if job_type is JobType.VIDEO else "Fine-tuning job"
        raise problems.NotFound(f"{what} {job_id} not found.")
    return job


async def page_jobs(job_type: JobType, org_id: str | None, limit: int, after: str | None,
                    ascending: bool = False) -> tuple[list[Job], bool]:
    try:
        return await current().jobs.store.page(job_type, org_id, limit, after, ascending)
    except UnknownCursor:
        raise problems.NotFound(f"No job {after} to page after (deleted, or not yours).") from None


async def page(job_type: JobType, org_id: str | None, limit: int,
               after: str | None) -> tuple[list[dict[str, Any]], bool, str | None]:
    jobs, has_more = await page_jobs(job_type, org_id, limit, after)
    return [j.to_public() for j in jobs], has_more, (jobs[-1].id if jobs else None)


# --- downloads ----------------------------------------------------------------------------------

def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range → (first, last) inclusive; None to serve the whole file.

    Per RFC 9110 a Range the server does not understand (another unit, several ranges, bad
    syntax) is ignored; only a well-formed range outside the file is 416.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_text:  # suffix: the last N bytes
            length = int(last_text)
            if length <= 0 or size == 0:
                raise problems.RangeNotSatisfiable(f"Range {header!r} selects no bytes.", size)
            return max(0, size - length), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first >= size:
        raise problems.RangeNotSatisfiable(f"Range {header!r} starts beyond the {size}-byte file.", size)
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


async def open_artifact(job: Job, uri: str | None, missing: str) -> ArtifactReader:
    """Hold the job against the retention sweep, then open its artifact (404 `missing` if gone).

    The hold is taken first and renewed while the response streams (`_held`), so the sweep,
    on any replica, never deletes a file mid-download; the open descriptor keeps the bytes."""
    jobs = current().jobs
    if uri is None or not await jobs.store.hold(job.id, jobs.settings.job_download_hold_seconds):
        raise problems.NotFound(missing)
    reader = await jobs.artifacts.open(uri)
    if reader is None:
        raise problems.NotFound(missing)
    return reader


async def _held(reader: ArtifactReader, job_id: str, first: int, last: int) -> AsyncIterator[bytes]:
    jobs = current().jobs
    hold_s = jobs.settings.job_download_hold_seconds
    renew_at = time.monotonic() + hold_s / 3
    async for chunk in reader.chunks(first, last):
        if time.monotonic() >= renew_at:
            renew_at = time.monotonic() + hold_s / 3
            await jobs.store.hold(job_id, hold_s)
        yield chunk


async def file_response(reader: ArtifactReader, job_id: str, media_type: str, filename: str,
                        ranges: bool = True) -> Response:
    """The file, or (with `ranges`) the single byte range the request asks for (206)."""
    size = reader.size
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if ranges:
        headers["Accept-Ranges"] = "bytes"
    try:
        selected = parse_range(request.headers.get("Range"), size) if ranges else None
    except problems.Problem:  # 416: nothing will be read
        await reader.close()
        raise
    if selected is None:
        first, last, status = 0, size - 1, 200
    else:
        (first, last), status = selected, 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(max(0, last - first + 1))
    return StreamingResponse(_held(reader, job_id, first, last), status_code=status, media_type=media_type,
                             headers=headers)
