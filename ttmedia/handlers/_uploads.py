"""Reading media out of requests: multipart uploads or base64 JSON fields, with 413/415/422.

Decoding runs off the event loop on a pool of MEDIA_DECODERS threads: Pillow and ffmpeg block,
and a decoded image or clip can take a hundred times the memory of its upload, so at most that
many are in memory at once, however many arrive. Every media failure becomes the client's
problem it is (422 undecodable, 413 too long, 415 unknown audio format), never a 500.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pybase64
from starlette.datastructures import UploadFile

from ttmedia.web import problems
from ttmedia.web.large_json import join_bytes
from ttmedia.media.priority import background_threads
from ttmedia.media.errors import EncoderUnavailable, MediaError, MediaTooLong, UnsupportedMediaFormat

if TYPE_CHECKING:
    import numpy as np  # numpy is imported where it is used: importing it costs 60 ms of server start-up.

#: Media decodes in memory at once.
MEDIA_DECODERS = 2
_decoders = background_threads(MEDIA_DECODERS, "media-decode")  # below the loop: ttmedia.media.priority
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")

T = TypeVar("T")


async def _off_loop(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_decoders, functools.partial(work, *args, **kwargs))


def _said(exc: BaseException) -> str:
    """An error's text for a client: no Python object reprs (addresses) in it."""
    return _OBJECT_REPR.sub("the data", str(exc))


async def upload_bytes(body: dict[str, Any], file: UploadFile | None, field: str, limit: int) -> bytes:
    """The file of a multipart upload, or the base64 JSON field `field`; 413 over `limit` bytes."""
    if file is not None:
        if file.size is not None and file.size > limit:
            raise _too_large(field, file.size, limit)
        data = await file.read()
    else:
        text = body.get(field)
        if not isinstance(text, str) or not text:
            raise problems.InvalidRequest(f"'{field}' is required: a multipart file or a base64 string.")
        if len(text) * 3 // 4 > limit + 3:  # checked before decoding, so a huge body costs nothing
            raise _too_large(field, len(text) * 3 // 4, limit)
        data = await b64decode_in_pieces(text, field)
    if len(data) > limit:
        raise _too_large(field, len(data), limit)
    return data


def _too_large(field: str, size: int, limit: int) -> problems.PayloadTooLarge:
    return problems.PayloadTooLarge(f"'{field}' is {size} bytes; the limit is {limit} bytes.")


#: Base64 characters decoded per step. A 13 MB image edit decoded in one call held the GIL (and
#: with it the event loop, even from a thread) for ~110 ms; in pieces, the loop runs between them.
#: (pybase64 then cut the decoding itself from 32 to 1.7 ms; the text's preparation is the rest.)
BASE64_PIECE_CHARS = 256 * 1024
_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def _not_base64(field: str) -> problems.InvalidRequest:
    return problems.InvalidRequest(f"'{field}' is not valid base64.")


def _standard_base64(raw: bytes) -> bytes:
    """ASCII base64 without line breaks or spaces, in the standard alphabet (URL-safe mapped)."""
    raw = b"".join(raw.split())
    if b"-" in raw or b"_" in raw:
        raw = raw.translate(_URL_SAFE)  # bytes methods: C speed, unlike str.translate
    return raw


def _ascii_base64(text: str, field: str) -> bytes:
    try:
        return _standard_base64(text.encode("ascii"))
    except UnicodeEncodeError:
        raise _not_base64(field) from None


def _decode_quanta(payload: bytes, field: str) -> bytes:
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        # pybase64 refuses excess padding ("QQ===") that binascii's strict mode takes; it never
        # takes what binascii refuses (600,000 fuzzed inputs), so binascii gives the verdict.
        pass
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _not_base64(field) from None


def _padded(payload: bytes) -> bytes:
    return payload + b"=" * (-len(payload) % 4)


def b64decode(text: str, field: str) -> bytes:
    """Plain, URL-safe, line-wrapped or unpadded base64; 422 if it is none of them."""
    return _decode_quanta(_padded(_ascii_base64(text, field)), field)


async def b64decode_in_pieces(text: str, field: str) -> bytes:
    """b64decode, a piece at a time with the event loop running between pieces."""
    if len(text) <= BASE64_PIECE_CHARS:
        return b64decode(text, field)
    plain = await _plain_base64_in_pieces(text)
    if plain is not None:
        return plain
    decoded: list[bytes] = []
    carry = b""
    for start in range(0, len(text), BASE64_PIECE_CHARS):
        end = start + BASE64_PIECE_CHARS
        payload = carry + _ascii_base64(text[start:end], field)
        if b"=" in payload and end < len(text):
            # Padding ends the text: decode the rest with it, in the one call's terms.
            payload += _ascii_base64(text[end:], field)
            end = len(text)
        if end >= len(text):
            decoded.append(_decode_quanta(_padded(payload), field))
            break
        # Whole quanta, and the last one held back: what ends the text is decoded with it.
        keep = max(len(payload) - len(payload) % 4 - 4, 0)
        decoded.append(_decode_quanta(payload[:keep], field))
        carry = payload[keep:]
        await asyncio.sleep(0)
    return await join_bytes(decoded, sum(map(len, decoded)))


async def _plain_base64_in_pieces(text: str) -> bytes | None:
    """Decoded text, if it is what clients send nearly always: the standard alphabet, no
    whitespace, padded or not. None for anything else (the caller's general path decides).

    Every piece but the last is whole quanta of alphabet characters, so decoding pieces one by
    one gives what one call over the text gives; pybase64 takes ASCII text as it is, without
    the copies the general path makes to strip whitespace and map the URL-safe alphabet."""
    decoded: list[bytes] = []
    for start in range(0, len(text), BASE64_PIECE_CHARS):
        piece = text[start:start + BASE64_PIECE_CHARS]
        last = start + BASE64_PIECE_CHARS >= len(text)
        if not last and "=" in piece:  # padding ends the text; one call's verdict is the contract
            return None
        try:
            decoded.append(pybase64.b64decode(piece + "=" * (-len(piece) % 4) if last else piece,
                                              validate=True))
        except (binascii.Error, ValueError):
            return None
        await asyncio.sleep(0)
    return await join_bytes(decoded, sum(map(len, decoded)))


async def image_bytes(value: str, field: str) -> bytes:
    """An image field's bytes: base64, a `data:` URI, or an http(s) URL (fetched only from the
    hosts MEDIA_URL_ALLOWED_DOMAINS lists; ttmedia.web.media_urls). 422 for text that is none of these."""
    from ttmedia.web import media_urls
    from ttmedia.web.runtime import current

    if media_urls.is_media_url(value):
        return await media_urls.fetch(current().settings, value, field)
    payload = value.split(",", 1)[1] if value[:5].lower() == "data:" and "," in value else value
    return await b64decode_in_pieces(payload, field)


async def decode_image(data: bytes, field: str, size: int | None = None, mode: str = "RGB",
                       min_side: int | None = None) -> np.ndarray:
    """Image bytes → uint8 pixels (resized to size×size if given); 422 if undecodable.

    With `size` (or `min_side`, when the caller resizes itself) a large image is reduced while
    it is decoded, so it never sits in memory at full size more than once."""
    def work() -> np.ndarray:
        import numpy as np
        from PIL import Image

        from ttmedia.media import images

        needed = size or min_side
        img = images.decode_image(data, min_side=needed)
        if img.mode != mode:
            img = img.convert(mode)
        if size:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)

    try:
        return await _off_loop(work)
    except MediaError as exc:
        raise problems.InvalidRequest(f"'{field}' is not a usable image: {_said(exc)}") from None


async def decode_audio(data: bytes, field: str = "file") -> np.ndarray:
    """Audio bytes → mono float32 at 16 kHz. 415 for an unknown format, 413 beyond
    MAX_AUDIO_SECONDS (from the header, before decoding), 422 if it will not decode."""
    from ttmedia.media import audio
    from ttmedia.web.runtime import current

    fmt = audio.sniff_audio_format(data)
    if fmt is None:
        raise problems.UnsupportedMediaType(
            f"'{field}' is not audio in a supported format (WAV, MP3, OGG, FLAC, WebM, M4A)."
        )
    limit = current().settings.max_audio_seconds
    try:
        samples, _rate = await _off_loop(audio.decode_audio, data, limit_seconds=limit)
    except MediaTooLong as exc:
        raise problems.PayloadTooLarge(f"'{field}': {exc} (MAX_AUDIO_SECONDS).") from None
    except EncoderUnavailable as exc:
        raise problems.Internal(f"audio decoding is unavailable on this server: {_said(exc)}") from None
    except UnsupportedMediaFormat as exc:
        raise problems.UnsupportedMediaType(f"'{field}': {_said(exc)}") from None
    except MediaError as exc:
        raise problems.InvalidRequest(f"'{field}' could not be decoded as {fmt}: {_said(exc)}") from None
    return samples
