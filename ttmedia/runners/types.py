"""What a runner receives and returns: one typed request and result per model family.

These are the whole contract between the server and model code. A runner never sees HTTP,
JSON or an encoded file: media arrive decoded (pixels as uint8 arrays, audio as float32 PCM)
and leave decoded; the server decodes uploads and encodes responses (JPEG/PNG, WAV/MP3/OGG).

| family       | request                | run() returns      | stream() yields, then ends with        |
|--------------|------------------------|--------------------|----------------------------------------|
| `llm`        | `LLMRequest`           | `Completion`       | `TokenChunk` ..., `Completion`         |
| `image`      | `ImageRequest`         | `ImageResult`      | -                                      |
| `embedding`  | `EmbeddingRequest`     | `EmbeddingResult`  | -                                      |
| `cnn`        | `ClassifyRequest`      | `Classification`   | -                                      |
| `audio`      | `TranscriptionRequest` | `Transcription`    | `Segment` ..., `Transcription`         |
| `tts`        | `SpeechRequest`        | `Speech`           | -                                      |
| `video`      | `VideoRequest`         | `VideoResult`      | `Progress` ..., `VideoResult`          |
| `training`   | `TrainingRequest`      | `TrainingResult`   | `TrainingEvent`/`Progress` ..., `TrainingResult` |

A stream's last item is the family's result type; every item before it is a chunk. A runner
with no `stream()` can still report progress from `run()` with `Runner.progress()`.

Arrays are numpy arrays (imported lazily: the server starts without numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    import numpy as np

# --- llm ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class LLMRequest:
    """One prompt to complete. `prompt` is the text after the chat template; `prompt_token_ids`
    is the same prompt tokenized by the model's own tokenizer (the runner's `load_tokenizer`)."""

    prompt: str
    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float | None = None  # None: the model's default (greedy for 0)
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TokenChunk:
    """One decode step of a stream: the new text and the token ids it came from."""

    text: str
    token_ids: list[int]


@dataclass(slots=True)
class Completion:
    """The whole completion (run) or the end of a stream (its `text` may then be empty)."""

    text: str
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class Tokenizer(Protocol):
    """The model's tokenizer and chat template, as the server uses them for prompts, `usage`,
    context checks and /v1/tokenize. Loaded in the server process by `Runner.load_tokenizer`."""

    vocab_size: int
    max_model_length: int | None  # the context length, if the tokenizer knows it

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def token_strings(self, token_ids: list[int]) -> list[str]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], *, continue_final_message: bool) -> str:
        """The prompt for a conversation: with the assistant's turn opened, or, with
        `continue_final_message`, the last (assistant) message left open to be continued."""
        ...


# --- image ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ImageRequest:
    """`task` "generate" is text-to-image; "image-to-image" starts from `image` (height×width×3
    uint8, already at the output size) and runs `strength`·steps denoising steps; "edit" also
    has `mask` (height×width uint8, 255 = repaint)."""

    prompt: str
    negative_prompt: str | None = None
    num_inference_steps: int = 20
    guidance_scale: float | None = None
    seed: int = 0
    width: int = 1024
    height: int = 1024
    task: Literal["generate", "image-to-image", "edit"] = "generate"
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    strength: float = 1.0
    #: How the server encodes the result (runners ignore these two).
    output_format: str = "JPEG"
    output_quality: int = 85


@dataclass(slots=True)
class ImageResult:
    pixels: np.ndarray  # height×width×3 uint8


@dataclass(slots=True)
class EncodedImage:
    """What the server makes of an ImageResult (in the worker process, so megabytes of pixels
    never cross to the HTTP process)."""

    data: bytes
    format: str


# --- embedding ------------------------------------------------------------------------------------


@dataclass(slots=True)
class EmbeddingRequest:
    inputs: list[str]
    dimensions: int | None = None  # None: the model's full size; else the first d, renormalised


@dataclass(slots=True)
class EmbeddingResult:
    embeddings: np.ndarray  # len(inputs)×dimensions float32, unit norm


# --- cnn ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClassifyRequest:
    pixels: np.ndarray  # 224×224×3 uint8, centre-cropped by the server
    top_k: int = 3


@dataclass(slots=True)
class Classification:
    indices: list[int]
    labels: list[str]
    probabilities: list[float]  # 0..1, best first


# --- audio: speech to text -------------------------------------------------------------------------

SAMPLE_RATE = 16_000


@dataclass(slots=True)
class TranscriptionRequest:
    """`samples`: mono float32 PCM at 16 kHz in -1..1. `temperatures` is the fallback schedule
    (Whisper retries a window at the next temperature when its thresholds fail)."""

    samples: np.ndarray
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None  # None: detect it
    prompt: str | None = None  # text of a previous window, for style and spelling
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    word_timestamps: bool = False


@dataclass(slots=True)
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(slots=True)
class Transcription:
    text: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment]
    task: str = "transcribe"


# --- tts: text to speech ---------------------------------------------------------------------------


@dataclass(slots=True)
class SpeechRequest:
    text: str
    voice: str | None = None  # a voice name the runner knows, or "embedding:<hash>"; None: default
    speed: float = 1.0  # 0.25..4, 1 = the voice's natural rate


@dataclass(slots=True)
class Speech:
    samples: np.ndarray  # mono float32 in -1..1
    sample_rate: int


# --- video ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class VideoRequest:
    """The runner writes the MP4 to `output_path` itself (atomically: temp file, then rename),
    so megabytes of frames never cross to the server. `images[i]` conditions the frame at
    `frame_positions[i]` (0..80 in upstream's numbering); height×width×3 uint8."""

    prompt: str
    output_path: str
    negative_prompt: str | None = None
    num_inference_steps: int = 20
    seed: int = 0
    num_frames: int = 81
    width: int = 832
    height: int = 480
    fps: int = 16
    images: list[np.ndarray] = field(default_factory=list)
    frame_positions: list[int] = field(default_factory=list)
    #: What the client asked for; width/height/num_frames/fps above already honour them (a
    #: runner with a native resolution may still read them).
    aspect_ratio: str | None = None  # "16:9", "9:16", ...
    duration_seconds: float | None = None


@dataclass(slots=True)
class VideoResult:
    frames: int
    width: int
    height: int
    fps: int
    bytes: int


# --- training -------------------------------------------------------------------------------------


@dataclass(slots=True)
class TrainingRequest:
    """A LoRA fine-tune. Checkpoints go to `checkpoint_dir` (each written atomically); a re-run
    after a restart starts at `resume_step`, the step of its last checkpoint."""

    job_id: str
    checkpoint_dir: str
    dataset_loader: str = "SST2"
    train_dataset_path: str | None = None
    val_dataset_path: str | None = None
    file_type: str | None = None
    template: str | None = None
    column_mapping: dict[str, str] | None = None
    dataset_max_sequence_length: int = 64  # longer examples are truncated to this many tokens
    num_epochs: int = 1
    max_steps: int = 0  # 0: no cap
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    lora_r: int = 4
    lora_alpha: int = 8
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_task_type: str = "CAUSAL_LM"
    dtype: str | None = None
    steps_freq: int = 10
    val_steps_freq: int = 0
    save_interval: int = 0
    resume_step: int = 0


@dataclass(slots=True)
class TrainingEvent:
    """`kind` "log" (message), "metric" (metric_name, value, learning_rate, epoch) or
    "checkpoint" (id: the file `<id>.zip` in checkpoint_dir, epoch, metrics)."""

    kind: Literal["log", "metric", "checkpoint"]
    step: int
    message: str = ""
    metric_name: str = ""
    value: float = 0.0
    learning_rate: float | None = None
    epoch: int = 0
    id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    level: str = "info"


@dataclass(slots=True)
class TrainingResult:
    step: int
    loss: float


# --- shared ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """How far a long call is (0..100), with optional details such as the current step."""

    percent: float
    step: int | None = None
    total: int | None = None
    message: str = ""


Request: TypeAlias = (LLMRequest | ImageRequest | EmbeddingRequest | ClassifyRequest | TranscriptionRequest
                      | SpeechRequest | VideoRequest | TrainingRequest)
Result: TypeAlias = (Completion | ImageResult | EncodedImage | EmbeddingResult | Classification | Transcription
                     | Speech | VideoResult | TrainingResult)
Chunk: TypeAlias = TokenChunk | Segment | Progress | TrainingEvent

# --- the families ---------------------------------------------------------------------------------

#: A model family's one name: the spec's `x-ttmedia-family`, FAMILY_ROUTES (runners/catalog.py),
#: ModelInfo.family, a runner's `family` and the handlers all spell it with these
#: (tests/test_families.py holds the spec to them). Spec tags and runner modules name what
#: clients and authors see ("speech" routes, sim/tts.py); the family is the one internal word.
LLM, IMAGE, EMBEDDING, CNN = "llm", "image", "embedding", "cnn"
AUDIO, TTS, VIDEO, TRAINING = "audio", "tts", "video", "training"

#: Family → (request type, result type). The result type also marks the end of a stream.
FAMILIES: dict[str, tuple[type, type]] = {
    LLM: (LLMRequest, Completion),
    IMAGE: (ImageRequest, ImageResult),
    EMBEDDING: (EmbeddingRequest, EmbeddingResult),
    CNN: (ClassifyRequest, Classification),
    AUDIO: (TranscriptionRequest, Transcription),
    TTS: (SpeechRequest, Speech),
    VIDEO: (VideoRequest, VideoResult),
    TRAINING: (TrainingRequest, TrainingResult),
}

FINAL_TYPES: tuple[type, ...] = tuple(result for _, result in FAMILIES.values())


def from_fields(cls: type[Any], values: dict[str, Any], **overrides: Any) -> Any:
    """A request of type `cls` from a dict that may hold more (a stored job's parameters):
    unknown keys and None values are left out, so the type's defaults apply."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in {**values, **overrides}.items() if k in names and v is not None})
