"""Media helpers: image, audio and video encode/decode plus procedural synthesis.

Submodules (``images``, ``audio``, ``video``) pull in numpy, Pillow and the
bundled ffmpeg, so they are imported explicitly by callers rather than here;
importing :mod:`ttmedia.media` itself stays cheap.
"""

from __future__ import annotations

from ttmedia.media.errors import (
    EncoderUnavailable,
    MediaError,
    UndecodableMedia,
    UnsupportedMediaFormat,
)

__all__ = ["EncoderUnavailable", "MediaError", "UndecodableMedia", "UnsupportedMediaFormat"]
