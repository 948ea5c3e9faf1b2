"""Parsing a large JSON body without holding the event loop.

A base64 image edit is one long string in a small object: 13.7 MB of it took orjson ~30 ms and
the checks after it ~50 ms, each a single C call that holds the GIL, so every token stream on
the server waited that long (bench scenario 8). A body over LARGE_BODY_BYTES is taken apart
first: long strings without escapes are cut out (finding quotes is a memchr), the small rest is
parsed and checked as any body is, and each long string is checked (strict UTF-8, no control
characters, the two things JSON asks of a string without escapes) and decoded in pieces, with
the loop running between pieces. The value is the one orjson would have returned.

What stays one call: a large body made of many small values (a skeleton that is itself large).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import typing as t

import orjson

#: Bodies at least this large are parsed in pieces.
LARGE_BODY_BYTES = 1 << 20
#: Strings at least this long (in bytes) are cut out of the body and decoded in pieces.
LONG_STRING_BYTES = 64 << 10
#: Bytes of a long string checked and decoded per step.
PIECE_BYTES = 256 << 10
#: Longest stretch of work between two yields to the loop.
YIELD_AFTER_S = 0.002
#: Joins of this many bytes or more run in a thread: bytes.join lets go of the GIL while it
#: copies (above 1 MB), so the loop serves the token streams meanwhile. A 13.7 MB body's join
#: is ~1.4 ms of memcpy on this machine, and it used to share one loop step with the parse.
JOIN_IN_THREAD_BYTES = 4 << 20

_QUOTE, _BACKSLASH = b'"', 0x5C
_CONTROL = bytes(range(0x20))  # JSON strings carry these only escaped
#: Stands in for a cut string in the skeleton. The nonce is this process's own, so no string a
#: client sends can be taken for one.
_MARK = "\u0000ttmedia-cut:" + secrets.token_hex(16) + ":"
_MARK_JSON = ('"\\u0000' + _MARK[1:]).encode()


class BadString(ValueError):
    """A long string that is not valid in JSON (its bytes, not its place)."""


async def join_bytes(parts: list[bytes], size: int) -> bytes:
    """b"".join(parts), whose total is `size` bytes; a large one copied off the event loop."""
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    if size < JOIN_IN_THREAD_BYTES:
        return b"".join(parts)
    return await asyncio.to_thread(b"".join, parts)


async def loads(raw: bytes, parse: t.Callable[[bytes], t.Any]) -> t.Any:
    """`parse(raw)`, with raw's long strings parsed in pieces (BadString for one that is invalid).

    `parse` turns JSON bytes into a value and raises for bytes that are not JSON; when the
    skeleton is refused, `parse(raw)` runs so that its error describes the body as sent."""
    skeleton, spans = await _cut_long_strings(raw)
    if not spans:
        return parse(raw)
    await asyncio.sleep(0)  # the scans above read the whole body
    try:
        value = parse(skeleton)
    except Exception:
        parse(raw)  # the same verdict, with positions in the body the client sent
        raise
    texts = [await _decode(raw, start, end) for start, end in spans]
    return _put_back(value, texts)


def _key_follows(raw: bytes, end: int) -> bool:
    """Whether the string that closes at `end` is an object key (a `:` comes next). Keys are
    left in place; one with a long run of spaces before its colon is cut and put back too."""
    return raw[end + 1:end + 64].lstrip()[:1] == b":"


async def _cut_long_strings(raw: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The body with each long, escape-free string value replaced by a mark; their spans."""
    find = raw.find
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    kept_from = pos = 0
    paused = time.perf_counter()
    strings = 0
    while True:
        start = find(_QUOTE, pos)  # outside a string, a quote can only open one
        if start < 0:
            break
        end = find(_QUOTE, start + 1)
        while end > 0:
            slashes = 0
            while raw[end - 1 - slashes] == _BACKSLASH:
                slashes += 1
            if slashes % 2 == 0:
                break
            end = find(_QUOTE, end + 1)
        if end < 0:
            break  # unterminated: left for the parser to refuse
        if (end - start - 1 >= LONG_STRING_BYTES and find(b"\\", start + 1, end) < 0
                and not _key_follows(raw, end)):
            parts.append(raw[kept_from:start])
            parts.append(_MARK_JSON + str(len(spans)).encode() + _QUOTE)
            spans.append((start + 1, end))
            kept_from = end + 1
        pos = end + 1
        strings += 1
        if strings % 512 == 0 and time.perf_counter() - paused > YIELD_AFTER_S:
            await asyncio.sleep(0)
            paused = time.perf_counter()
    if not spans:
        return raw, spans
    parts.append(raw[kept_from:])
    return b"".join(parts), spans


async def _decode(raw: bytes, start: int, end: int) -> str:
    """raw[start:end] as text, checked as JSON checks a string without escapes, in pieces.

    Each piece is parsed as a JSON string by orjson (a vectorised check of both rules, ~5x
    faster than a `bytes.translate` for control characters and a UTF-8 decode). Pieces are
    cut where a character starts, so the whole is valid exactly when every piece is: a
    character never spans two pieces, and a broken one breaks the piece that holds it."""
    pieces: list[str] = []
    at = start
    while at < end:
        cut = min(at + PIECE_BYTES, end)
        for _ in range(3):  # a UTF-8 character has at most three continuation bytes
            if cut < end and 0x80 <= raw[cut] < 0xC0:
                cut -= 1
        piece = raw[at:cut]
        try:
            pieces.append(orjson.loads(_QUOTE + piece + _QUOTE))
        except orjson.JSONDecodeError:
            raise _why_bad(piece) from None
        at = cut
        await asyncio.sleep(0)
    # A str cannot be made without the GIL: the join (a copy of the whole string) gets a loop
    # step of its own, and whatever comes next starts in the next one.
    text = "".join(pieces)
    await asyncio.sleep(0)
    return text


def _why_bad(piece: bytes) -> BadString:
    """What is wrong with a piece orjson refused, in the words a client can act on."""
    if len(piece.translate(None, _CONTROL)) != len(piece):
        return BadString("a string holds an unescaped control character (U+0000 to U+001F)")
    return BadString("a string is not valid UTF-8")


def _put_back(value: t.Any, texts: list[str]) -> t.Any:
    """The skeleton's value with each mark replaced by its string."""
    def real(item: t.Any) -> t.Any:
        if isinstance(item, str) and item.startswith(_MARK):
            return texts[int(item[len(_MARK):])]
        return item

    if isinstance(value, str):
        return real(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(key.startswith(_MARK) for key in node):  # a long key _key_follows did not see
                items = list(node.items())
                node.clear()
                for key, item in items:
                    node[real(key)] = item
            for key, item in node.items():
                if isinstance(item, (dict, list)):
                    stack.append(item)
                elif isinstance(item, str):
                    node[key] = real(item)
        else:
            for index, item in enumerate(node):
                if isinstance(item, (dict, list)):
                    stack.append(item)
                elif isinstance(item, str):
                    node[index] = real(item)
    return value
