"""H.264/MP4 encoding through the bundled ffmpeg, procedural frames, and a probe for tests."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np

from ttmedia.media.audio import FFMPEG_TIMEOUT, ffmpeg_encoders, ffmpeg_exe, stderr_summary
from ttmedia.media.priority import nice_at_least
from ttmedia.media.errors import EncoderUnavailable, UndecodableMedia
from ttmedia.media.images import render_picture

__all__ = ["decode_frames", "encode_mp4", "probe_mp4", "synthesize_frames", "thumbnail_webp", "spritesheet_jpeg",
           "write_mp4"]

# libx264 first; libopenh264 still yields H.264, whereas mpeg4 would be a
# silent format change for clients that asked for H.264 and is not offered.
_H264_ENCODERS = (
    ("libx264", ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23")),
    ("libopenh264", ("-c:v", "libopenh264", "-b:v", "4M")),
)
_STDERR_KEEP = 16_384
_NOMINAL_FPS = 16.0
_VIDEO_STEPS = 50  # enough "refinement" that frames carry no noise (which would flicker)
_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+).*?, (?P<w>\d+)x(?P<h>\d+)")
_FPS = re.compile(r"(?P<fps>\d+(?:\.\d+)?) fps")
_DURATION = re.compile(r"Duration: (?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)")


def encode_mp4(frames: Iterable[np.ndarray], width: int, height: int, fps: int = 16) -> bytes:
    """Encode ``HxWx3`` uint8 RGB frames as H.264 MP4 and return the file's bytes.

    Odd sizes are padded up to even (yuv420p needs it), so the video may be 1px larger.
    """
    # The mp4 muxer seeks back to write its index, so it cannot stream to a pipe.
    with tempfile.TemporaryDirectory(prefix="ttmedia-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        _encode_to_file(frames, width, height, fps, path)
        with open(path, "rb") as fh:
            return fh.read()


def write_mp4(
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    path: str | os.PathLike[str],
    fps: int = 16,
) -> int:
    """Like :func:`encode_mp4` but atomically writes ``path``; returns the size in bytes."""
    target = os.path.abspath(os.fspath(path))
    fd, partial = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".part", dir=os.path.dirname(target)
    )
    os.close(fd)
    try:
        _encode_to_file(frames, width, height, fps, partial)
        # mkstemp makes the file 0600; a finished video is meant to be served/read by others.
        os.chmod(partial, 0o644)
        size = os.path.getsize(partial)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return size


def synthesize_frames(
    prompt: str, seed: int, num_frames: int, width: int, height: int, fps: float = _NOMINAL_FPS
) -> Iterator[np.ndarray]:
    """Deterministic animation: the :func:`synthesize_image` picture with drifting blobs, moving
    at the same speed whatever the frame rate."""
    for index in range(int(num_frames)):
        picture = render_picture(prompt, seed, width, height, _VIDEO_STEPS, t=index / fps)
        yield np.array(picture)


def probe_mp4(path_or_bytes: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """Decode the first video stream fully; report exact ``frames`` plus size/codec/fps."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        with tempfile.TemporaryDirectory(prefix="ttmedia-") as tmp:
            path = os.path.join(tmp, "probe.mp4")
            with open(path, "wb") as fh:
                fh.write(path_or_bytes)
            return _probe_file(path)
    return _probe_file(os.fspath(path_or_bytes))


def _probe_file(path: str) -> dict[str, Any]:
    # Counting decoded frames (rather than trusting the container's frame count)
    # is the point: it catches truncated or mis-muxed output.
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "info", "-progress", "pipe:1",
           "-i", path, "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=FFMPEG_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise UndecodableMedia(f"video probe failed: {exc}") from exc
    info = proc.stderr.decode("utf-8", "replace")
    stream = _STREAM.search(info)
    if proc.returncode != 0 or stream is None:
        raise UndecodableMedia(f"not a decodable video: {stderr_summary(proc.stderr)}")
    frames = re.findall(r"^frame=(\d+)$", proc.stdout.decode("ascii", "replace"), re.MULTILINE)
    fps, duration = _FPS.search(info[stream.start() :]), _DURATION.search(info)
    return {
        "frames": int(frames[-1]) if frames else 0,
        "width": int(stream["w"]),
        "height": int(stream["h"]),
        "codec": stream["codec"],
        "fps": float(fps["fps"]) if fps else None,
        "duration": _seconds(duration) if duration else None,
    }


def decode_frames(data: bytes, width: int, height: int) -> list[np.ndarray]:
    """Every frame of an MP4 (``width`` × ``height`` as encoded) as ``HxWx3`` uint8 RGB."""
    with tempfile.TemporaryDirectory(prefix="ttmedia-") as tmp:
        path = os.path.join(tmp, "in.mp4")
        with open(path, "wb") as fh:
            fh.write(data)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-i", path,
               "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "pipe:1"]  # fmt: skip
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=FFMPEG_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise UndecodableMedia(f"video decoding failed: {exc}") from exc
    size = width * height * 3
    if proc.returncode != 0 or len(proc.stdout) < size:
        raise UndecodableMedia(f"not a decodable video: {stderr_summary(proc.stderr)}")
    count = len(proc.stdout) // size
    return [np.frombuffer(proc.stdout, np.uint8, size, i * size).reshape(height, width, 3) for i in range(count)]


def thumbnail_webp(frames: list[np.ndarray]) -> bytes:
    """The middle frame as WebP (OpenAI's `thumbnail` variant)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buffer, "WEBP", quality=85)
    return buffer.getvalue()


def spritesheet_jpeg(frames: list[np.ndarray], count: int = 10, columns: int = 5, tile_width: int = 128) -> bytes:
    """`count` frames taken evenly through the clip, scaled to `tile_width`, in a JPEG grid."""
    from PIL import Image

    picks = [frames[round(i * (len(frames) - 1) / max(count - 1, 1))] for i in range(min(count, len(frames)))]
    height, width = picks[0].shape[:2]
    tile = (tile_width, max(1, round(height * tile_width / width)))
    rows = -(-len(picks) // columns)
    sheet = Image.new("RGB", (tile[0] * min(columns, len(picks)), tile[1] * rows))
    for i, frame in enumerate(picks):
        sheet.paste(Image.fromarray(frame).resize(tile, Image.Resampling.BILINEAR),
                    ((i % columns) * tile[0], (i // columns) * tile[1]))
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _seconds(match: re.Match[str]) -> float:
    return int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


def _encode_to_file(
    frames: Iterable[np.ndarray], width: int, height: int, fps: int, path: str
) -> None:
    width, height, fps = int(width), int(height), int(fps)
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"invalid video geometry {width}x{height} @ {fps} fps")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("cannot encode a video with no frames")
    encoder_args = _h264_args()
    # yuv420p (what players expect) needs even dimensions, hence the pad filter;
    # faststart moves the index to the front so browsers can play while downloading.
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
           "-i", "pipe:0", "-an", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", *encoder_args,
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", path]  # fmt: skip
    _pipe_frames(cmd, _chain(first, iterator), (height, width, 3))


#: Niceness of video encodes. They finish jobs that clients poll for; on a busy host they
#: should not take the CPU from the requests that wait on every millisecond (token streams).
#: On an idle host the encode runs as fast as before.
VIDEO_ENCODE_NICENESS = 10


def _pipe_frames(cmd: list[str], frames: Iterable[np.ndarray], shape: tuple[int, int, int]) -> None:
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise EncoderUnavailable(f"cannot run ffmpeg: {exc}") from exc
    nice_at_least(proc.pid, VIDEO_ENCODE_NICENESS)  # before the first frame: the encode runs at it
    stderr = bytearray()
    # Drain stderr concurrently: a chatty ffmpeg blocked on a full stderr pipe
    # would stop reading stdin and deadlock our writes.
    drainer = threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True)
    drainer.start()
    try:
        broken = _write_frames(proc, frames, shape)  # ValueError on a bad frame propagates
        proc.wait(timeout=FFMPEG_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise EncoderUnavailable(f"video encoding timed out after {FFMPEG_TIMEOUT:g}s") from exc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drainer.join()
    if proc.returncode != 0 or broken:
        raise EncoderUnavailable(f"video encoding failed: {stderr_summary(bytes(stderr))}")


def _write_frames(
    proc: subprocess.Popen[bytes], frames: Iterable[np.ndarray], shape: tuple[int, int, int]
) -> bool:
    """Feed frames to ffmpeg's stdin; True if ffmpeg went away early."""
    assert proc.stdin is not None
    try:
        # Closing stdin is ffmpeg's end-of-input; the close itself can hit EPIPE too.
        with proc.stdin:
            for index, frame in enumerate(frames):
                pixels = np.asarray(frame)
                if pixels.shape != shape or pixels.dtype != np.uint8:
                    raise ValueError(
                        f"frame {index} is {pixels.shape} {pixels.dtype}, expected {shape} uint8"
                    )
                proc.stdin.write(np.ascontiguousarray(pixels).data)
    except BrokenPipeError:
        return True
    return False


def _drain(stream: IO[bytes], sink: bytearray) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        sink.extend(chunk)
        del sink[:-_STDERR_KEEP]  # only the tail is ever reported
    stream.close()


def _h264_args() -> tuple[str, ...]:
    available = ffmpeg_encoders()
    for encoder, args in _H264_ENCODERS:
        if encoder in available:
            return args
    raise EncoderUnavailable("ffmpeg has no H.264 encoder (libx264/libopenh264)")


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
