"""What differs between job types: the runner payload, the chunks a run streams, the result.

The manager owns the lifecycle (states, retries, cancellation); a kind only knows its media.
Outputs go to DATA_DIR/jobs/<job_id>/, a path built only from validated ids, and the runner
writes them atomically (temp file + rename), so a killed run never leaves a half file that a
download could serve.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from ttmedia.jobs.models import CHECKPOINT_ID_RE, Job, JobType, valid_job_id
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


def job_dir(data_dir: Path, job_id: str) -> Path:
    if not valid_job_id(job_id):  # the last line of defence against path traversal
        raise ValueError(f"invalid job id {job_id!r}")
    return data_dir / "jobs" / job_id


def remove_outputs(data_dir: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


class JobKind:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def dir(self, job: Job) -> Path:
        return job_dir(self.store.data_dir, job.id)

    async def prepare(self, job: Job) -> Any:
        """The runner's typed request for this run (ttmedia.runners.types)."""
        raise NotImplementedError

    def on_chunk(self, job: Job, chunk: Any) -> int | None:
        """Record a chunk; return the new progress (0..100) if it carries one."""
        if isinstance(chunk, Progress):
            return max(0, min(100, int(chunk.percent)))
        return None

    def finish(self, job: Job, final: Any) -> dict[str, Any] | None:
        """Check the run's output; return the job's `result` (raise if the output is missing)."""
        raise NotImplementedError

    def discard(self, job: Job) -> None:
        """A cancelled run's partial outputs."""
        remove_outputs(self.store.data_dir, job.id)


class VideoKind(JobKind):
    async def prepare(self, job: Job) -> VideoRequest:
        s = self.settings
        out = self.dir(job)
        out.mkdir(parents=True, exist_ok=True)
        request: VideoRequest = from_fields(
            VideoRequest, job.payload, num_frames=s.sim_video_frames, width=s.sim_video_width,
            height=s.sim_video_height, fps=16, output_path=str(out / VIDEO_FILE))
        inputs = self.store.inputs(job.id)
        if inputs:
            # Decoded per run, not stored decoded: the store keeps what the client sent.
            request.images = await asyncio.to_thread(_decode_all, inputs, s.sim_video_width, s.sim_video_height)
        return request

    def finish(self, job: Job, final: VideoResult) -> dict[str, Any]:
        path = self.dir(job) / VIDEO_FILE
        if not path.is_file() or path.stat().st_size == 0:
            raise RuntimeError("the runner reported success but wrote no video")
        return {"download_url": f"/v1/videos/generations/{job.id}/download", "content_type": "video/mp4",
                "bytes": path.stat().st_size, "frames": final.frames, "width": final.width,
                "height": final.height, "fps": final.fps}


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
        out.mkdir(parents=True, exist_ok=True)
        resume = 0
        if job.attempts > 1:
            # A re-run (restart, lost worker) continues from its last checkpoint; the steps after
            # it will be trained again, so what they recorded goes.
            saved = self.store.checkpoints(job.id)
            resume = max((c["step"] for c in saved), default=0)
            self.store.forget_after(job.id, resume)
            self._log(job, resume, f"Attempt {job.attempts}: resuming from step {resume}.")
        return from_fields(TrainingRequest, job.payload, job_id=job.id, checkpoint_dir=str(out), resume_step=resume)

    def on_chunk(self, job: Job, chunk: Any) -> int | None:
        if isinstance(chunk, TrainingEvent):
            step = chunk.step
            if chunk.kind == "metric":
                record: dict[str, Any] = {"global_step": step, "epoch": chunk.epoch, "metric_name": chunk.metric_name,
                                          "value": chunk.value}
                if chunk.learning_rate is not None:
                    record["learning_rate"] = chunk.learning_rate
                self.store.add_record(job.id, "metric", step, {**record, "timestamp": int(time.time())})
            elif chunk.kind == "log":
                self._log(job, step, chunk.message, chunk.level)
            elif chunk.kind == "checkpoint":
                self.store.add_checkpoint(job.id, chunk.id, step, chunk.epoch, dict(chunk.metrics))
        return super().on_chunk(job, chunk)

    def _log(self, job: Job, step: int, message: str, kind: str = "info") -> None:
        self.store.add_record(job.id, "log", step, {"timestamp": int(time.time()), "type": kind, "step": step,
                                                    "message": message})

    def finish(self, job: Job, final: TrainingResult) -> dict[str, Any]:
        self._log(job, final.step, f"Training finished at step {final.step}.")
        checkpoints = self.store.checkpoints(job.id)
        return {"steps": final.step, "final_loss": final.loss,
                "checkpoints": len(checkpoints), "last_checkpoint": checkpoints[-1]["id"] if checkpoints else None}

    def discard(self, job: Job) -> None:
        # A cancelled fine-tune keeps the checkpoints it saved: they are finished artefacts.
        pass

    def checkpoint_file(self, job: Job, checkpoint_id: str) -> Path:
        if not CHECKPOINT_ID_RE.match(checkpoint_id):
            raise ValueError(f"invalid checkpoint id {checkpoint_id!r}")
        return self.dir(job) / CHECKPOINT_DIR / f"{checkpoint_id}.zip"


def make_kinds(store: JobStore, settings: Settings) -> dict[JobType, JobKind]:
    return {JobType.VIDEO: VideoKind(store, settings), JobType.TRAINING: TrainingKind(store, settings)}
