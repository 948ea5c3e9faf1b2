"""Simulated diffusion model (SDXL/FLUX-like): latency ∝ steps, real pictures, deterministic.

`task` picks the pipeline: "generate" (text-to-image), "image-to-image" (`image`, `strength`) or
"edit" (plus `mask`, white = repaint). As in diffusers, image-to-image runs only
`strength · steps` denoising steps, so it costs that many steps of device time. The negative
prompt changes the composition and the guidance scale the contrast, as they visibly do in a
real pipeline. The runner returns pixels; the server encodes them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError, device_time
from ttmedia.runners.sim import on_sim_device
from ttmedia.runners.types import ImageRequest, ImageResult

if TYPE_CHECKING:
    import numpy as np

#: The guidance scale at which the simulated picture has its natural contrast.
NEUTRAL_GUIDANCE = 5.0


class SimImageRunner(Runner):
    family = "image"
    simulated = True

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.size = int(ctx.options.get("size", 1024))

    async def warmup(self) -> None:
        # Import the media stack now, as a real runner compiles its traces, so the first
        # request does not pay for it.
        from ttmedia.media import images  # noqa: F401

        await device_time(self.ctx.timing.warmup_s)

    def canary(self) -> ImageRequest:
        return ImageRequest("canary", num_inference_steps=1, width=64, height=64)

    async def run(self, batch: list[ImageRequest]) -> list[ImageResult]:
        t = self.ctx.timing
        steps = sum(_device_steps(r) for r in batch)
        device = asyncio.ensure_future(device_time(t.base_s + t.per_step_s * steps))
        images = await on_sim_device(lambda: [ImageResult(self._render(r)) for r in batch])
        await device
        return images

    def _render(self, request: ImageRequest) -> np.ndarray:
        from ttmedia.media import images

        steps = max(1, request.num_inference_steps)
        # The negative prompt steers the composition away, so it takes part in the layout.
        subject = request.prompt + (f"\x1fwithout {request.negative_prompt}" if request.negative_prompt else "")
        if request.task == "generate":
            pixels = images.synthesize_image(subject, request.seed, request.width, request.height, steps)
        elif request.task in ("image-to-image", "edit"):
            pixels = self._transform(request, subject, steps)
        else:
            raise RunnerRequestError(f"unknown image task {request.task!r}")
        return _guided(pixels, request.guidance_scale)

    @staticmethod
    def _transform(request: ImageRequest, subject: str, steps: int) -> np.ndarray:
        from PIL import Image

        from ttmedia.media import images

        if request.image is None:
            raise RunnerRequestError(f"{request.task} needs an input image")
        source = Image.fromarray(request.image, "RGB")
        mask = Image.fromarray(request.mask, "L") if request.mask is not None else None
        return images.transform_image(source, subject, request.seed, request.strength,
                                      source.width, source.height, mask, steps=steps)


def _guided(pixels: np.ndarray, guidance: float | None) -> np.ndarray:
    """Stronger guidance, stronger contrast (classifier-free guidance sharpens what the prompt asks)."""
    if guidance is None or guidance == NEUTRAL_GUIDANCE:
        return pixels
    import numpy as np

    factor = min(max(0.7 + 0.06 * guidance, 0.5), 2.0)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    return np.clip(mean + (pixels.astype(np.float32) - mean) * factor + 0.5, 0, 255).astype(np.uint8)


def _device_steps(request: ImageRequest) -> int:
    steps = max(1, request.num_inference_steps)
    if request.task == "generate":
        return steps
    return max(1, int(steps * request.strength))
