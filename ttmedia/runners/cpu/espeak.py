"""Text to speech with eSpeak NG, through ctypes on the library inside PyPI's `espeakng-loader`.

`espeakng-loader` ships libespeak-ng and its whole `espeak-ng-data` directory, so no system
package is needed. The binding below is the handful of C calls we use: initialise in
synchronous mode (the synthesiser calls our callback with each block of 16-bit samples before
`espeak_Synth` returns), pick a voice, set the rate, synthesise.

eSpeak keeps one global state per process and is not thread-safe. The runner's methods are
synchronous, so the worker runs them on its one device thread; a module lock also guards the
library against any other caller in the same process (tests).

Voices (SpeechRequest.voice):

* an eSpeak voice by language code, file name or name — "en-us", "en-gb-x-rp", "de",
  "gmw/en-US", "English (America)" — optionally with a variant: "en-us+f3", "fr+m2";
* an OpenAI voice name (alloy, ash, ballad, cedar, coral, echo, fable, marin, nova, onyx,
  sage, shimmer, verse), each a fixed, distinct eSpeak voice and variant;
* an upstream numeric speaker id ("7306") or a speaker-embedding key ("embedding:<hex>", made
  by the server from an uploaded embedding): one of a fixed pool of English voices and
  variants, chosen by the number, so the same id always speaks with the same voice;
* None: the model's `voice` option (default "en-us").

Anything else is a 422 that lists some valid names. `speed` sets eSpeak's rate (175 words per
minute × speed); below eSpeak's slowest rate (80 wpm, speed 0.46) the speech is slowed further
by the Sonic time-stretcher built into the same library, so the pitch stays the voice's.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttmedia.runners.base import Runner, RunnerContext, RunnerRequestError
from ttmedia.runners.cpu._support import require_package
from ttmedia.runners.types import Speech, SpeechRequest

if TYPE_CHECKING:
    import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a bad data path as an error instead of exit()ing the process
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1  # espeakRATE, words per minute
_EE_OK = 0

NORMAL_RATE = 175  # eSpeak's default words per minute: speed 1.0
MIN_RATE = 80  # eSpeak clamps slower rates to this
MAX_RATE = 900  # above 450 eSpeak speeds up with Sonic; 4× (700) is the API's maximum

#: OpenAI's voice names → distinct eSpeak voices (accents) and variants (timbres).
OPENAI_VOICES: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb-x-rp+m2",
    "cedar": "en-us+m7",
    "coral": "en-us+f2",
    "echo": "en-gb+m4",
    "fable": "en-gb-x-rp",
    "marin": "en-gb+f3",
    "nova": "en-us+f3",
    "onyx": "en-us+m6",
    "sage": "en-gb-scotland+f1",
    "shimmer": "en-us+f4",
    "verse": "en-gb-scotland+m1",
}

#: Numeric speaker ids and speaker embeddings pick from these, by number (13 × 4 = 52 voices).
_POOL_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland")
_POOL_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
SPEAKER_POOL: tuple[str, ...] = tuple(f"{v}+{var}" for v in _POOL_VOICES for var in _POOL_VARIANTS)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)*, then a zero byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    identifier: str  # e.g. "gmw/en-US"; variants are "!v/<file>"
    languages: tuple[str, ...]


def _languages(pointer: int | None) -> tuple[str, ...]:
    out: list[str] = []
    if not pointer:
        return ()
    offset = 0
    while ctypes.string_at(pointer + offset, 1) != b"\x00":  # priority byte; 0 ends the list
        code = ctypes.string_at(pointer + offset + 1)
        out.append(code.decode("utf-8", "replace"))
        offset += 2 + len(code)
    return tuple(out)


class ESpeakLibrary:
    """The process's one eSpeak NG instance. Every call holds the lock."""

    def __init__(self, library_path: str, data_path: str) -> None:
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.sonicCreateStream.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.sonicCreateStream.restype = ctypes.c_void_p
        lib.sonicSetSpeed.argtypes = [ctypes.c_void_p, ctypes.c_float]
        lib.sonicWriteShortToStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_short), ctypes.c_int]
        lib.sonicFlushStream.argtypes = [ctypes.c_void_p]
        lib.sonicSamplesAvailable.argtypes = [ctypes.c_void_p]
        lib.sonicReadShortFromStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_short), ctypes.c_int]
        lib.sonicDestroyStream.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self.lock = threading.Lock()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG did not initialise with data at {data_path} (error {rate})")
        self.sample_rate = rate
        self._blocks: list[Any] = []
        self._on_block: Any = None  # (samples so far, text position) -> bool abort
        # Keep a reference: ctypes frees the trampoline with the Python object.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self.voices = self._list(None)
        self.variants = self._list(b"variant")

    def _list(self, language: bytes | None) -> list[VoiceInfo]:
        if language is None:
            array = self._lib.espeak_ListVoices(None)
        else:
            code = ctypes.create_string_buffer(language)  # referenced until the call returns
            spec = _Voice()
            spec.languages = ctypes.addressof(code)
            array = self._lib.espeak_ListVoices(ctypes.byref(spec))
        out = []
        i = 0
        while array[i]:
            v = array[i].contents
            out.append(VoiceInfo((v.name or b"").decode("utf-8", "replace"),
                                 (v.identifier or b"").decode("utf-8", "replace"), _languages(v.languages)))
            i += 1
        return out

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        import numpy as np

        if count > 0 and wav:
            self._blocks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        if self._on_block is not None:
            position = events[0].text_position if events else 0
            return 1 if self._on_block(position) else 0  # 1 aborts the synthesis
        return 0

    def synthesize(self, text: str, voice: str, rate: int, on_block: Any = None) -> np.ndarray:
        """int16 samples of `text`. `on_block(text_position)` returning True aborts."""
        import numpy as np

        data = text.replace("\x00", " ").encode("utf-8")
        with self.lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise RunnerRequestError(f"eSpeak NG has no voice {voice!r}")
            self._lib.espeak_SetParameter(_RATE, max(MIN_RATE, min(MAX_RATE, rate)), 0)
            self._blocks, self._on_block = [], on_block
            try:
                status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                self._lib.espeak_Synchronize()
            finally:
                blocks, self._blocks, self._on_block = self._blocks, [], None
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            samples = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
            if rate < MIN_RATE and len(samples):
                samples = self._stretch(samples, rate / MIN_RATE)
            return samples

    def _stretch(self, samples: np.ndarray, speed: float) -> np.ndarray:
        """Change the tempo by `speed` keeping the pitch (Sonic, inside libespeak-ng)."""
        import numpy as np

        lib = self._lib
        stream = lib.sonicCreateStream(self.sample_rate, 1)
        if not stream:
            raise MemoryError("sonicCreateStream failed")
        try:
            lib.sonicSetSpeed(stream, ctypes.c_float(speed))
            source = np.ascontiguousarray(samples, dtype=np.int16)
            lib.sonicWriteShortToStream(stream, source.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), len(source))
            lib.sonicFlushStream(stream)
            out = np.zeros(lib.sonicSamplesAvailable(stream), np.int16)
            got = lib.sonicReadShortFromStream(stream, out.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), len(out))
            return out[:got]
        finally:
            lib.sonicDestroyStream(stream)


_library: ESpeakLibrary | None = None
_library_lock = threading.Lock()


def library() -> ESpeakLibrary:
    """The process's eSpeak NG (initialised once: the C library has one global state)."""
    global _library
    with _library_lock:
        if _library is None:
            package = require_package("espeakng_loader", "espeakng-loader", "The espeak-ng model")
            so = next((p for p in (package / "libespeak-ng.so.1", package / "libespeak-ng.so",
                                   package / "libespeak-ng.dylib") if p.exists()), None)
            if so is None or not (package / "espeak-ng-data").is_dir():
                raise RuntimeError(f"espeakng-loader at {package} has no libespeak-ng or espeak-ng-data")
            _library = ESpeakLibrary(str(so), str(package / "espeak-ng-data"))
        return _library


class VoiceTable:
    """Resolves the names clients send to a name eSpeak's SetVoiceByName takes unambiguously."""

    def __init__(self, voices: list[VoiceInfo], variants: list[VoiceInfo]) -> None:
        self._voices: dict[str, str] = {}
        # Languages first, then names, then file names: a file name ("en-us") must win over a
        # language that several voices list ("en").
        for v in voices:
            for code in v.languages:
                self._voices.setdefault(code.lower(), v.identifier)
        for v in voices:
            self._voices[v.name.lower()] = v.identifier
        for v in voices:
            self._voices[v.identifier.lower()] = v.identifier
            self._voices[Path(v.identifier).name.lower()] = v.identifier
        self._variants: dict[str, str] = {}
        for v in variants:
            file = Path(v.identifier).name
            self._variants[v.name.lower()] = file
            self._variants[file.lower()] = file
        self.examples = sorted({Path(v.identifier).name.lower() for v in voices})

    def resolve(self, voice: str) -> str:
        key = voice.strip()
        lower = key.lower()
        if lower in OPENAI_VOICES:
            return self._espeak_name(OPENAI_VOICES[lower])
        number = self._speaker_number(key)
        if number is not None:
            return self._espeak_name(SPEAKER_POOL[number % len(SPEAKER_POOL)])
        return self._espeak_name(key)

    @staticmethod
    def _speaker_number(key: str) -> int | None:
        if key.isdigit():
            return int(key)
        if key.startswith("embedding:"):
            try:
                return int(key[len("embedding:"):], 16)
            except ValueError:
                return None
        return None

    def _espeak_name(self, key: str) -> str:
        base, plus, variant = key.partition("+")
        identifier = self._voices.get(base.strip().lower())
        if identifier is None:
            raise RunnerRequestError(self._unknown(key))
        if not plus:
            return identifier
        file = self._variants.get(variant.strip().lower())
        if file is None:
            common = [v for v in ("m1", "m2", "m3", "f1", "f2", "f3", "klatt", "whisper") if v in self._variants]
            raise RunnerRequestError(f"eSpeak NG has no voice variant {variant!r}; try {', '.join(common)} "
                                     f"(one of {len(set(self._variants.values()))} variants).")
        return f"{identifier}+{file}"

    def _unknown(self, key: str) -> str:
        common = [v for v in ("en-us", "en-gb", "en-gb-x-rp", "de", "fr", "es", "it", "pt", "hi", "cmn")
                  if v in self._voices]
        return (f"unknown voice {key!r}. Use an OpenAI voice ({', '.join(OPENAI_VOICES)}), an eSpeak NG voice "
                f"({', '.join(common)}, ... of {len(self.examples)}, optionally with a variant such as "
                f"'en-us+f3'), or a numeric speaker id.")


class ESpeakRunner(Runner):
    """eSpeak NG speech. Options: `voice` (default "en-us"), the voice when a request names none."""

    family = "tts"
    requires = ("espeakng_loader", "numpy")

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.default_voice = str(ctx.option("voice", "en-us"))
        self._lib: ESpeakLibrary | None = None
        self._table: VoiceTable | None = None

    def warmup(self) -> None:
        self._lib = library()
        self._table = VoiceTable(self._lib.voices, self._lib.variants)
        self._table.resolve(self.default_voice)  # a bad `voice` option fails the init, not every request
        self._speak(SpeechRequest("warm up"))

    def run(self, batch: list[SpeechRequest]) -> list[Speech]:
        return [self._speak(request) for request in batch]

    def canary(self) -> SpeechRequest:
        return SpeechRequest("ok")

    def voice_for(self, voice: str | None) -> str:
        assert self._table is not None, "warmup() first"
        return self._table.resolve(voice or self.default_voice)

    def _speak(self, request: SpeechRequest) -> Speech:
        import numpy as np

        assert self._lib is not None, "warmup() first"
        voice = self.voice_for(request.voice)
        if not 0.25 <= request.speed <= 4.0:
            raise RunnerRequestError(f"speed must be between 0.25 and 4.0, not {request.speed}")
        last_report = [time.monotonic()]
        length = max(1, len(request.text))

        def on_block(position: int) -> bool:
            # Each block is ~20 ms of audio: a long text reports progress (the worker's proof of
            # life for this call) and stops early when its client has gone.
            now = time.monotonic()
            if now - last_report[0] > 0.5:
                last_report[0] = now
                self.progress(min(100.0, 100.0 * position / length))
            return self.cancelled()

        pcm = self._lib.synthesize(request.text, voice, round(NORMAL_RATE * request.speed), on_block)
        samples = pcm.astype(np.float32) / np.float32(32768.0)
        return Speech(samples, self._lib.sample_rate)
