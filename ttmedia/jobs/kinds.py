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

    async def prepare(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    async def on_chunk(self, job: Job, chunk: dict[str, Any]) -> int | None:
        """Record a chunk; return the new progress (0..100) if it carries one."""
        progress = chunk.get("progress")
        return None if progress is None else max(0, min(100, int(progress)))

    async def finish(self, job: Job, final: dict[str, Any]) -> dict[str, Any] | None:
        """Check the run's output; return the job's `result` (raise if the output is missing)."""
        raise NotImplementedError

    async def discard(self, job: Job) -> None:
        """A cancelled run's partial outputs."""
        await self.artifacts.remove(job.id)


class VideoKind(JobKind):
    async def prepare(self, job: Job) -> dict[str, Any]:
        s = self.settings
        out = self.dir(job)
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        payload = {**job.payload, "num_frames": s.sim_video_frames, "width": s.sim_video_width,
                   "height": s.sim_video_height, "fps": 16, "output_path": str(out / VIDEO_FILE)}
        inputs = await self.store.inputs(job.id)
        if inputs:
            # Decoded per run, not stored decoded: the store keeps what the client sent.
            payload["images"] = await asyncio.to_thread(
                _decode_all, inputs, s.sim_video_width, s.sim_video_height)
        return payload

    async def finish(self, job: Job, final: dict[str, Any]) -> dict[str, Any]:
        try:
            uri, size = await self.artifacts.publish(job.id, VIDEO_FILE)
        except FileNotFoundError:
            uri, size = "", 0
        if size == 0:
            raise RuntimeError("the runner reported success but wrote no video")
        await self.store.add_artifact(job.id, VIDEO_FILE, uri, size)
        return {"download_url": f"/v1/videos/generations/{job.id}/download", "content_type": "video/mp4",
                "bytes": size, "frames": final.get("frames"), "width": final.get("width"),
                "height": final.get("height"), "fps": final.get("fps")}


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
    async def prepare(self, job: Job) -> dict[str, Any]:
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
        return {**job.payload, "checkpoint_dir": str(out), "resume_step": resume}

    async def on_chunk(self, job: Job, chunk: dict[str, Any]) -> int | None:
        kind = chunk.get("kind")
        step = int(chunk.get("global_step", chunk.get("step", 0)) or 0)
        if kind == "metric":
            record = {k: chunk[k] for k in ("global_step", "epoch", "metric_name", "value", "learning_rate")
                      if k in chunk}
            await self.store.add_record(job.id, "metric", step, {**record, "timestamp": int(time.time())})
        elif kind == "log":
            await self._log(job, step, str(chunk.get("message", "")), chunk.get("type", "info"))
        elif kind == "checkpoint":
            ckpt_id = str(chunk["id"])
            if not CHECKPOINT_ID_RE.match(ckpt_id):
                raise RuntimeError(f"the runner saved a checkpoint with an invalid id {ckpt_id!r}")
            uri, _size = await self.artifacts.publish(job.id, f"{CHECKPOINT_DIR}/{ckpt_id}.zip")
            await self.store.add_checkpoint(job.id, ckpt_id, step, int(chunk.get("epoch", 0)),
                                            dict(chunk.get("metrics") or {}), uri)
        return await super().on_chunk(job, chunk)

    async def _log(self, job: Job, step: int, message: str, kind: str = "info") -> None:
        await self.store.add_record(job.id, "log", step, {"timestamp": int(time.time()), "type": kind,
                                                          "step": step, "message": message})

    async def finish(self, job: Job, final: dict[str, Any]) -> dict[str, Any]:
        await self._log(job, int(final.get("step", 0)), f"Training finished at step {final.get('step', 0)}.")
        checkpoints = await self.store.checkpoints(job.id)
        return {"steps": final.get("step"), "final_loss": final.get("loss"),
                "checkpoints": len(checkpoints), "last_checkpoint": checkpoints[-1]["id"] if checkpoints else None}

    async def discard(self, job: Job) -> None:
        # A cancelled fine-tune keeps the checkpoints it saved: they are finished artefacts.
        pass


def make_kinds(store: JobStore, artifacts: ArtifactStore, settings: Settings) -> dict[JobType, JobKind]:
    return {JobType.VIDEO: VideoKind(store, artifacts, settings),
            JobType.TRAINING: TrainingKind(store, artifacts, settings)}
