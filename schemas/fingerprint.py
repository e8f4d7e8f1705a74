"""``route_hash``: the decision fingerprint shared with the known Elixir port.

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
from collections.abc import Sequence

_VERSION = 131
_SMALL_INTEGER_EXT = 97
_INTEGER_EXT = 98
_NEW_FLOAT_EXT = 70
_LIST_EXT = 108
_NIL_EXT = 106
_MICRO = decimal.Decimal("0.000001")


def elixir_round6(x: float) -> float:
    """Round like Elixir's ``Float.round(x, 6)``: exact decimal value, ties away from zero."""
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"cannot round non-finite logit {x!r}")
    return float(decimal.Decimal(x).quantize(_MICRO, rounding=decimal.ROUND_HALF_UP))


def _encode_int(value: int) -> bytes:
    if 0 <= value <= 255:
        return bytes((_SMALL_INTEGER_EXT, value))
    if -(2**31) <= value < 2**31:
        return bytes((_INTEGER_EXT,)) + struct.pack(">i", value)
    raise ValueError(f"id {value} does not fit Erlang's INTEGER_EXT")


def _encode_list(items: Sequence[bytes]) -> bytes:
    return bytes((_LIST_EXT,)) + struct.pack(">I", len(items)) + b"".join(items) + bytes((_NIL_EXT,))


def route_term_bytes(agent_id: int, role_id: int, logits: Sequence[float]) -> bytes:
    """The external-term-format bytes hashed by :func:`route_hash` (107 bytes for 10 logits)."""
    floats = [bytes((_NEW_FLOAT_EXT,)) + struct.pack(">d", elixir_round6(x)) for x in logits]
    return bytes((_VERSION,)) + _encode_list([_encode_int(agent_id), _encode_int(role_id), _encode_list(floats)])


def route_hash(agent_id: int, role_id: int, logits: Sequence[float]) -> str:
    """Hex sha256 of the decision term; equal across ports for equal rounded logits and ids."""
    return hashlib.sha256(route_term_bytes(agent_id, role_id, logits)).hexdigest()
