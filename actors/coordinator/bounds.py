"""Bounding what a run keeps: a stored result never exceeds ``result_max_bytes``.

A result carries every turn's intent (the messages sent to the agent, the query among them) and receipt,
so a large query is repeated once per turn: a 190 KB query gave a 384 KB result. :func:`bound_result`
keeps a result as it is when its JSON encoding fits, and otherwise trims text, longest kinds first, until it
does: first the intents' message contents (rebuildable from the query and the replies), then the receipts'
contents, then the answer. Each trimmed text keeps its head and ends with a marker naming how much was cut
and the sha256 of the whole text, so a trimmed result says what it no longer holds.

Example:
    >>> r = bound_result(result, 65_536)                    # doctest: +SKIP
    >>> len(msgspec.json.encode(r)) <= 65_536               # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib

import msgspec

from schemas.common import Message
from schemas.coordination import CoordinationResult, TurnRecord

#: Smallest share of a text kept when trimming (below this the marker alone is what is stored).
_MIN_KEEP = 64


def encoded_size(value: msgspec.Struct) -> int:
    """Bytes of ``value``'s JSON encoding (what the results stream and the dedupe cache hold)."""
    return len(msgspec.json.encode(value))


def trim_text(text: str, keep: int) -> str:
    """``text`` when it has at most ``keep`` characters; else its head and a marker with what was cut."""
    if len(text) <= keep:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:keep]}…[trimmed {len(text) - keep} of {len(text)} chars; sha256 {digest}]"


def _trim_intents(turns: list[TurnRecord], keep: int) -> list[TurnRecord]:
    out = []
    for t in turns:
        if t.intent is not None:
            msgs = [Message(role=m.role, content=trim_text(m.content, keep)) for m in t.intent.messages]
            t = msgspec.structs.replace(t, intent=msgspec.structs.replace(t.intent, messages=msgs))
        out.append(t)
    return out


def _trim_receipts(turns: list[TurnRecord], keep: int) -> list[TurnRecord]:
    out = []
    for t in turns:
        if t.receipt is not None:
            t = msgspec.structs.replace(t, receipt=msgspec.structs.replace(t.receipt,
                                                                           content=trim_text(t.receipt.content, keep)))
        out.append(t)
    return out


def bound_result(result: CoordinationResult, max_bytes: int) -> CoordinationResult:
    """``result`` trimmed (see the module docstring) so its JSON encoding is at most ``max_bytes``.

    ``max_bytes`` below a few KB cannot always be met (ids, decisions and budgets are never trimmed): the
    smallest trim is returned then."""
    if encoded_size(result) <= max_bytes:
        return result
    keep = max(_MIN_KEEP, max_bytes // 8)
    current = result
    while True:
        turns = _trim_intents(result.turns, keep)
        current = msgspec.structs.replace(result, turns=turns)
        if encoded_size(current) <= max_bytes:
            return current
        current = msgspec.structs.replace(current, turns=_trim_receipts(turns, keep))
        if encoded_size(current) <= max_bytes:
            return current
        if result.answer is not None:
            current = msgspec.structs.replace(current, answer=trim_text(result.answer, keep))
            if encoded_size(current) <= max_bytes:
                return current
        if keep <= _MIN_KEEP:
            return current
        keep = max(_MIN_KEEP, keep // 2)
