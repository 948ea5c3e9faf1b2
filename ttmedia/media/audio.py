"""Audio encode/decode (WAV natively, everything else via the bundled ffmpeg) and fake speech.

Also home of the small ffmpeg helpers that :mod:`ttmedia.media.video` reuses.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import subprocess
import tempfile
import wave
from collections.abc import Sequence

import numpy as np

from ttmedia.media.errors import (
    EncoderUnavailable,
    MediaError,
    MediaTooLong,
    UndecodableMedia,
    UnsupportedMediaFormat,
)

__all__ = [
    "decode_audio",
    "duration_seconds",
    "encode_audio",
    "encode_wav",
    "ffmpeg_encoders",
    "ffmpeg_exe",
    "run_ffmpeg",
    "sniff_audio_format",
    "stderr_summary",
    "synthesize_speech",
]

DEFAULT_SAMPLE_RATE = 16_000
FFMPEG_TIMEOUT = 120.0
#: Frames of a WAV converted and resampled at a time: working memory stays a few MB whatever
#: the file's rate or length (a 1 Hz WAV resampled to 16 kHz in one piece once took 1.3 GB).
WAV_CHUNK_FRAMES = 1 << 18

_FFMPEG_CONTEXT = re.compile(r"^(?:\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")
_DECODING = "audio decoding"
_CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
# Encoders in order of preference. MP3 is constant-bitrate on purpose: written to
# a pipe it gets no Xing/VBR header, and players misjudge a VBR file's length without one.
_ENCODER_CHOICES = {
    "mp3": (("libmp3lame", ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")),),
    "ogg": (
        ("libvorbis", ("-c:a", "libvorbis", "-q:a", "4", "-f", "ogg")),
        ("libopus", ("-c:a", "libopus", "-b:a", "48k", "-f", "ogg")),
    ),
}

# --------------------------------------------------------------------------- ffmpeg plumbing


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled binary (there is deliberately no system fallback)."""
    try:
        import imageio_ffmpeg  # noqa: PLC0415 - only needed once ffmpeg is actually used
    except ImportError as exc:
        raise EncoderUnavailable("imageio-ffmpeg is not installed") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise EncoderUnavailable(f"bundled ffmpeg not found: {exc}") from exc


@functools.lru_cache(maxsize=1)
def ffmpeg_encoders() -> frozenset[str]:
    """Names of the encoders compiled into the bundled ffmpeg."""
    listing = run_ffmpeg(["-encoders"], loglevel="quiet").decode("utf-8", "replace")
    names: set[str] = set()
    in_table = False
    for line in listing.splitlines():
        if line.strip().startswith("---"):
            in_table = True  # lines above the dashes are the flag legend
            continue
        parts = line.split()
        if in_table and len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


def run_ffmpeg(
    args: Sequence[str],
    stdin: bytes | None = None,
    *,
    error: type[MediaError] = EncoderUnavailable,
    timeout: float = FFMPEG_TIMEOUT,
    loglevel: str = "error",
    what: str = "ffmpeg",
) -> bytes:
    """Run ffmpeg with ``args`` and return its stdout; failures raise ``error``."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", loglevel, *args]
    try:
        # An empty input still gives ffmpeg a closed pipe, never our terminal/stdin.
        proc = subprocess.run(
            cmd, input=stdin or b"", capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise EncoderUnavailable(f"cannot run ffmpeg: {exc}") from exc
    if proc.returncode != 0:
        raise error(f"{what} failed: {stderr_summary(proc.stderr)}")
    return proc.stdout


def stderr_summary(stderr: bytes, lines: int = 3) -> str:
    """First and last distinct stderr lines, minus ffmpeg's ``[ctx @ 0x...]`` noise.

    ffmpeg logs the root cause first and a cascade of consequences after it.
    """
    seen: list[str] = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        line = _FFMPEG_CONTEXT.sub("", line).strip()
        if line and line not in seen:
            seen.append(line)
    if len(seen) > lines:
        seen = [seen[0], "...", *seen[len(seen) - lines + 1 :]]
    return " | ".join(seen) or "no diagnostic output"


# --------------------------------------------------------------------------- encoding


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Float samples in [-1, 1] (clipped) -> 16-bit PCM mono WAV bytes."""
    mono = _as_mono(samples)
    pcm = np.round(np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """Encode to ``wav``/``mp3``/``ogg``; returns ``(bytes, content_type)``.

    Never substitutes another format: a missing encoder raises EncoderUnavailable.
    """
    fmt = fmt.lower()
    if fmt not in _CONTENT_TYPES:
        raise UnsupportedMediaFormat(f"unsupported audio format {fmt!r}; use wav, mp3 or ogg")
    wav = encode_wav(samples, sample_rate)
    if fmt == "wav":
        return wav, _CONTENT_TYPES[fmt]
    codec_args = _codec_args(fmt)
    # bitexact: no random Ogg serials or version tags, so equal input gives equal bytes.
    bitexact = ("-fflags", "+bitexact", "-flags:a", "+bitexact")
    args = ["-f", "wav", "-i", "pipe:0", *bitexact, *codec_args, "pipe:1"]
    encoded = run_ffmpeg(args, wav, what=f"{fmt} encoding")
    if not encoded:
        raise EncoderUnavailable(f"ffmpeg produced no {fmt} output")
    return encoded, _CONTENT_TYPES[fmt]


def _codec_args(fmt: str) -> tuple[str, ...]:
    available = ffmpeg_encoders()
    for encoder, args in _ENCODER_CHOICES[fmt]:
        if encoder in available:
            return args
    wanted = " or ".join(encoder for encoder, _ in _ENCODER_CHOICES[fmt])
    raise EncoderUnavailable(f"the bundled ffmpeg has no {wanted} encoder for {fmt}")


# --------------------------------------------------------------------------- decoding


def decode_audio(
    data: bytes,
    *,
    target_rate: int = DEFAULT_SAMPLE_RATE,
    max_seconds: float | None = None,
    limit_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode any supported audio to mono float32 at ``target_rate``.

    ``max_seconds`` keeps only the start; ``limit_seconds`` refuses longer audio
    (MediaTooLong): from a WAV header before anything is decoded, otherwise by
    stopping ffmpeg just past the limit, so memory stays bounded either way.
    """
    if not data:
        raise UndecodableMedia("empty audio data")
    fmt = sniff_audio_format(data)
    samples = _decode_wav(data, target_rate, max_seconds, limit_seconds) if fmt == "wav" else None
    if samples is None:
        samples = _decode_with_ffmpeg(data, fmt, target_rate, max_seconds, limit_seconds)
    if samples.size == 0:
        raise UndecodableMedia("audio contains no samples")
    return samples, target_rate


def _decode_wav(
    data: bytes, target_rate: int, max_seconds: float | None, limit_seconds: float | None
) -> np.ndarray | None:
    """PCM WAV via the stdlib, in chunks; None means "let ffmpeg try" (float/extensible WAV, ...)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as src:
            channels, width, rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
            if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
                return None
            # The header's frame count, but never more than the bytes could hold.
            frames = min(src.getnframes(), len(data) // (width * channels))
            if limit_seconds is not None and frames / rate > limit_seconds:
                raise MediaTooLong(frames / rate, limit_seconds)
            if max_seconds is not None:
                frames = max(0, min(frames, int(max_seconds * rate)))
            resampler = _Resampler(rate, target_rate, frames)
            left = frames
            while left > 0:
                raw = src.readframes(min(left, WAV_CHUNK_FRAMES))
                usable = len(raw) - len(raw) % (width * channels)  # a truncated last frame is dropped
                if usable == 0:
                    break
                left -= usable // (width * channels)
                pcm = _pcm_to_float(raw[:usable], width)
                resampler.feed(pcm.reshape(-1, channels).mean(axis=1, dtype=np.float32))
    except (wave.Error, EOFError, RuntimeError):
        # RuntimeError: the stdlib's chunk reader on a RIFF header with a junk chunk size.
        return None
    return resampler.finish()


class _Resampler:
    """Linear interpolation from src_rate to dst_rate, fed in pieces; the same output as one
    np.interp over the whole signal, with working memory of one piece."""

    def __init__(self, src_rate: int, dst_rate: int, frames: int) -> None:
        self.same = src_rate == dst_rate
        self.step = src_rate / dst_rate
        self.out = np.empty(max(1, round(frames * dst_rate / src_rate)) if frames else 0, np.float32)
        self.done = 0  # output samples written
        self.fed = 0  # input samples seen
        self.tail = np.empty(0, np.float32)  # the last input sample, for the next piece
        self.base = 0  # input index of tail[0]

    def feed(self, samples: np.ndarray) -> None:
        if self.same:
            end = min(self.done + samples.size, self.out.size)
            self.out[self.done:end] = samples[: end - self.done]
            self.done, self.fed = end, self.fed + samples.size
            return
        piece = np.concatenate([self.tail, samples]) if self.tail.size else samples
        self.fed += samples.size
        # Output k sits at input position k*step; it needs the samples on both sides of it.
        last = self.base + piece.size - 1
        end = min(self.out.size, math.ceil(last / self.step))
        xp = np.arange(piece.size)
        while self.done < end:  # in blocks: upsampling makes many outputs of one input piece
            stop = min(end, self.done + WAV_CHUNK_FRAMES)
            positions = np.arange(self.done, stop, dtype=np.float64) * self.step - self.base
            self.out[self.done:stop] = np.interp(positions, xp, piece)
            self.done = stop
        self.tail, self.base = piece[-1:], last

    def finish(self) -> np.ndarray:
        if self.fed == 0:
            return np.empty(0, np.float32)
        count = self.fed if self.same else max(1, round(self.fed / self.step))
        count = min(count, self.out.size)
        if self.done < count:  # past the last input sample np.interp holds its value
            self.out[self.done:count] = self.tail[-1] if self.tail.size else 0.0
        return self.out[:count]


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values -= (values & 0x800000) << 1  # sign-extend 24 -> 32 bits
        return values.astype(np.float32) / float(1 << 23)
    dtype = "<i2" if width == 2 else "<i4"
    return np.frombuffer(raw, dtype).astype(np.float32) / float(1 << (8 * width - 1))


def _decode_with_ffmpeg(
    data: bytes, fmt: str | None, rate: int, max_seconds: float | None, limit_seconds: float | None
) -> np.ndarray:
    stop = max_seconds
    if limit_seconds is not None and (stop is None or stop > limit_seconds):
        stop = limit_seconds + 0.5  # decoding stops here: past it, the audio is too long
    limit = ["-t", f"{stop:.3f}"] if stop is not None else []
    output = [*limit, "-vn", "-sn", "-dn", "-f", "f32le", "-ac", "1", "-ar", str(rate), "pipe:1"]
    if fmt == "m4a":
        # MP4 keeps its index (moov) wherever the writer put it, often at the end,
        # which ffmpeg can only reach on a seekable input.
        with tempfile.TemporaryDirectory(prefix="ttmedia-") as tmp:
            path = os.path.join(tmp, "input.m4a")
            with open(path, "wb") as fh:
                fh.write(data)
            raw = run_ffmpeg(["-i", path, *output], error=UndecodableMedia, what=_DECODING)
    else:
        raw = run_ffmpeg(["-i", "pipe:0", *output], data, error=UndecodableMedia, what=_DECODING)
    usable = len(raw) - len(raw) % 4
    samples = np.frombuffer(raw, "<f4", count=usable // 4)
    if limit_seconds is not None and samples.size > (limit_seconds + 0.1) * rate:
        raise MediaTooLong(None, limit_seconds)
    return samples


def sniff_audio_format(data: bytes) -> str | None:
    """Container/codec name from magic bytes: wav, mp3, ogg, flac, webm, m4a, or None."""
    head = bytes(data[:12])
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM and Matroska share it
        return "webm"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3" or _is_mpeg_audio_frame(head):
        return "mp3"
    return None


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """Frame-sync plus the header fields that are never legal (rules out ADTS AAC too)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


# --------------------------------------------------------------------------- synthesis

_CHAR_SECONDS = 0.065
_WORD_GAP_SECONDS = 0.07
_PAUSES = {".": 0.35, "!": 0.35, "?": 0.35, ";": 0.25, ":": 0.25, ",": 0.18}
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[.!?;:,]")
# Rough (F1, F2) of English vowels; consonants get a letter-derived frequency.
_VOWEL_FORMANTS = {
    "a": (730, 1090), "e": (530, 1840), "i": (270, 2290),
    "o": (570, 840), "u": (300, 870), "y": (270, 2290),
}  # fmt: skip
_FRICATIVES = frozenset("sfhzxcj")


def synthesize_speech(
    text: str, sample_rate: int = DEFAULT_SAMPLE_RATE, speaker: str | None = None, seed: int = 0
) -> np.ndarray:
    """Deterministic speech-like float32 audio in [-0.9, 0.9], ~70 ms per character."""
    material = f"{seed}\x1f{speaker or ''}\x1f{text}".encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(material).digest()[:8], "little"))
    base_f0 = _speaker_f0(speaker)
    pieces: list[np.ndarray] = []
    for token in _TOKEN.findall(text):
        if token in _PAUSES:
            pieces.append(np.zeros(int(_PAUSES[token] * sample_rate), np.float32))
            continue
        f0 = base_f0 * rng.uniform(0.92, 1.08)  # words differ slightly in pitch
        pieces.append(_word_sound(token.lower(), sample_rate, f0, rng))
        pieces.append(np.zeros(int(_WORD_GAP_SECONDS * sample_rate), np.float32))
    if not pieces:  # nothing pronounceable: a short silence beats an empty clip downstream
        return np.zeros(int(0.25 * sample_rate), np.float32)
    audio = np.concatenate(pieces)
    peak = float(np.max(np.abs(audio))) or 1.0
    return np.clip(audio * (0.8 / peak), -0.9, 0.9).astype(np.float32)


def duration_seconds(samples: np.ndarray, sample_rate: int) -> float:
    """Length of a mono clip in seconds."""
    return float(len(samples)) / float(sample_rate)


def _speaker_f0(speaker: str | None) -> float:
    if speaker is None:
        return 150.0
    return 100.0 + hashlib.sha256(speaker.encode()).digest()[0] / 255.0 * 120.0


def _word_sound(word: str, rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    count = max(1, int(len(word) * _CHAR_SECONDS * rate))
    progress = np.arange(count, dtype=np.float32) / count
    # Declining pitch within a word is the cheapest cue that makes it sound spoken.
    pitch = f0 * (1.06 - 0.12 * progress)
    phase = np.cumsum(pitch * np.float32(2.0 * np.pi / rate), dtype=np.float32)
    voiced = 0.6 * np.sin(phase)
    for rank, freq in enumerate(_word_formants(word)):
        harmonic = max(2, round(freq / f0))
        voiced += np.float32(0.35 / (rank + 1)) * np.sin(harmonic * phase)
    syllables = max(1, sum(ch in _VOWEL_FORMANTS for ch in word))
    envelope = 0.55 + 0.45 * np.abs(np.sin(np.pi * syllables * progress))
    envelope *= _fade(count, int(0.015 * rate), int(0.03 * rate))
    sound = voiced * envelope
    if word[0] in _FRICATIVES:
        _add_hiss(sound, int(0.04 * rate), rng)
    return sound.astype(np.float32)


def _word_formants(word: str) -> list[float]:
    vowels = [ch for ch in word if ch in _VOWEL_FORMANTS]
    if vowels:
        first, second = _VOWEL_FORMANTS[vowels[0]]
        freqs: list[float] = [first, second]
        if len(vowels) > 1:
            freqs.append(_VOWEL_FORMANTS[vowels[-1]][1] * 1.1)
        return freqs
    return [300.0 + (ord(ch) * 97) % 2400 for ch in word[:3]]


def _fade(count: int, attack: int, release: int) -> np.ndarray:
    envelope = np.ones(count, np.float32)
    attack, release = min(attack, count // 2), min(release, count // 2)
    if attack:
        envelope[:attack] = np.linspace(0.0, 1.0, attack, dtype=np.float32)
    if release:
        envelope[count - release :] = np.linspace(1.0, 0.0, release, dtype=np.float32)
    return envelope


def _add_hiss(sound: np.ndarray, length: int, rng: np.random.Generator) -> None:
    length = min(length, sound.size)
    # Differenced noise is crudely high-passed, closer to an "s" than white noise.
    noise = np.diff(rng.standard_normal(length + 1)).astype(np.float32)
    sound[:length] += 0.12 * noise * np.linspace(1.0, 0.0, length, dtype=np.float32)


def _as_mono(samples: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(np.asarray(samples, dtype=np.float32))
    if arr.ndim == 2:  # (frames, channels)
        arr = arr.mean(axis=1)
    return arr.reshape(-1)
