"""Helpers for the route tests: small media fixtures made with ttmedia.media (problem assertions:
ttmedia.testing.assert_problem)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


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
