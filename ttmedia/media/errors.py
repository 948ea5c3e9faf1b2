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


__all__ = ["EncoderUnavailable", "MediaError", "UndecodableMedia", "UnsupportedMediaFormat"]
