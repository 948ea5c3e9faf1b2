"""The model catalog: every model name this server knows, its family, runner and timing profile.

Timings are the simulated device's: seconds on an n150, scaled per device type by DEVICE_SPEED.
They follow the upstream mocks' shape (long warmup, per-step or per-token cost, batch = base +
per item), not measured TT numbers. A real runner ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ttmedia.runners.types import AUDIO, CNN, EMBEDDING, IMAGE, LLM, TRAINING, TTS, VIDEO

#: Family → the routes it serves (as listed by /v1/models).
FAMILY_ROUTES: dict[str, tuple[str, ...]] = {
    LLM: ("/v1/completions", "/v1/chat/completions", "/v1/tokenize", "/v1/detokenize"),
    IMAGE: ("/v1/images/generations", "/v1/images/image-to-image", "/v1/images/edits"),
    EMBEDDING: ("/v1/embeddings",),
    CNN: ("/v1/cnn/search-image",),
    AUDIO: ("/v1/audio/transcriptions", "/v1/audio/translations"),
    TTS: ("/v1/audio/speech",),
    VIDEO: ("/v1/videos/generations", "/v1/videos/generations/i2v", "/v1/videos/generations/i2v/upload"),
    TRAINING: ("/v1/jobs", "/v1/catalog"),
}

#: Relative device speed (time multiplier) per TT device type; n150 is the reference.
DEVICE_SPEED: dict[str, float] = {
    "n150": 1.0,
    "n300": 0.6,
    "t3k": 0.3,
    "p100": 0.6,
    "p150": 0.5,
    "p300": 0.35,
    "p150x4": 0.2,
    "p150x8": 0.12,
    "p300x2": 0.25,
    "galaxy": 0.1,
    "bh-galaxy": 0.07,
}


@dataclass(frozen=True)
class Timing:
    """Simulated device time. A call costs base_s + per_item_s·items + per_step_s·steps."""

    warmup_s: float
    base_s: float = 0.0
    per_item_s: float = 0.0
    per_step_s: float = 0.0
    per_token_s: float = 0.0

    def scaled(self, factor: float) -> Timing:
        return Timing(
            warmup_s=self.warmup_s * factor,
            base_s=self.base_s * factor,
            per_item_s=self.per_item_s * factor,
            per_step_s=self.per_step_s * factor,
            per_token_s=self.per_token_s * factor,
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    runner: str
    timing: Timing
    hf_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # MODELS strings and catalog numbers

    @property
    def routes(self) -> tuple[str, ...]:
        return FAMILY_ROUTES.get(self.family, ())


def _m(name: str, family: str, runner: str, timing: Timing, hf_id: str = "", **options: object) -> ModelInfo:
    return ModelInfo(name, family, runner, timing, hf_id or name, dict(options))


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _m("stable-diffusion-xl-base-1.0", IMAGE, "sim-image", Timing(5.0, 0.05, 0.0, 0.11),
           "stabilityai/stable-diffusion-xl-base-1.0", min_steps=12, size=1024),
        _m("FLUX.1-dev", IMAGE, "sim-image", Timing(9.0, 0.1, 0.0, 0.32),
           "black-forest-labs/FLUX.1-dev", min_steps=4, size=1024),
        _m("FLUX.1-schnell", IMAGE, "sim-image", Timing(7.0, 0.1, 0.0, 0.28),
           "black-forest-labs/FLUX.1-schnell", min_steps=4, size=1024),
        _m("Z-Image-Turbo", IMAGE, "sim-image", Timing(4.0, 0.04, 0.0, 0.09),
           "Tongyi-MAI/Z-Image-Turbo", min_steps=1, size=1024),
        _m("Qwen3-8B", LLM, "sim-llm", Timing(3.0, 0.04, 0.0, 0.0, 0.025), "Qwen/Qwen3-8B",
           max_model_length=4096, max_concurrency=32),
        _m("Llama-3.1-8B-Instruct", LLM, "sim-llm", Timing(3.0, 0.04, 0.0, 0.0, 0.022),
           "meta-llama/Llama-3.1-8B-Instruct", max_model_length=8192, max_concurrency=32),
        _m("bge-m3", EMBEDDING, "sim-embedding", Timing(2.0, 0.01, 0.004), "BAAI/bge-m3", dimensions=1024),
        _m("resnet-50", CNN, "sim-cnn", Timing(1.5, 0.004, 0.002), "microsoft/resnet-50"),
        _m("whisper-large-v3", AUDIO, "sim-whisper", Timing(6.0, 0.08, 0.0, 0.04),
           "openai/whisper-large-v3"),
        _m("distil-large-v3", AUDIO, "sim-whisper", Timing(4.0, 0.05, 0.0, 0.02),
           "distil-whisper/distil-large-v3"),
        _m("speecht5_tts", TTS, "sim-tts", Timing(3.0, 0.05, 0.0, 0.0, 0.004), "microsoft/speecht5_tts"),
        # Video: per-step cost of one denoising step over all frames; t2v / i2v say what the
        # model accepts (an I2V-only model answers text-to-video with 422, as upstream).
        _m("Wan2.2-T2V-A14B-Diffusers", VIDEO, "sim-video", Timing(12.0, 0.5, 0.0, 0.4),
           "Wan-AI/Wan2.2-T2V-A14B-Diffusers", t2v=True, i2v=False),
        _m("Wan2.2-I2V-A14B-Diffusers", VIDEO, "sim-video", Timing(12.0, 0.5, 0.0, 0.4),
           "Wan-AI/Wan2.2-I2V-A14B-Diffusers", t2v=False, i2v=True, i2v_only=True),
        _m("mochi-1-preview", VIDEO, "sim-video", Timing(10.0, 0.5, 0.0, 0.3), "genmo/mochi-1-preview",
           t2v=True, i2v=False),
        # Fine-tuning (LoRA): per-step cost of one optimiser step of one micro-batch.
        _m("Llama-3.2-3B-Instruct", TRAINING, "sim-trainer", Timing(4.0, 0.2, 0.0, 0.05),
           "meta-llama/Llama-3.2-3B-Instruct"),
        _m("gemma-1.1-2b-it", TRAINING, "sim-trainer", Timing(3.0, 0.2, 0.0, 0.04), "google/gemma-1.1-2b-it"),
        # Real models on the CPU (the `cpu` extra). Timing is only the expected warmup, for
        # Retry-After while they load; their calls take what the CPU takes.
        _m("whisper-base", AUDIO, "faster-whisper", Timing(3.0), "openai/whisper-base"),
        _m("espeak-ng", TTS, "espeak-ng", Timing(0.5), "espeak-ng"),
        _m("all-MiniLM-L6-v2", EMBEDDING, "sentence-transformers", Timing(8.0),
           "sentence-transformers/all-MiniLM-L6-v2", dimensions=384, max_model_length=256, max_batch_size=32),
        # Any Hugging Face causal-LM directory: MODELS="hf-causal-lm~model_path=/models/qwen".
        _m("hf-causal-lm", LLM, "hf-causal-lm", Timing(10.0), "hf-causal-lm", max_concurrency=4),
    )
}


def lookup(name: str) -> ModelInfo | None:
    """Catalog entry by name, also accepting the Hugging Face id (upstream clients send either)."""
    if name in CATALOG:
        return CATALOG[name]
    for info in CATALOG.values():
        if info.hf_id == name:
            return info
    return None


def video_mode(info: ModelInfo, mode: str) -> bool:
    """Whether a video model takes `mode`: "t2v" (text-to-video, the default) or "i2v" (images)."""
    return bool(info.options.get(mode, mode == "t2v"))


def with_runner(info: ModelInfo, runner: str) -> ModelInfo:
    return replace(info, runner=runner)
