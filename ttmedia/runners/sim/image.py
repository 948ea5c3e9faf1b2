"""Simulated diffusion model (SDXL/FLUX-like): latency ∝ steps, decodable JPEG/PNG, deterministic."""

from __future__ import annotations

import asyncio
from typing import Any

from ttmedia.runners.base import Runner, RunnerContext, device_time


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
        steps = sum(int(r.get("num_inference_steps") or 20) for r in batch)
        device = asyncio.ensure_future(device_time(t.base_s + t.per_step_s * steps))
        images = await asyncio.to_thread(self._render_all, batch)
        await device
        return images

    def _render_all(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._render(r) for r in batch]

    def _render(self, request: dict[str, Any]) -> dict[str, Any]:
        from ttmedia.media import images

        size = int(request.get("size") or self.size)
        pixels = images.synthesize_image(
            request["prompt"], int(request.get("seed") or 0), size, size, int(request.get("num_inference_steps") or 20)
        )
        fmt = str(request.get("image_return_format") or "JPEG").upper()
        data = images.encode_image(pixels, fmt, int(request.get("image_quality") or 85))
        return {"image": data, "format": fmt}
