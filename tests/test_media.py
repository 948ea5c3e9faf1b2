"""Tests for ttmedia.media: real encoders/decoders, no mocks."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ttmedia.media import audio as audio_module
from ttmedia.media import video as video_module
from ttmedia.media.audio import (
    decode_audio,
    duration_seconds,
    encode_audio,
    encode_wav,
    sniff_audio_format,
    synthesize_speech,
)
from ttmedia.media.errors import (
    EncoderUnavailable,
    MediaError,
    UndecodableMedia,
    UnsupportedMediaFormat,
)
from ttmedia.media.images import (
    decode_image,
    encode_image,
    synthesize_image,
    transform_image,
)
from ttmedia.media.video import encode_mp4, probe_mp4, synthesize_frames, write_mp4

RATE = 16_000
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return synthesize_image("a lighthouse at dusk", seed=7, width=96, height=64, steps=30)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize_speech("Testing one two three. Hello there!", RATE, speaker="ada")


# --------------------------------------------------------------------------- package


def test_importing_package_stays_light() -> None:
    # Measured relative to the parent package, whose own imports are not ours to police.
    code = (
        "import sys, ttmedia; before = set(sys.modules); import ttmedia.media; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & {'numpy', 'PIL'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"


def test_errors_are_value_errors() -> None:
    assert issubclass(UndecodableMedia, MediaError)
    assert issubclass(MediaError, ValueError)


# --------------------------------------------------------------------------- images


def test_png_round_trip_is_pixel_exact(picture: np.ndarray) -> None:
    data = encode_image(picture, "png")
    assert data.startswith(b"\x89PNG")
    img = decode_image(data)
    assert (img.mode, img.size) == ("RGB", (96, 64))
    assert np.array_equal(np.asarray(img), picture)


def test_jpeg_round_trip_keeps_size_and_is_close(picture: np.ndarray) -> None:
    data = encode_image(picture, "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.format == "JPEG"
    img = decode_image(data)
    assert (img.mode, img.size) == ("RGB", (96, 64))
    error = np.abs(np.asarray(img, dtype=np.int16) - picture.astype(np.int16)).mean()
    assert error < 6


def test_encode_image_rejects_unknown_format(picture: np.ndarray) -> None:
    with pytest.raises(UnsupportedMediaFormat):
        encode_image(picture, "gif")


def test_synthesize_image_is_deterministic_and_seed_sensitive() -> None:
    first = synthesize_image("red fox", 1, 128, 96, 20)
    assert first.shape == (96, 128, 3) and first.dtype == np.uint8
    assert first.tobytes() == synthesize_image("red fox", 1, 128, 96, 20).tobytes()
    assert not np.array_equal(first, synthesize_image("red fox", 2, 128, 96, 20))
    assert not np.array_equal(first, synthesize_image("blue whale", 1, 128, 96, 20))


def test_more_steps_means_less_noise() -> None:
    def roughness(steps: int) -> float:
        pixels = synthesize_image("forest", 3, 128, 128, steps).astype(np.float32)
        return float(np.abs(np.diff(pixels, axis=1)).mean())

    assert roughness(2) > roughness(10) > roughness(40)


def test_corrupt_image_bytes_are_undecodable(picture: np.ndarray) -> None:
    truncated = encode_image(picture, "PNG")[:200]
    for junk in (b"", b"definitely not an image", truncated):
        with pytest.raises(UndecodableMedia):
            decode_image(junk)


def test_pixel_limit_is_enforced(picture: np.ndarray) -> None:
    with pytest.raises(UndecodableMedia, match="pixel limit"):
        decode_image(encode_image(picture, "PNG"), max_pixels=1000)


def test_transparent_png_is_composited_on_white() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, "PNG")
    assert np.all(np.asarray(decode_image(buf.getvalue())) == 255)


def test_base64_and_data_uri_image_fields(picture: np.ndarray) -> None:
    import asyncio

    from ttmedia.handlers._uploads import decode_image as decode_field, image_bytes
    from ttmedia.web.problems import InvalidRequest

    png = encode_image(picture, "PNG")
    encoded = base64.b64encode(png).decode()
    for text in (encoded, f"data:image/png;base64,{encoded}", encoded.rstrip("="),
                 encoded.replace("+", "-").replace("/", "_")):
        assert asyncio.run(image_bytes(text, "image")) == png
    assert np.array_equal(asyncio.run(decode_field(png, "image")), picture)
    with pytest.raises(InvalidRequest):
        asyncio.run(image_bytes("@@not base64@@", "image"))
    wav = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEfmt ").decode()
    with pytest.raises(InvalidRequest, match="not a usable image"):
        asyncio.run(decode_field(asyncio.run(image_bytes(f"data:audio/wav;base64,{wav}", "image")), "image"))


def test_transform_strength_zero_returns_input(picture: np.ndarray) -> None:
    out = transform_image(Image.fromarray(picture), "anything", 5, 0.0, 96, 64)
    assert np.abs(out.astype(np.int16) - picture).max() <= 1


def test_transform_strength_one_and_mask(picture: np.ndarray) -> None:
    source = Image.fromarray(picture)
    target = synthesize_image("snow", 5, 96, 64, 30)
    full = transform_image(source, "snow", 5, 1.0, 96, 64)
    assert np.abs(full.astype(np.int16) - target).max() <= 1
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (48, 0, 96, 64))  # repaint only the right half
    masked = transform_image(source, "snow", 5, 1.0, 96, 64, mask=mask)
    assert np.array_equal(masked[:, :40], picture[:, :40])
    assert np.abs(masked[:, 56:].astype(np.int16) - target[:, 56:]).max() <= 1


def test_transform_resizes_input(picture: np.ndarray) -> None:
    out = transform_image(Image.fromarray(picture), "x", 1, 0.5, 40, 30)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- audio


def test_speech_is_deterministic_bounded_and_plausibly_long(speech: np.ndarray) -> None:
    text = "Testing one two three. Hello there!"
    assert speech.dtype == np.float32
    assert np.array_equal(speech, synthesize_speech(text, RATE, speaker="ada"))
    assert float(np.abs(speech).max()) <= 0.9
    per_char = duration_seconds(speech, RATE) / len(text)
    assert 0.05 <= per_char <= 0.09
    other = synthesize_speech(text, RATE, speaker="bob")
    assert not np.array_equal(speech[: len(other)], other[: len(speech)])


def test_wav_round_trip(speech: np.ndarray) -> None:
    data = encode_wav(speech, RATE)
    with wave.open(io.BytesIO(data)) as src:
        assert (src.getnchannels(), src.getsampwidth(), src.getframerate()) == (1, 2, RATE)
        assert src.getnframes() == len(speech)
    samples, rate = decode_audio(data)
    assert rate == RATE and len(samples) == len(speech)
    assert np.abs(samples - speech).max() < 1e-3


def test_wav_stereo_24bit_resampled_to_mono() -> None:
    src_rate, seconds = 44_100, 0.5
    t = np.arange(int(src_rate * seconds)) / src_rate
    tone = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * (2**23 - 1)).astype("<i4")
    stereo = np.repeat(tone, 2)  # L == R, interleaved
    raw = stereo.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # little-endian low 3 bytes
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(3)
        out.setframerate(src_rate)
        out.writeframes(raw)
    samples, rate = decode_audio(buf.getvalue(), target_rate=RATE)
    assert rate == RATE
    assert abs(duration_seconds(samples, rate) - seconds) < 0.01
    assert 0.48 < float(np.abs(samples).max()) <= 0.5


@pytest.mark.parametrize(("fmt", "content_type"), [("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
def test_compressed_round_trip(speech: np.ndarray, fmt: str, content_type: str) -> None:
    data, ctype = encode_audio(speech, RATE, fmt)
    assert ctype == content_type
    assert sniff_audio_format(data) == fmt
    samples, rate = decode_audio(data)
    expected = duration_seconds(speech, RATE)
    assert abs(duration_seconds(samples, rate) - expected) <= 0.1 * expected
    assert float(np.abs(samples).max()) > 0.3  # actually audio, not silence


def test_max_seconds_truncates(speech: np.ndarray) -> None:
    for data in (encode_wav(speech, RATE), encode_audio(speech, RATE, "ogg")[0]):
        samples, rate = decode_audio(data, max_seconds=1.0)
        assert duration_seconds(samples, rate) == pytest.approx(1.0, abs=0.01)


def test_unknown_audio_format_is_rejected(speech: np.ndarray) -> None:
    with pytest.raises(UnsupportedMediaFormat):
        encode_audio(speech, RATE, "aiff")


def test_missing_encoder_raises_instead_of_falling_back(
    speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio_module, "ffmpeg_encoders", lambda: frozenset({"pcm_s16le"}))
    for fmt in ("mp3", "ogg"):
        with pytest.raises(EncoderUnavailable):
            encode_audio(speech, RATE, fmt)


def test_sniff_audio_format(speech: np.ndarray) -> None:
    assert sniff_audio_format(encode_wav(speech, RATE)) == "wav"
    assert sniff_audio_format(b"ID3\x04\x00" + bytes(20)) == "mp3"
    assert sniff_audio_format(b"\xff\xfb\x90\x64" + bytes(20)) == "mp3"
    assert sniff_audio_format(b"fLaC\x00\x00\x00\x22") == "flac"
    assert sniff_audio_format(b"OggS\x00\x02") == "ogg"
    assert sniff_audio_format(b"\x1a\x45\xdf\xa3\x01\x00") == "webm"
    assert sniff_audio_format(b"\x00\x00\x00\x20ftypM4A ") == "m4a"
    assert sniff_audio_format(b"\xff\xf1\x50\x80") is None  # ADTS AAC, not MP3
    assert sniff_audio_format(b"hello world") is None
    assert sniff_audio_format(b"") is None


def test_garbage_audio_is_undecodable() -> None:
    rng = np.random.default_rng(0)
    for junk in (b"", rng.bytes(4096), b"RIFF\x00\x00\x00\x00WAVEjunk"):
        with pytest.raises(UndecodableMedia):
            decode_audio(junk)


# --------------------------------------------------------------------------- video


def test_encode_mp4_frame_count_and_size() -> None:
    frames = list(synthesize_frames("waves", 4, 12, 64, 48))
    assert frames[0].shape == (48, 64, 3)
    assert not np.array_equal(frames[0], frames[-1])  # it actually moves
    data = encode_mp4(frames, 64, 48, fps=16)
    assert data[4:8] == b"ftyp"
    info = probe_mp4(data)
    assert (info["frames"], info["width"], info["height"]) == (12, 64, 48)
    assert info["codec"] == "h264"


def test_synthesize_frames_is_deterministic() -> None:
    first = list(synthesize_frames("waves", 4, 3, 32, 32))
    second = list(synthesize_frames("waves", 4, 3, 32, 32))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_write_mp4_is_atomic_and_pads_odd_sizes(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    size = write_mp4(synthesize_frames("dunes", 1, 5, 63, 47), 63, 47, target)
    assert target.stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no leftover temp file
    info = probe_mp4(target)
    assert (info["frames"], info["width"], info["height"]) == (5, 64, 48)


def test_encode_mp4_rejects_wrong_frame_shape(tmp_path: Path) -> None:
    bad = [np.zeros((48, 64, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        write_mp4(bad, 64, 48, tmp_path / "bad.mp4")
    assert list(tmp_path.iterdir()) == []


def test_failing_video_encoder_reports_ffmpeg_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = (("libx264", ("-c:v", "libx264", "-preset", "no-such-preset")),)
    monkeypatch.setattr(video_module, "_H264_ENCODERS", bogus)
    frames = (np.zeros((48, 64, 3), np.uint8) for _ in range(30))
    with pytest.raises(EncoderUnavailable, match="no-such-preset"):
        encode_mp4(frames, 64, 48)


def test_probe_rejects_garbage() -> None:
    with pytest.raises(UndecodableMedia):
        probe_mp4(b"\x00" * 64)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_video_encodes_run_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    """A job's encode must not take the CPU from token streams on a busy host."""
    import os

    seen: list[int] = []

    def encoders() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
                if "ffmpeg" in name and int(rest[1]) == os.getpid():  # rest[1]: the parent's pid
                    found.append(int(rest[16]))  # field 19: nice
        return found

    def frames():
        for index in range(4):
            if index == 2:
                seen.extend(encoders())
            yield np.full((32, 32, 3), index * 40, np.uint8)

    write_mp4(frames(), 32, 32, str(tmp_path / "out.mp4"))
    assert seen == [video_module.VIDEO_ENCODE_NICENESS] and os.nice(0) < video_module.VIDEO_ENCODE_NICENESS
    assert probe_mp4(str(tmp_path / "out.mp4"))["frames"] == 4
