"""Image classification (upstream /v1/cnn/search-image)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.responses import Response

from ttmedia.handlers._calls import choose_pool
from ttmedia.handlers._uploads import decode_image, image_bytes, upload_bytes
from ttmedia.web.responses import json_response
from ttmedia.runners.types import CNN, Classification, ClassifyRequest
from ttmedia.web.runtime import current

if TYPE_CHECKING:
    import numpy as np  # numpy is imported where it is used: importing it costs 60 ms of server start-up.

#: Defaults of the spec's ImageSearchRequest; multipart fields get no defaults from the validator.
DEFAULT_TOP_K = 3
DEFAULT_MIN_CONFIDENCE = 70.0
INPUT_SIZE = 224


def _center_crop(pixels: np.ndarray) -> np.ndarray:
    """ResNet preprocessing: shorter side to 256, then the central 224×224."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(pixels)
    scale = 256 / min(img.size)
    img = img.resize((max(INPUT_SIZE, round(img.width * scale)), max(INPUT_SIZE, round(img.height * scale))),
                     Image.Resampling.BILINEAR)
    left, top = (img.width - INPUT_SIZE) // 2, (img.height - INPUT_SIZE) // 2
    return np.asarray(img.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.uint8)


def _format(result: Classification, min_confidence: float, verbose: bool) -> Any:
    rows = [(label, p * 100, i) for label, p, i in zip(result.labels, result.probabilities, result.indices,
                                                        strict=True)]
    top_label, top_p, _ = rows[0]
    kept = [r for r in rows if r[1] >= min_confidence]
    if verbose:
        return ",".join([top_label, f"{top_p:.2f}%"] + [f"{label},{p:.4f}%,{i}" for label, p, i in kept])
    return {
        "top1_class_label": top_label,
        "top1_class_probability": f"{top_p:.2f}%",
        "output": {"labels": [r[0] for r in kept], "probabilities": [f"{r[1]:.4f}%" for r in kept],
                   "indices": [r[2] for r in kept]},
    }


async def search_image(body: dict[str, Any], file: UploadFile | None = None) -> Response:
    runtime = current()
    pool = choose_pool(CNN, body.get("model"))
    if file is not None:
        data = await upload_bytes(body, file, "file", runtime.settings.max_request_body_bytes)
        pixels = await decode_image(data, "file", min_side=256)
    else:
        pixels = await decode_image(await image_bytes(body["prompt"], "prompt"), "prompt", min_side=256)

    pixels = await asyncio.to_thread(_center_crop, pixels)
    top_k = body.get("top_k") or DEFAULT_TOP_K
    min_confidence = body.get("min_confidence")
    min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
    result: Classification = await pool.submit(ClassifyRequest(pixels, top_k))
    verbose = body.get("response_format") == "verbose_json"
    return json_response({"image_data": [_format(result, min_confidence, verbose)], "status": "success"})
