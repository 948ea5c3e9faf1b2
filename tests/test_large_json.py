"""Large JSON bodies are parsed in pieces (ttmedia.web.large_json): the same value orjson gives,
the same refusals, and the event loop runs while they are parsed."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from ttmedia.handlers import _uploads
from ttmedia.web import large_json
from ttmedia.web.problems import InvalidRequest, MalformedBody
from ttmedia.web.validation import parse_json_body

PAD = b" " * large_json.LARGE_BODY_BYTES  # makes any body "large"
LONG = large_json.LONG_STRING_BYTES + 10


def _parse(raw: bytes):
    return asyncio.run(parse_json_body(raw))


@pytest.mark.parametrize("raw", [
    b'{"a": "' + b"x" * LONG + b'", "b": [1, "' + b"y" * LONG + b'"], "c": {"d": "short"}}',
    b'["' + b"\\u00e9" * LONG + b'", "' + "é€😀".encode() * LONG + b'"]',  # escapes stay; multibyte UTF-8 split across pieces
    b'{"' + b"k" * LONG + b'": "' + b"v" * LONG + b'"}',  # a long key is never cut
    b'{"' + b"k" * LONG + b'"' + b" " * 100 + b': 1, "' + b"k" * LONG + b'"' + b" " * 100 + b': 2, "z": 3}',
    b'"' + b"z" * (3 * large_json.PIECE_BYTES + 7) + b'"',  # a document that is one string
    b'{"a": "' + b"x" * LONG + b'\\"' + b"q" * LONG + b'", "c": "\\\\", "e": "\\\\\\""}',  # escaped quotes
    b'{"n": 123456789012345678901234, "s": "' + b"1" * LONG + b'"}',  # a big integer stays exact
])
def test_large_bodies_parse_to_what_the_stdlib_parses(raw: bytes) -> None:
    for body in (raw + PAD, PAD + raw):
        assert _parse(body) == json.loads(body)


@pytest.mark.parametrize("raw, says", [
    (b'{"a": "' + b"x" * LONG + b'\x01"}', "control character"),
    (b'{"a": "' + b"x" * LONG + b'\xff"}', "not valid UTF-8"),
    (b'{"a": x"' + b"x" * LONG + b'"}', "line 1 column 7"),  # positions in the body as sent
    (b'{"a": "' + b"x" * LONG + b'" "b": 1}', f"column {LONG + 10}"),
    (b'{"a": "' + b"x" * LONG, "unexpected end of data"),
])
def test_large_bodies_are_refused_as_small_ones_are(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedBody) as refused:
        _parse(raw + PAD)
    assert says in str(refused.value)


def test_a_mark_a_client_could_send_is_not_taken_for_a_cut_string() -> None:
    lookalike = "\u0000ttmedia-cut:" + "0" * 32 + ":0"
    raw = json.dumps({"fake": lookalike, "real": "x" * LONG}).encode() + PAD
    assert _parse(raw) == {"fake": lookalike, "real": "x" * LONG}


def _ticks_while(work) -> int:
    """How many times another task ran while `work()` was awaited."""
    async def main() -> int:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        await work()
        done = True
        await task
        return ticks
    return asyncio.run(main())


def test_the_loop_runs_while_a_large_body_is_parsed_and_its_base64_decoded() -> None:
    image = os.urandom(3 << 20)
    text = base64.b64encode(image).decode()
    raw = json.dumps({"prompt": "repaint it", "image": text}).encode()
    pieces = len(text) // large_json.PIECE_BYTES
    assert _ticks_while(lambda: parse_json_body(raw)) >= pieces
    assert _ticks_while(lambda: _uploads.b64decode_in_pieces(text, "image")) >= len(text) // _uploads.BASE64_PIECE_CHARS
    assert asyncio.run(_uploads.b64decode_in_pieces(text, "image")) == image


def _one_call_verdict(text: str) -> bytes | None:
    """The bytes b64decode gives in one call, or None where it answers 422."""
    try:
        return _uploads.b64decode(text, "image")
    except InvalidRequest:
        return None


def _in_pieces_verdict(text: str) -> bytes | None:
    """The bytes b64decode_in_pieces gives, or None where it answers 422."""
    try:
        return asyncio.run(_uploads.b64decode_in_pieces(text, "image"))
    except InvalidRequest:
        return None


@pytest.mark.parametrize("text", [
    "QUJD" * 100_000 + "QQ==",  # padded
    "QUJD" * 100_000 + "QQ",  # unpadded
    "QUJD" * 100_000 + "QQ==" + "=" * 8,  # excess padding, accepted by the one call too
    ("QUJD" * 20 + "\n") * 6_000,  # line-wrapped
    base64.urlsafe_b64encode(os.urandom(400_000)).decode(),  # URL-safe
    "QUJD" * 100_000 + "Q===",  # invalid
    "QUJD" * 50_000 + "QQ==" + "QUJD" * 50_000,  # padding before the end: invalid
    "QUJD" * 100_000 + "é",  # not ASCII
    "QUJD" * (_uploads.BASE64_PIECE_CHARS // 4 - 1) + "QQ==" + "QUJD" * 1_000,  # padding ends a piece: invalid
    "QUJD" * 100_000 + " QQ==",  # a space near the end
])
def test_base64_in_pieces_has_the_one_calls_verdict(text: str) -> None:
    assert len(text) > _uploads.BASE64_PIECE_CHARS
    assert _in_pieces_verdict(text) == _one_call_verdict(text)


def test_base64_pieces_agree_with_one_call_on_fuzzed_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """With pieces of 8 characters every boundary case comes up: padding, whitespace, URL-safe
    characters or junk on either side of a cut. Fast path or general, the verdict is one call's."""
    import random

    rng = random.Random(13)
    monkeypatch.setattr(_uploads, "BASE64_PIECE_CHARS", 8)
    junk = ["=", "==", " ", "\n", "-", "_", "!", "é", "Q", "QQ"]
    for _ in range(4_000):
        text = base64.b64encode(rng.randbytes(rng.randrange(7, 40))).decode()
        if rng.random() < 0.5:
            text = text.rstrip("=")
        for _ in range(rng.choice((0, 0, 1, 2))):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(junk) + text[at:]
        if len(text) <= 8:
            continue
        assert _in_pieces_verdict(text) == _one_call_verdict(text), text


def test_a_large_join_is_copied_on_a_thread_and_a_small_one_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[object] = []
    real_to_thread = asyncio.to_thread

    async def recording(function: object, *args: object) -> object:
        threads.append(function)
        return await real_to_thread(function, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(large_json.asyncio, "to_thread", recording)
    big = [bytes([i]) * (2 << 20) for i in range(3)]  # 6 MB
    small = [b"a", b"b", b"c"]
    assert asyncio.run(large_json.join_bytes(big, 6 << 20)) == b"".join(big)
    assert asyncio.run(large_json.join_bytes(small, 3)) == b"abc"
    one = b"x" * 100
    assert asyncio.run(large_json.join_bytes([one], 100)) is one
    assert len(threads) == 1  # only the large one
