"""Helpers for the route tests: problem assertions and small media fixtures made with ttmedia.media."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def assert_problem(response: Any, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["reason"] == reason and isinstance(body["detail"], str)
    return body


def png_bytes(width: int = 96, height: int = 64, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A picture with some structure: a colour field with a darker square, as PNG."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = colour
    pixels[height // 4: height // 2, width // 4: width // 2] = (20, 20, 20)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_b64_image(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img
