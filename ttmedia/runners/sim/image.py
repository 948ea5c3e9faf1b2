"""Simulated diffusion model (SDXL/FLUX-like): latency ∝ steps, decodable JPEG/PNG, deterministic.

`task` in the payload picks the pipeline: "generate" (default, text-to-image), "image-to-image"
(`image` HxWx3 uint8 already at the output size, `strength`) or "edit" (plus `mask`, HxW uint8,
white = repaint). As in diffusers, image-to-image runs only `strength · steps` denoising steps,
so it costs that many steps of device time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError, device_time


class SimImageRunner(Runner):
    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.size = int(ctx.options.get("size", 1024))

    async def warmup(self) -> None:
        # Import the media stack now, as a real runner compiles its traces, so the first
        # request does not pay for it.
        from ttmedia.media import images  # noqa: F401

        await device_time(self.ctx.timing.warmup_s)

    async def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t = self.ctx.timing
        steps = sum(_device_steps(r) for r in batch)
        device = asyncio.ensure_future(device_time(t.base_s + t.per_step_s * steps))
        images = await asyncio.to_thread(self._render_all, batch)
        await device
        return images

    def _render_all(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._render(r) for r in batch]

    def _render(self, request: dict[str, Any]) -> dict[str, Any]:
        from ttmedia.media import images

        task = request.get("task") or "generate"
        steps = int(request.get("num_inference_steps") or 20)
        if task == "generate":
            size = int(request.get("size") or self.size)
            pixels = images.synthesize_image(request["prompt"], int(request.get("seed") or 0), size, size, steps)
        elif task in ("image-to-image", "edit"):
            pixels = self._transform(request, steps)
        else:
            raise RunnerRequestError(f"unknown image task {task!r}")
        fmt = str(request.get("image_return_format") or "JPEG").upper()
        data = images.encode_image(pixels, fmt, int(request.get("image_quality") or 85))
        return {"image": data, "format": fmt}

    @staticmethod
    def _transform(request: dict[str, Any], steps: int) -> Any:
        from PIL import Image

        from ttmedia.media import images

        source = Image.fromarray(request["image"], "RGB")
        mask = Image.fromarray(request["mask"], "L") if request.get("mask") is not None else None
        # An edit repaints the masked area fully unless told otherwise (inpainting default 1.0).
        strength = float(request.get("strength", 1.0 if mask is not None else 0.6))
        return images.transform_image(source, request["prompt"], int(request.get("seed") or 0), strength,
                                      source.width, source.height, mask, steps=steps)


def _device_steps(request: dict[str, Any]) -> int:
    steps = int(request.get("num_inference_steps") or 20)
    if (request.get("task") or "generate") == "generate":
        return steps
    return max(1, int(steps * float(request.get("strength", 1.0))))
