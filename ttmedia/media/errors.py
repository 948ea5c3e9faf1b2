"""Exceptions raised by :mod:`ttmedia.media`.

They subclass :class:`ValueError` so callers that treat bad client input as a
``ValueError`` (e.g. to answer HTTP 400) keep working without knowing about us.
"""

from __future__ import annotations


class MediaError(ValueError):
    """Base class for every media encode/decode problem."""


class UndecodableMedia(MediaError):
    """The bytes are not a decodable image or audio stream."""


class UnsupportedMediaFormat(MediaError):
    """The requested or supplied format is one we deliberately do not handle."""


class EncoderUnavailable(MediaError):
    """The encoder needed for an output format is missing or failed."""


class MediaTooLong(MediaError):
    """Longer than the caller accepts; found out before (or while) decoding, never after."""

    def __init__(self, seconds: float | None, limit: float) -> None:
        length = f"{seconds:.1f} s long" if seconds is not None else "longer than that"
        super().__init__(f"the audio is {length}; the limit is {limit:g} s")
        self.seconds, self.limit = seconds, limit


__all__ = ["EncoderUnavailable", "MediaError", "MediaTooLong", "UndecodableMedia", "UnsupportedMediaFormat"]
