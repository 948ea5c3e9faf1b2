"""What differs between job types: the runner payload, the chunks a run streams, the result.

The manager owns the lifecycle (states, leases, retries, cancellation); a kind only knows its
media. Outputs go to the artifact store's staging directory (ARTIFACT_DIR/jobs/<job_id>/, a path
built only from validated ids); the runner writes them atomically (temp file + rename), so a
killed run never leaves a half file that a download could serve, and each finished file is
recorded in the job store with its uri.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ttmedia.jobs.artifacts import ArtifactStore
from ttmedia.jobs.models import CHECKPOINT_ID_RE, Job, JobType
from ttmedia.jobs.store import JobStore
from ttmedia.runners.types import (
    Progress,
    TrainingEvent,
    TrainingRequest,
    TrainingResult,
    VideoRequest,
    VideoResult,
    from_fields,
)
from ttmedia.settings import Settings

VIDEO_FILE = "video.mp4"
CHECKPOINT_DIR = "checkpoints"


class JobKind:
    def __init__(self, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
        self.store = store
        self.artifacts = artifacts
        self.settings = settings

    def dir(self, job: Job) -> Path:
        return self.artifacts.staging_dir(job.id)

    async def prepare(self, job: Job) -> Any:
        """The runner's typed request for this run (ttmedia.runners.types)."""
        raise NotImplementedError

    async def on_chunk(self, job: Job, chunk: Any) -> int | None:
        """Record a chunk; return the new progress (0..100) if it carries one."""
        if isinstance(chunk, Progress):
            return max(0, min(100, int(chunk.percent)))
        return None

    async def finish(self, job: Job, final: Any) -> dict[str, Any] | None:
        """Check the run's output; return the job's `result` (raise if the output is missing)."""
        raise NotImplementedError

    async def discard(self, job: Job) -> None:
        """A cancelled run's partial outputs."""
        await self.artifacts.remove(job.id)


class VideoKind(JobKind):
    async def prepare(self, job: Job) -> VideoRequest:
        s = self.settings
        out = self.dir(job)
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        width, height, frames, fps = video_geometry(s, job.payload.get("aspect_ratio"),
                                                    job.payload.get("duration_seconds"))
        request: VideoRequest = from_fields(
            VideoRequest, job.payload, num_frames=frames, width=width, height=height, fps=fps,
            output_path=str(out / VIDEO_FILE))
        inputs = await self.store.inputs(job.id)
        if inputs:
            # Decoded per run, not stored decoded: the store keeps what the client sent.
            request.images = await asyncio.to_thread(_decode_all, inputs, width, height)
        return request

    async def finish(self, job: Job, final: VideoResult) -> dict[str, Any]:
        try:
            uri, size = await self.artifacts.publish(job.id, VIDEO_FILE)
        except FileNotFoundError:
            uri, size = "", 0
        if size == 0:
            raise RuntimeError("the runner reported success but wrote no video")
        await self.store.add_artifact(job.id, VIDEO_FILE, uri, size)
        return {"download_url": f"/v1/videos/generations/{job.id}/download", "content_type": "video/mp4",
                "bytes": size, "frames": final.frames, "width": final.width, "height": final.height,
                "fps": final.fps, "seconds": round(final.frames / max(final.fps, 1), 3)}


#: Frames per second of a clip; a long one gets fewer (see video_geometry).
VIDEO_FPS = 16
#: A clip has at most this many times SIM_VIDEO_FRAMES frames, so a minute of simulated video
#: costs about a second of encoding, not eight.
MAX_FRAMES_FACTOR = 4


def video_geometry(s: Settings, aspect_ratio: str | None, duration_s: float | None) -> tuple[int, int, int, int]:
    """(width, height, frames, fps) of a clip: the configured pixel area (SIM_VIDEO_WIDTH ×
    SIM_VIDEO_HEIGHT) in the requested aspect ratio, and `duration_s` seconds of it (the
    configured SIM_VIDEO_FRAMES at 16 fps when not given). A long clip keeps its duration at a
    lower frame rate, at least 1 fps."""
    width, height = s.sim_video_width, s.sim_video_height
    if aspect_ratio:
        across, down = (int(x) for x in aspect_ratio.split(":"))
        area = width * height
        width = max(16, round((area * across / down) ** 0.5 / 8) * 8)
        height = max(16, round(width * down / across / 8) * 8)
    if not duration_s:
        return width, height, s.sim_video_frames, VIDEO_FPS
    cap = max(s.sim_video_frames * MAX_FRAMES_FACTOR, 1)
    fps = max(1, min(VIDEO_FPS, int(cap // duration_s)))
    return width, height, max(1, round(fps * duration_s)), fps


def _decode_all(blobs: list[bytes], width: int, height: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    from ttmedia.media import images

    out = []
    for data in blobs:
        img = images.decode_image(data).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        out.append(np.asarray(img, dtype=np.uint8))
    return out


class TrainingKind(JobKind):
    async def prepare(self, job: Job) -> TrainingRequest:
        out = self.dir(job) / CHECKPOINT_DIR
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        resume = 0
        if job.attempts > 1:
            # A re-run (restart, lost worker, another replica) continues from its last
            # checkpoint; the steps after it will be trained again, so what they recorded goes.
            saved = await self.store.checkpoints(job.id)
            resume = max((c["step"] for c in saved), default=0)
            await self.store.forget_after(job.id, resume)
            await self._log(job, resume, f"Attempt {job.attempts}: resuming from step {resume}.")
        return from_fields(TrainingRequest, job.payload, job_id=job.id, checkpoint_dir=str(out), resume_step=resume)

    async def on_chunk(self, job: Job, chunk: Any) -> int | None:
        if not isinstance(chunk, TrainingEvent):
            return await super().on_chunk(job, chunk)
        step = chunk.step
        if chunk.kind == "metric":
            record: dict[str, Any] = {"global_step": step, "epoch": chunk.epoch, "metric_name": chunk.metric_name,
                                      "value": chunk.value}
            if chunk.learning_rate is not None:
                record["learning_rate"] = chunk.learning_rate
            await self.store.add_record(job.id, "metric", step, {**record, "timestamp": int(time.time())})
        elif chunk.kind == "log":
            await self._log(job, step, chunk.message, chunk.level)
        elif chunk.kind == "checkpoint":
            if not CHECKPOINT_ID_RE.match(chunk.id):
                raise RuntimeError(f"the runner saved a checkpoint with an invalid id {chunk.id!r}")
            uri, _size = await self.artifacts.publish(job.id, f"{CHECKPOINT_DIR}/{chunk.id}.zip")
            await self.store.add_checkpoint(job.id, chunk.id, step, chunk.epoch, dict(chunk.metrics), uri)
        return None

    async def _log(self, job: Job, step: int, message: str, kind: str = "info") -> None:
        await self.store.add_record(job.id, "log", step, {"timestamp": int(time.time()), "type": kind,
                                                          "step": step, "message": message})

    async def finish(self, job: Job, final: TrainingResult) -> dict[str, Any]:
        await self._log(job, final.step, f"Training finished at step {final.step}.")
        checkpoints = await self.store.checkpoints(job.id)
        return {"steps": final.step, "final_loss": final.loss,
                "checkpoints": len(checkpoints), "last_checkpoint": checkpoints[-1]["id"] if checkpoints else None}

    async def discard(self, job: Job) -> None:
        # A cancelled fine-tune keeps the checkpoints it saved: they are finished artefacts.
        pass


def make_kinds(store: JobStore, artifacts: ArtifactStore, settings: Settings) -> dict[JobType, JobKind]:
    return {JobType.VIDEO: VideoKind(store, artifacts, settings),
            JobType.TRAINING: TrainingKind(store, artifacts, settings)}
