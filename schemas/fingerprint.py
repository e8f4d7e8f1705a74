"""Cross-port fingerprints shared with the known Elixir port, built on Erlang's external term format.

``route_hash`` fingerprints a routing decision; ``transcript_hash`` fingerprints a transcript;
``sha256_text`` is the content hash used in traces.

``route_hash``:

It is the lowercase hex sha256 of Erlang's ``term_to_binary([agent_id, role_id, logits])`` where
``logits`` is the 10 logits (7 agent, then 3 role), each rounded as Elixir's ``Float.round(x, 6)``
(ties away from zero, on the exact binary value). For a term this small the ``:compressed`` option
changes nothing, so the bytes are the plain external term format:
``131, LIST_EXT(3) [SMALL_INTEGER_EXT agent, SMALL_INTEGER_EXT role, LIST_EXT(10) [NEW_FLOAT_EXT ...] NIL] NIL``.

Example:
    >>> h = route_hash(4, 2, [15.854443, 9.122092, 4.819489, 0.056395, 30.22077, -23.630211,
    ...                       10.418853, -7.696819, -15.208102, 4.941882])
    >>> h[:8]
    'a6f10d75'
"""

from __future__ import annotations

import decimal
import hashlib
import struct
import zlib
from collections.abc import Sequence

from schemas.common import Message

_VERSION = 131
_COMPRESSED = 80
_MAP_EXT = 116
_BINARY_EXT = 109
_SMALL_ATOM_UTF8_EXT = 119
_ZLIB_LEVEL = 6
_SMALL_INTEGER_EXT = 97
_INTEGER_EXT = 98
_NEW_FLOAT_EXT = 70
_LIST_EXT = 108
_NIL_EXT = 106
_MICRO = decimal.Decimal("0.000001")
#: At and above 2**52 a double has no fractional bits: rounding to 6 decimals returns it unchanged (Elixir's
#: ``Float.round/2`` takes its "more precision asked than the float has" branch).
_INTEGRAL = 2.0**52
#: A private context: 2**52 has 16 digits, so 16 + 6 fit with room to spare, whatever the thread's
#: context says (the default 28 digits made values of 1e22 and more raise ``InvalidOperation``).
_ROUNDING = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_UP, Emin=-999_999, Emax=999_999,
                            traps=[decimal.InvalidOperation, decimal.Overflow])


def elixir_round6(x: float) -> float:
    """Round like Elixir's ``Float.round(x, 6)``: exact decimal value, ties away from zero; every finite
    float is accepted, and one of magnitude 2**52 or more (no fractional digits) is returned unchanged."""
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"cannot round non-finite logit {x!r}")
    if abs(x) >= _INTEGRAL:
        return float(x)
    return float(decimal.Decimal(x).quantize(_MICRO, context=_ROUNDING))


def _encode_int(value: int) -> bytes:
    if 0 <= value <= 255:
        return bytes((_SMALL_INTEGER_EXT, value))
    if -(2**31) <= value < 2**31:
        return bytes((_INTEGER_EXT,)) + struct.pack(">i", value)
    raise ValueError(f"id {value} does not fit Erlang's INTEGER_EXT")


def _encode_list(items: Sequence[bytes]) -> bytes:
    if not items:
        return bytes((_NIL_EXT,))  # Erlang's [] is NIL_EXT alone
    return bytes((_LIST_EXT,)) + struct.pack(">I", len(items)) + b"".join(items) + bytes((_NIL_EXT,))


def _encode_atom(name: str) -> bytes:
    raw = name.encode()
    return bytes((_SMALL_ATOM_UTF8_EXT, len(raw))) + raw


def _encode_binary(text: str) -> bytes:
    raw = text.encode()
    return bytes((_BINARY_EXT,)) + struct.pack(">I", len(raw)) + raw


def _encode_map(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    return bytes((_MAP_EXT,)) + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)


def route_term_bytes(agent_id: int, role_id: int, logits: Sequence[float]) -> bytes:
    """The external-term-format bytes hashed by :func:`route_hash` (107 bytes for 10 logits)."""
    floats = [bytes((_NEW_FLOAT_EXT,)) + struct.pack(">d", elixir_round6(x)) for x in logits]
    return bytes((_VERSION,)) + _encode_list([_encode_int(agent_id), _encode_int(role_id), _encode_list(floats)])


def route_hash(agent_id: int, role_id: int, logits: Sequence[float]) -> str:
    """Hex sha256 of the decision term; equal across ports for equal rounded logits and ids."""
    return hashlib.sha256(route_term_bytes(agent_id, role_id, logits)).hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` as UTF-8 (lone surrogates passed through): the content hash used in traces,
    shared by the producers (coordinator) and the trace sink so their hashes of one text agree."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def transcript_term_bytes(messages: Sequence[Message]) -> bytes:
    """Erlang ``term_to_binary(messages, [:compressed])`` of a transcript.

    ``messages`` is the list of maps ``%{role: role, content: content}``: atom keys, encoded ``role`` first,
    then ``content``, values as binaries. ``:compressed`` wraps the term in zlib (level 6) when that is
    smaller by more than the 4-byte size field, as erts does.
    """
    term = _encode_list([_encode_map([(_encode_atom("role"), _encode_binary(m.role)),
                                      (_encode_atom("content"), _encode_binary(m.content))]) for m in messages])
    packed = zlib.compress(term, _ZLIB_LEVEL)
    # erts: the compressed form is kept only when 5 + len(zlib) < 1 + len(term) (version byte counted).
    if len(packed) + 4 < len(term):
        return bytes((_VERSION, _COMPRESSED)) + struct.pack(">I", len(term)) + packed
    return bytes((_VERSION,)) + term


def transcript_hash(messages: Sequence[Message]) -> str:
    """Cross-port transcript fingerprint: lowercase hex sha256 of :func:`transcript_term_bytes`
    (reproduces the ``transcript_hash`` of all 37 anchor cases)."""
    return hashlib.sha256(transcript_term_bytes(messages)).hexdigest()
