"""A deterministic tokenizer for simulated language models.

Pieces are words with their leading space, punctuation marks and runs of white space. A piece
found in the vocabulary is one token; anything else falls back to one token per UTF-8 byte
(ids 0–255), so every string round-trips exactly through encode/decode.
"""

from __future__ import annotations

import re
from functools import lru_cache

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their can has more will would if no "
    "what so about when them some could into than its only other time new these two may first "
    "then do any like my now over such our man me even most made after also did many before "
    "must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three device tensix core tile mesh "
    "chip model token image video audio speech frame queue worker batch kernel memory stream "
    "light water river mountain city night morning garden ocean forest stone window road "
    "quiet bright slow warm cold green blue red golden silver soft deep small large ancient"
).split()
PUNCTUATION = list(".,;:!?'\"-()")

BYTE_TOKENS = 256
_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+|\s+|[^\sA-Za-z0-9]")


@lru_cache(maxsize=1)
def vocabulary() -> tuple[dict[str, int], list[str]]:
    pieces: list[str] = []
    for w in WORDS:
        pieces += [w, " " + w, w.capitalize(), " " + w.capitalize()]
    pieces += PUNCTUATION + [" ", "\n", "\n\n"]
    ids = {p: BYTE_TOKENS + i for i, p in enumerate(pieces)}
    return ids, pieces


def vocab_size() -> int:
    return BYTE_TOKENS + len(vocabulary()[1])


def encode(text: str) -> list[int]:
    ids, _ = vocabulary()
    whole = ids.get(text)
    if whole is not None:  # one vocabulary piece (a streamed token): the split below gives it alone
        return [whole]
    out: list[int] = []
    for piece in _PIECE.findall(text):
        token = ids.get(piece)
        if token is not None:
            out.append(token)
        else:
            out.extend(piece.encode("utf-8"))
    return out


def decode(tokens: list[int]) -> str:
    """Inverse of encode. Byte tokens are collected and decoded together (multi-byte UTF-8)."""
    _, pieces = vocabulary()
    parts: list[str] = []
    pending = bytearray()
    for t in tokens:
        if not 0 <= t < vocab_size():
            raise ValueError(f"token id {t} is outside the vocabulary (0..{vocab_size() - 1})")
        if t < BYTE_TOKENS:
            pending.append(t)
            continue
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
        parts.append(pieces[t - BYTE_TOKENS])
    if pending:
        parts.append(pending.decode("utf-8", errors="replace"))
    return "".join(parts)


def token_strings(tokens: list[int]) -> list[str]:
    _, pieces = vocabulary()
    return [pieces[t - BYTE_TOKENS] if t >= BYTE_TOKENS else f"<0x{t:02X}>" for t in tokens]


class SimTokenizer:
    """The simulated models' tokenizer and a plain chat template (ttmedia.runners.types.Tokenizer)."""

    def __init__(self, max_model_length: int | None = None) -> None:
        self.vocab_size = vocab_size()
        self.max_model_length = max_model_length

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return decode(token_ids)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return token_strings(token_ids)

    def apply_chat_template(self, messages: list[dict[str, object]], *, continue_final_message: bool) -> str:
        """One block per message, then the assistant's turn opened, or the last (assistant)
        message left open to be continued."""
        parts = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text") or "") for p in content
                                  if isinstance(p, dict) and p.get("type") == "text")
            parts.append(f"<|{m['role']}|>\n{content or ''}\n")
        if continue_final_message and messages:
            return "".join(parts)[:-1]  # without the closing newline: the message goes on
        return "".join(parts) + "<|assistant|>\n"
