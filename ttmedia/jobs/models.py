"""The job object and its state machine, shared by video generation and fine-tuning.

```
queued ──► in_progress ──► completed | failed
  │   ▲         │
  │   └─────────┤ re-queued after a server restart, an expired lease (its replica died)
  │             │ or a lost worker (attempts < JOB_MAX_ATTEMPTS)
  │             ▼
  │        cancelling ──► cancelled
  └──────────────────────► cancelled   (never started: nothing to stop)
```

Every status change goes through `check_transition`, so an impossible move (completing a
cancelled job, cancelling a finished one) is a bug caught at the source, not a corrupt row.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # failed from queued: its model is no longer served after a restart, or it hit the cap.
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLING,
                                      JobStatus.QUEUED}),
    # failed from cancelling: the stale-job sweep, when the cancel never completed.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(old: JobStatus, new: JobStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old} to {new}")


class JobType(StrEnum):
    VIDEO = "video"
    TRAINING = "training"


#: Error codes in `error.code` (upstream's three plus ours).
PROCESSING_ERROR = "processing_error"
STALE_JOB = "stale_job"
SERVER_RESTART = "server_restart"
WORKER_LOST = "worker_lost"
MODEL_UNAVAILABLE = "model_unavailable"
INSUFFICIENT_STORAGE = "insufficient_storage"

#: Canonical lower-case uuid4. Ids reach the filesystem (the job's output directory), so only
#: this shape is ever accepted; the spec declares the same pattern on every {job_id}.
JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CHECKPOINT_ID_RE = re.compile(r"^checkpoint-[0-9]{1,9}$")


def new_job_id() -> str:
    return str(uuid.uuid4())


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


@dataclass
class Job:
    id: str
    job_type: JobType
    model: str
    created_at: float
    request_parameters: dict[str, Any]
    org_id: str = ""
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    completed_at: float | None = None
    progress: int = 0
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # what the runner gets; never public
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = None  # the replica running it (in_progress/cancelling); never public

    @property
    def object_name(self) -> str:
        return "video.generation" if self.job_type is JobType.VIDEO else "fine_tuning.job"

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "job_type": self.job_type.value,
            "status": self.status.value,
            "model": self.model,
            "created_at": int(self.created_at),
            "started_at": _int_or_none(self.started_at),
            "completed_at": _int_or_none(self.completed_at),
            "progress": self.progress,
            "attempts": self.attempts,
            "error": {"code": self.error_code, "message": self.error_message or ""} if self.error_code else None,
            "request_parameters": self.request_parameters,
            "result": self.result,
        }
        if self.org_id:
            out["org_id"] = self.org_id
        return out


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def describe_blob(data: bytes) -> dict[str, Any]:
    """What a job echoes instead of an uploaded image: enough to identify it, not the bytes."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
