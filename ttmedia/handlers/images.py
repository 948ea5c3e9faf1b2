"""Image generation."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from starlette.responses import Response

from ttmedia import problems
from ttmedia.http import json_response
from ttmedia.runtime import current


def _image_request(body: dict[str, Any], pool_options: dict[str, Any], model: str) -> dict[str, Any]:
    steps = body.get("num_inference_steps") or 20
    min_steps = int(pool_options.get("min_steps", 1))
    if steps < min_steps:
        raise problems.InvalidRequest(f"{model} needs num_inference_steps >= {min_steps} (got {steps}).")
    size = body.get("size")
    return {
        "prompt": body["prompt"],
        "negative_prompt": body.get("negative_prompt"),
        "num_inference_steps": steps,
        "seed": body.get("seed"),
        "image_return_format": body.get("image_return_format") or "JPEG",
        "image_quality": body.get("image_quality") or 85,
        "guidance_scale": body.get("guidance_scale"),
        "size": int(size.split("x")[0]) if size else None,
    }


async def create_image(body: dict[str, Any]) -> Response:
    started = time.monotonic()
    pool = current().scheduler.pool("image", body.get("model"))
    request = _image_request(body, pool.model.info.options, pool.name)
    count = body.get("n") or body.get("number_of_images") or 1
    seed = request["seed"] if request["seed"] is not None else 0
    # One request per image, as upstream: they batch on the device when MAX_BATCH_SIZE allows.
    results = await asyncio.gather(*(pool.submit({**request, "seed": seed + i}) for i in range(count)))
    encoded = [base64.b64encode(r["image"]).decode("ascii") for r in results]
    if body.get("response_format") == "b64_json":
        return json_response({"created": int(time.time()), "data": [{"b64_json": e} for e in encoded]})
    return json_response({"images": encoded, "generation_time": round(time.monotonic() - started, 4),
                          "model": pool.name})


# --- image-to-image and edits ---------------------------------------------------------------------

async def create_image_to_image(body: dict[str, Any]) -> Response:
    return await _transform(body, "image-to-image")


async def create_image_edit(body: dict[str, Any]) -> Response:
    return await _transform(body, "edit")


async def _transform(body: dict[str, Any], task: str) -> Response:
    from ttmedia.handlers._uploads import decode_image

    started = time.monotonic()
    pool = current().scheduler.pool("image", body.get("model"))
    request = _image_request(body, pool.model.info.options, pool.name)
    size = request.pop("size") or int(pool.model.info.options.get("size", 1024))
    # Decoded here, not on the device worker: a broken upload is the client's 422, not a runner error.
    request["image"] = await decode_image(body["image"], "image", size)
    request["mask"] = await decode_image(body["mask"], "mask", size, mode="L") if task == "edit" else None
    request.update(task=task, strength=float(body.get("strength", 1.0 if task == "edit" else 0.6)))
    count = body.get("number_of_images") or 1
    seed = request["seed"] if request["seed"] is not None else 0
    results = await asyncio.gather(*(pool.submit({**request, "seed": seed + i}) for i in range(count)))
    return json_response({"images": [base64.b64encode(r["image"]).decode("ascii") for r in results],
                          "generation_time": round(time.monotonic() - started, 4), "model": pool.name})
