"""Simulated video diffusion (Wan2.2, Mochi): per-step device time, progress chunks, a real MP4.

The run is a stream: one Progress per denoising step (0..90; the last 10 % is VAE decode +
encode), then a VideoResult describes the file. The MP4 is written by the worker
straight to `output_path` (atomically, media.video.write_mp4), so megabytes of frames never
cross the scheduler's pipe. Image conditioning (I2V) blends each `images[i]` into the frames
around its `frame_pos`, so the conditioning visibly shows in the output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError, device_time
from ttmedia.runners.sim import on_sim_device
from ttmedia.runners.types import Progress, VideoRequest, VideoResult

#: Upstream's frame_pos range is 0..80 (81 frames); positions scale onto the simulated length.
UPSTREAM_LAST_FRAME = 80
#: How many frames on each side of a conditioning frame still show the image.
_BLEND_RADIUS = 6


class SimVideoRunner(Runner):
    family = "video"
    simulated = True

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.i2v_only = bool(ctx.options.get("i2v_only", False))

    async def warmup(self) -> None:
        from ttmedia.media import video  # noqa: F401 - import (and find ffmpeg) before serving

        await device_time(self.ctx.timing.warmup_s)

    async def stream(self, request: VideoRequest) -> AsyncIterator[Progress | VideoResult]:
        if self.i2v_only and not request.images:
            raise RunnerRequestError(f"{self.ctx.model} is image-to-video only; send image_prompts")
        t = self.ctx.timing
        steps = max(1, request.num_inference_steps)
        await device_time(t.base_s)
        for step in range(1, steps + 1):
            await device_time(t.per_step_s)
            yield Progress(90 * step // steps, step, steps)
        yield await on_sim_device(self._encode, request)

    @staticmethod
    def _encode(request: VideoRequest) -> VideoResult:
        from ttmedia.media import video

        frames, width, height = request.num_frames, request.width, request.height
        source = video.synthesize_frames(request.prompt, request.seed, frames, width, height, request.fps)
        conditioning = list(zip(request.images, request.frame_positions, strict=False))
        size = video.write_mp4(_condition(source, conditioning, frames), width, height, request.output_path,
                               request.fps)
        return VideoResult(frames, width + width % 2, height + height % 2, request.fps, size)


def _condition(frames: Iterator[np.ndarray], conditioning: list[tuple[np.ndarray, int]],
               total: int) -> Iterator[np.ndarray]:
    anchors = [(img, round(pos * (total - 1) / UPSTREAM_LAST_FRAME)) for img, pos in conditioning]
    for index, frame in enumerate(frames):
        out = frame.astype(np.float32)
        for img, at in anchors:
            weight = max(0.0, 1.0 - abs(index - at) / _BLEND_RADIUS)
            if weight > 0 and img.shape == frame.shape:
                out = out * (1 - weight) + img.astype(np.float32) * weight
        yield out.clip(0, 255).astype(np.uint8)
