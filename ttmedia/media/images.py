"""Image encode/decode and the procedural "model output" used by simulated runners."""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import re

import numpy as np
from PIL import Image, ImageOps

from ttmedia.media.errors import UndecodableMedia, UnsupportedMediaFormat

__all__ = [
    "decode_image",
    "encode_image",
    "render_picture",
    "synthesize_image",
    "transform_image",
]

_ENCODE_FORMATS = {"JPEG": "JPEG", "JPG": "JPEG", "PNG": "PNG"}
_MAX_MESSAGE = 160
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_DEFAULT_TRANSFORM_STEPS = 30
# Longest side of the canvas the smooth layers are drawn on before upscaling.
_SMOOTH_CANVAS = 256


# --------------------------------------------------------------------------- encode / decode


def encode_image(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 85) -> bytes:
    """Encode an ``HxWx3`` uint8 array as JPEG or PNG bytes."""
    pil_format = _ENCODE_FORMATS.get(fmt.upper())
    if pil_format is None:
        raise UnsupportedMediaFormat(f"unsupported image format {fmt!r}; use JPEG or PNG")
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8 pixels, got shape {arr.shape} dtype {arr.dtype}")
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if pil_format == "JPEG":
        # Pillow accepts 1..95; above 95 only inflates files without visible gain.
        img.save(buf, "JPEG", quality=int(min(max(quality, 1), 95)))
    else:
        # Level 6 (Pillow's default) is ~4x slower than 1 for ~10% smaller files;
        # latency matters more to an inference server than bytes on the wire.
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, min_side: int | None = None) -> Image.Image:
    """Decode image bytes into a fully loaded RGB image, or raise UndecodableMedia.

    With ``min_side`` the caller needs no more than that many pixels on the shorter side: a
    JPEG is decoded at a reduced scale, and any other image is reduced by a whole factor right
    after decoding, before the copies that conversions make (a 40-megapixel PNG then costs its
    decoded size once, not four times).
    """
    if not data:
        raise UndecodableMedia("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Checked before load() so a tiny file claiming a huge canvas costs nothing.
            width, height = img.size
            if width * height > max_pixels:
                raise UndecodableMedia(
                    f"image is {width}x{height}, more than the {max_pixels} pixel limit"
                )
            if min_side and img.format == "JPEG":
                img.draft("RGB", _scaled_request(width, height, min_side))
            img.load()
            loaded: Image.Image = img
            if min_side:
                factor = min(loaded.width, loaded.height) // min_side
                if factor >= 2:
                    loaded = loaded.reduce(factor)
            return _to_rgb(ImageOps.exif_transpose(loaded))
    except UndecodableMedia:
        raise
    except Image.DecompressionBombError as exc:
        raise UndecodableMedia("image dimensions are implausibly large") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many unrelated types on junk
        raise UndecodableMedia(f"not a decodable image: {_short(exc)}") from exc


def _scaled_request(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size to ask JPEG's draft mode for: the shorter side at least min_side."""
    scale = min_side / max(min(width, height), 1)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit_gray(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    # Plain convert("RGB") would expose whatever colour hides under transparent
    # pixels (often black); compositing on white matches how viewers show it.
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit samples at 255, turning most of a
    # 16-bit greyscale PNG white; rescale instead when values exceed 8 bits.
    values = np.asarray(img, dtype=np.float32)
    if values.size and float(values.max()) > 255.0:
        values = values / 257.0
    return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")


def _short(exc: BaseException) -> str:
    # Pillow names the file it was given: for bytes, "<_io.BytesIO object at 0x7fe6...>".
    message = _OBJECT_REPR.sub("the data", str(exc)) or type(exc).__name__
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


# --------------------------------------------------------------------------- synthesis


def synthesize_image(prompt: str, seed: int, width: int, height: int, steps: int) -> np.ndarray:
    """Deterministic procedural picture for ``prompt``/``seed`` as ``HxWx3`` uint8.

    The palette depends only on the prompt and the layout on prompt+seed, so
    seeds of one prompt look like variations of a theme. ``steps`` plays the role
    of diffusion steps: few steps leave noise and little detail.
    """
    return np.array(render_picture(prompt, seed, width, height, steps))


def transform_image(
    img: Image.Image,
    prompt: str,
    seed: int,
    strength: float,
    width: int,
    height: int,
    mask: Image.Image | None = None,
    *,
    steps: int = _DEFAULT_TRANSFORM_STEPS,
) -> np.ndarray:
    """Image-to-image: blend ``img`` toward a synthesized picture by ``strength``.

    With ``mask`` only the white parts are repainted (grey blends partially).
    """
    _check_size(width, height)
    strength = float(min(max(strength, 0.0), 1.0))
    source = np.asarray(_to_rgb(img).resize((width, height), Image.Resampling.BICUBIC))
    if strength == 0.0:
        return source.copy()
    weight = np.full((height, width), strength, dtype=np.float32)
    if mask is not None:
        gray = mask.convert("L").resize((width, height), Image.Resampling.BILINEAR)
        weight *= np.asarray(gray, dtype=np.float32) / 255.0
    target = synthesize_image(prompt, seed, width, height, steps).astype(np.float32)
    blended = source.astype(np.float32)
    blended += weight[..., None] * (target - blended)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def render_picture(
    prompt: str, seed: int, width: int, height: int, steps: int = 30, t: float = 0.0
) -> Image.Image:
    """The picture behind :func:`synthesize_image`; ``t`` (seconds) makes the blobs drift.

    Everything smooth is rendered on a small canvas and upscaled: the content is
    low-frequency, so this is visually identical and ~20x cheaper than drawing
    every pixel. Only the noise is per-pixel, and Pillow blends it in C.
    """
    _check_size(width, height)
    factor = max(1, math.ceil(max(width, height) / _SMOOTH_CANVAS))
    small_w, small_h = max(2, round(width / factor)), max(2, round(height / factor))
    refinement = 1.0 - math.exp(-max(int(steps), 0) / 6.0)
    canvas = _render_canvas(prompt, seed, small_w, small_h, refinement, t)
    picture = Image.fromarray(_to_uint8(canvas), "RGB")
    if (small_w, small_h) != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    noise_weight = 1.0 - refinement
    if noise_weight > 1.0 / 512.0:  # below that it rounds away in uint8
        noise_rng = np.random.default_rng(_seed_int(prompt, seed, "noise"))
        noise = Image.frombytes("RGB", (width, height), noise_rng.bytes(width * height * 3))
        picture = Image.blend(picture, noise, noise_weight)
    return picture


def _render_canvas(
    prompt: str, seed: int, width: int, height: int, refinement: float, t: float
) -> np.ndarray:
    """Float32 ``HxWx3`` smooth picture in [0, 1] (before quantisation)."""
    palette = _palette(prompt)
    layout = np.random.default_rng(_seed_int(prompt, seed, "layout"))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)
    canvas = _gradient(xs, ys, palette, layout, t)
    for _ in range(int(layout.integers(5, 9))):
        _add_blob(canvas, xs, ys, palette, layout, t)
    _add_detail(canvas, xs, ys, layout, amount=0.03 * refinement)
    return canvas


def _gradient(
    xs: np.ndarray, ys: np.ndarray, palette: np.ndarray, rng: np.random.Generator, t: float
) -> np.ndarray:
    angle = rng.uniform(0.0, 2.0 * math.pi) + 0.15 * t
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # Separable: t(x, y) = a*x + b*y, so build it from two 1-D ramps.
    ramp = (cos_a * xs)[None, :] + (sin_a * ys)[:, None]
    ramp -= ramp.min()
    ramp *= 1.0 / max(float(ramp.max()), 1e-6)
    start, end = palette[0], palette[1]
    return start + ramp[..., None] * (end - start)


def _add_blob(
    canvas: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    palette: np.ndarray,
    rng: np.random.Generator,
    t: float,
) -> None:
    cx, cy = rng.uniform(0.05, 0.95, size=2)
    sx, sy = rng.uniform(0.04, 0.2, size=2)
    # Drawn for stills too, so a still keeps the same layout as frame 0 of a video.
    vx, vy = rng.uniform(-0.12, 0.12, size=2)
    cx, cy = _bounce(cx + vx * t), _bounce(cy + vy * t)
    opacity = np.float32(rng.uniform(0.7, 1.0))
    color = palette[int(rng.integers(2, len(palette)))] * np.float32(rng.uniform(0.8, 1.15))
    # exp() over two 1-D axes + an outer product is ~100x cheaper than a 2-D exp.
    gx = np.exp(-0.5 * ((xs - np.float32(cx)) / np.float32(sx)) ** 2)
    gy = np.exp(-0.5 * ((ys - np.float32(cy)) / np.float32(sy)) ** 2) * opacity
    weight = np.multiply.outer(gy, gx)
    canvas += weight[..., None] * (np.clip(color, 0.0, 1.0) - canvas)


def _add_detail(
    canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator, amount: float
) -> None:
    fx, fy = rng.uniform(12.0, 40.0, size=2)
    px, py = rng.uniform(0.0, 2.0 * math.pi, size=2)
    ripple_x = np.sin(np.float32(fx) * xs + np.float32(px))
    ripple_y = np.sin(np.float32(fy) * ys + np.float32(py)) * np.float32(amount)
    canvas += np.multiply.outer(ripple_y, ripple_x)[..., None]


def _bounce(position: float) -> float:
    """Reflect a coordinate into [0, 1] so drifting blobs stay on screen."""
    folded = position % 2.0
    return folded if folded <= 1.0 else 2.0 - folded


def _palette(prompt: str) -> np.ndarray:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    base_hue = digest[0] / 255.0
    colors = []
    for i in range(5):
        hue = (base_hue + (digest[1 + i] / 255.0 - 0.5) * 0.45 + i * 0.11) % 1.0
        saturation = 0.35 + digest[8 + i] / 255.0 * 0.55
        value = 0.35 + digest[16 + i] / 255.0 * 0.6
        colors.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return np.asarray(colors, dtype=np.float32)


def _seed_int(prompt: str, seed: int, purpose: str) -> int:
    material = f"{purpose}\x1f{int(seed)}\x1f{prompt}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "little")


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    canvas *= 255.0
    canvas += 0.5
    np.clip(canvas, 0.0, 255.0, out=canvas)
    return canvas.astype(np.uint8)


def _check_size(width: int, height: int) -> None:
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
