"""All configuration, read from the environment (upstream tt-media-server names where they exist).

Every setting is documented in the README's Configuration table; keep the two in step.

A bad value is refused at start-up, one line per setting: its name, the value given and what
is accepted (`load_settings` raises SettingsError; the CLI and the app factory print its
lines and exit with code 2).
"""

from __future__ import annotations

import types
import typing
from functools import cached_property
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ttmedia.runners.catalog import DEVICE_SPEED

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["auto", "json", "text"]
#: all: every request, probes included; probes: all but probes and scrapes that succeeded;
#: errors: only answers of 400 and above (and clients that left, 499).
LogRequests = Literal["all", "probes", "errors"]


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
    strict_model_names: bool = Field(
        default=False, description="`model` must be a served name or Hugging Face id exactly; no case folding, "
        "no single-candidate fallback.")

    # --- scheduler ------------------------------------------------------------------------------
    max_batch_size: int = Field(default=1, ge=1, le=256)
    max_batch_delay_ms: float = Field(default=0.0, ge=0, le=60_000)
    max_queue_size: int = Field(default=5000, ge=1, le=10_000_000)
    request_processing_timeout_seconds: float = Field(default=1000.0, gt=0)
    max_worker_restart_count: int = Field(default=5, ge=0)
    worker_restart_window_seconds: float = Field(default=600.0, gt=0)
    worker_restart_backoff_seconds: float = Field(default=1.0, ge=0)
    worker_restart_backoff_max_seconds: float = Field(default=30.0, ge=0)
    worker_heartbeat_seconds: float = Field(default=1.0, gt=0, le=60)
    worker_heartbeat_timeout_seconds: float = Field(default=15.0, gt=0)
    warmup_timeout_seconds: float = Field(default=3600.0, gt=0,
                                          description="A warmup still running after this fails the worker's init.")
    canary_interval_seconds: float = Field(default=60.0, ge=0,
                                           description="Idle time before a runner's canary request runs; 0: never.")
    retry_after_max_seconds: float = Field(default=60.0, ge=1, le=86_400,
                                           description="Cap of every Retry-After estimate.")
    drain_grace_seconds: float = Field(default=30.0, ge=0)
    reset_device_command: str = Field(default="", description="Run between stop and restart on a reset.")

    # --- simulation -----------------------------------------------------------------------------
    sim_warmup_seconds: float | None = Field(default=None, ge=0)
    sim_speed: float = Field(default=1.0, ge=0, le=1000)
    sim_faults: str = Field(default="")

    # --- HTTP -----------------------------------------------------------------------------------
    api_key: str = Field(default="")
    api_keys: str = Field(default="", description="Comma-separated list of accepted API keys.")
    no_auth: bool = Field(default=False)
    validate_responses: bool = Field(default=False)
    max_request_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_request_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024,
                                          description="Request line and headers; the connection is closed above.")
    request_header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600,
                                                  description="Time to send the request line and headers.")
    request_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600,
                                                description="Longest pause while a request body is sent.")
    keep_alive_timeout_seconds: float = Field(default=5.0, gt=0, le=3600,
                                              description="Idle time of a kept-alive connection.")
    max_audio_size_bytes: int = Field(default=50 * 1024 * 1024, ge=1,
                                      description="Upstream: largest audio upload (decoded bytes); else 413.")
    max_audio_seconds: float = Field(default=1800.0, gt=0, le=86_400,
                                     description="Longest audio accepted, from its header, before decoding.")
    log_level: LogLevel = Field(default="info")
    log_requests: LogRequests = Field(default="all")
    media_url_allowed_domains: str = Field(
        default="", description="Hosts image URLs may be fetched from (comma-separated; *.example.com for its "
        "subdomains). Empty: image URLs are refused.")
    media_url_allowed_networks: str = Field(
        default="", description="CIDRs fetched from although internal (loopback, private, link-local); "
        "empty: none.")
    media_url_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest fetched image; 413 above.")
    media_url_timeout_seconds: float = Field(default=10.0, gt=0, description="Whole fetch, redirects included.")
    media_url_max_redirects: int = Field(default=3, ge=0, le=20)
    legacy_routes_sunset: str = Field(
        default="2026-06-30", pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Sunset date announced on upstream's unversioned routes (upstream's own date).")

    # --- long-running jobs (video, fine-tuning) --------------------------------------------------
    data_dir: str = Field(default="./data", description="Jobs database (jobs.db) and job outputs.")
    job_store_url: str = Field(default="", pattern=r"^(|sqlite:.*|postgres(ql)?://.*)$",
                               description="Unset or sqlite:///…: SQLite in DATA_DIR; postgresql://…: shared.")
    artifact_dir: str = Field(default="", description="Job outputs (MP4s, checkpoints); default DATA_DIR.")
    replica_id: str = Field(default="", description="This replica's name in the job store (default host-pid).")
    job_lease_seconds: float = Field(default=30.0, ge=0.3, le=3600,
                                     description="A running job's lease; renewed every third of it.")
    job_store_pool_size: int = Field(default=5, ge=1, le=100, description="PostgreSQL connections per replica.")
    job_store_checkpoint_seconds: float = Field(default=60.0, gt=0, description="SQLite WAL checkpoint period.")
    job_download_hold_seconds: float = Field(default=60.0, gt=0,
                                             description="A download keeps the retention sweep off its file this long.")
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
    log_format: LogFormat = Field(default="auto",
                                  description="json, text, or auto (text on a terminal, JSON otherwise).")
    cors_allow_origins: str = Field(default="", description="Comma-separated origins; CORS is off when empty.")

    @field_validator("sim_warmup_seconds", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", "log_format", "log_requests", "device", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in DEVICE_SPEED:
            raise ValueError(f"expected one of: {', '.join(DEVICE_SPEED)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.worker_heartbeat_timeout_seconds <= self.worker_heartbeat_seconds:
            raise ValueError(
                f"WORKER_HEARTBEAT_TIMEOUT_SECONDS={self.worker_heartbeat_timeout_seconds:g} is not accepted; "
                f"expected more than WORKER_HEARTBEAT_SECONDS={self.worker_heartbeat_seconds:g}")
        if self.worker_restart_backoff_max_seconds < self.worker_restart_backoff_seconds:
            raise ValueError(
                f"WORKER_RESTART_BACKOFF_MAX_SECONDS={self.worker_restart_backoff_max_seconds:g} is not accepted; "
                f"expected at least WORKER_RESTART_BACKOFF_SECONDS={self.worker_restart_backoff_seconds:g}")
        return self

    @cached_property
    def accepted_api_keys(self) -> tuple[str, ...]:
        keys = [self.api_key] + self.api_keys.split(",")
        return tuple(k.strip() for k in keys if k.strip())

    @property
    def auth_enabled(self) -> bool:
        return bool(self.accepted_api_keys) and not self.no_auth


class SettingsError(ValueError):
    """Settings that cannot be used; `lines` has one line per bad setting."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (used by tests and the CLI)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per error: the setting, the bad value, what is accepted."""
    lines = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a rule across settings: its message names them
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = str(error["loc"][0])
        value = error.get("input")
        shown = repr(value if len(str(value)) <= 60 else str(value)[:57] + "...")
        lines.append(f"{name.upper()}={shown} is not accepted; expected {_accepted(name, error)}")
    return lines


def _accepted(name: str, error: Any) -> str:
    if error["type"] == "value_error":
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("expected ")
    field = Settings.model_fields.get(name)
    if field is None:
        return str(error["msg"])
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(annotation)))
    if annotation is bool:
        return "a boolean (1 or 0, true or false, yes or no)"
    kind = {int: "an integer", float: "a number"}.get(annotation)  # type: ignore[arg-type]
    if kind is None:
        return str(error["msg"]).lower()
    bounds = []
    for rule in field.metadata:
        if isinstance(rule, Ge):
            bounds.append(f">= {rule.ge:g}")
        elif isinstance(rule, Gt):
            bounds.append(f"> {rule.gt:g}")
        elif isinstance(rule, Le):
            bounds.append(f"<= {rule.le:g}")
        elif isinstance(rule, Lt):
            bounds.append(f"< {rule.lt:g}")
    return kind + (" " + " and ".join(bounds) if bounds else "")
