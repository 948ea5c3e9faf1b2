"""Image generation, image-to-image and edits."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from typing import Any

from starlette.responses import Response

from ttmedia.web import problems
from ttmedia.handlers._calls import choose_pool
from ttmedia.web.responses import json_response
from ttmedia.runners.types import EncodedImage, IMAGE, ImageRequest
from ttmedia.scheduler.pool import ModelPool


def _image_request(body: dict[str, Any], pool: ModelPool, size: int) -> ImageRequest:
    steps = body.get("num_inference_steps") or 20
    min_steps = int(pool.model.info.options.get("min_steps", 1))
    if steps < min_steps:
        raise problems.InvalidRequest(f"{pool.name} needs num_inference_steps >= {min_steps} (got {steps}).")
    return ImageRequest(
        prompt=body["prompt"], negative_prompt=body.get("negative_prompt"), num_inference_steps=steps,
        guidance_scale=body.get("guidance_scale"), seed=body.get("seed") or 0, width=size, height=size,
        output_format=(body.get("image_return_format") or "JPEG").upper(),
        output_quality=body.get("image_quality") or 85)


def _size(body: dict[str, Any], pool: ModelPool) -> int:
    size = body.get("size")
    return int(size.split("x")[0]) if size else int(pool.model.info.options.get("size", 1024))


async def _generate(pool: ModelPool, request: ImageRequest, count: int) -> list[str]:
    """One request per image, as upstream (they batch on the device when MAX_BATCH_SIZE
    allows); one failing fails them all, and the rest are withdrawn."""
    results: list[EncodedImage] = await pool.submit_all([replace(request, seed=request.seed + i)
                                                         for i in range(count)])
    return [base64.b64encode(r.data).decode("ascii") for r in results]


async def create_image(body: dict[str, Any]) -> Response:
    started = time.monotonic()
    pool = choose_pool(IMAGE, body.get("model"))
    request = _image_request(body, pool, _size(body, pool))
    encoded = await _generate(pool, request, body.get("n") or body.get("number_of_images") or 1)
    if body.get("response_format") == "b64_json":
        return json_response({"created": int(time.time()), "data": [{"b64_json": e} for e in encoded]})
    return json_response({"images": encoded, "generation_time": round(time.monotonic() - started, 4),
                          "model": pool.name})


async def create_image_to_image(body: dict[str, Any]) -> Response:
    return await _transform(body, "image-to-image")


async def create_image_edit(body: dict[str, Any]) -> Response:
    return await _transform(body, "edit")


async def _transform(body: dict[str, Any], task: str) -> Response:
    from ttmedia.handlers._uploads import decode_image, image_bytes

    started = time.monotonic()
    pool = choose_pool(IMAGE, body.get("model"))
    size = _size(body, pool)
    request = _image_request(body, pool, size)
    # Decoded here, not on the device worker: a broken upload is the client's 422, not a runner error.
    request.image = await decode_image(await image_bytes(body["image"], "image"), "image", size)
    if task == "edit":
        request.mask = await decode_image(await image_bytes(body["mask"], "mask"), "mask", size, mode="L")
    request.task = task  # type: ignore[assignment]
    request.strength = float(body.get("strength", 1.0 if task == "edit" else 0.6))
    encoded = await _generate(pool, request, body.get("number_of_images") or 1)
    return json_response({"images": encoded, "generation_time": round(time.monotonic() - started, 4),
                          "model": pool.name})
