"""All configuration, read from the environment (upstream tt-media-server names where they exist).

Every setting is documented in the README's Configuration table; keep the two in step.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=False)

    # --- what this process serves -------------------------------------------------------------
    models: str = Field(
        default="",
        description='Models served, e.g. "stable-diffusion-xl-base-1.0@(0),(1);Qwen3-8B@(2)". '
        "Unset: one simulated model per implemented family.",
    )
    model: str = Field(default="", description="Upstream single-model setting; used when MODELS is unset.")
    device: str = Field(default="n150", description="TT device type; selects the timing profile.")
    device_ids: str = Field(default="", description='Device groups for MODEL, e.g. "(0),(1)".')
    served_model_name: str = Field(default="", description="Upstream: overrides the id of the single MODEL.")
    model_runner: str = Field(default="", description="Upstream: the runner of the single MODEL (a name or module:Class).")

    # --- scheduler ------------------------------------------------------------------------------
    max_batch_size: int = Field(default=1, ge=1, le=256)
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    max_queue_size: int = Field(default=5000, ge=1)
    request_processing_timeout_seconds: float = Field(default=1000.0, gt=0)
    max_worker_restart_count: int = Field(default=5, ge=0)
    worker_restart_window_seconds: float = Field(default=600.0, gt=0)
    worker_restart_backoff_seconds: float = Field(default=1.0, ge=0)
    worker_restart_backoff_max_seconds: float = Field(default=30.0, ge=0)
    worker_heartbeat_seconds: float = Field(default=1.0, gt=0)
    worker_heartbeat_timeout_seconds: float = Field(default=15.0, gt=0)
    warmup_timeout_seconds: float = Field(default=3600.0, gt=0,
                                          description="A warmup still running after this fails the worker's init.")
    canary_interval_seconds: float = Field(default=60.0, ge=0,
                                           description="Idle time before a runner's canary request runs; 0: never.")
    retry_after_max_seconds: float = Field(default=60.0, ge=1,
                                           description="Cap of every Retry-After estimate.")
    drain_grace_seconds: float = Field(default=30.0, ge=0)
    reset_device_command: str = Field(default="", description="Run between stop and restart on a reset.")

    # --- simulation -----------------------------------------------------------------------------
    sim_warmup_seconds: float | None = Field(default=None, ge=0)
    sim_speed: float = Field(default=1.0, ge=0)
    sim_faults: str = Field(default="")

    # --- HTTP -----------------------------------------------------------------------------------
    api_key: str = Field(default="")
    api_keys: str = Field(default="", description="Comma-separated list of accepted API keys.")
    no_auth: bool = Field(default=False)
    validate_responses: bool = Field(default=False)
    max_request_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_audio_size_bytes: int = Field(default=50 * 1024 * 1024, ge=1,
                                      description="Upstream: largest audio upload (decoded bytes); else 413.")
    log_level: str = Field(default="info")

    # --- long-running jobs (video, fine-tuning) --------------------------------------------------
    data_dir: str = Field(default="./data", description="Jobs database (jobs.db) and job outputs.")
    job_max_attempts: int = Field(default=3, ge=1, description="Starts per job (restarts, lost workers).")
    job_retention_seconds: float = Field(default=86400.0, gt=0)
    job_max_stuck_time_seconds: float = Field(default=10800.0, gt=0)
    job_cleanup_interval_seconds: float = Field(default=300.0, gt=0)
    job_concurrency_per_model: int = Field(default=0, ge=0, description="0: one job per worker.")
    max_jobs: int = Field(default=10000, ge=1, description="Upstream MAX_JOBS: unfinished jobs before 429.")
    org_id_header: str = Field(default="X-TT-Organization", min_length=1)
    sim_video_frames: int = Field(default=33, ge=1, le=241)
    sim_video_width: int = Field(default=256, ge=16, le=1920)
    sim_video_height: int = Field(default=144, ge=16, le=1080)
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$",
                            description="json, text, or auto (text on a terminal, JSON otherwise).")
    cors_allow_origins: str = Field(default="", description="Comma-separated origins; CORS is off when empty.")

    @field_validator("sim_warmup_seconds", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def accepted_api_keys(self) -> tuple[str, ...]:
        keys = [self.api_key] + self.api_keys.split(",")
        return tuple(k.strip() for k in keys if k.strip())

    @property
    def auth_enabled(self) -> bool:
        return bool(self.accepted_api_keys) and not self.no_auth


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
