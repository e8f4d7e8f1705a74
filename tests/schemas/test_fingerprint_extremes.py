"""route_hash over every finite float: Elixir's ``Float.round(x, 6)`` returns a float with no fractional
digits unchanged, so huge logits hash instead of raising ``decimal.InvalidOperation`` (the default 28-digit
context could not quantize 1e22), and every value below 1e15 hashes exactly as before."""

from __future__ import annotations

import decimal
import hashlib
import struct
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Role, RouteLogits, RuntimeProfile, decide, route_hash
from schemas.fingerprint import elixir_round6

MAX = sys.float_info.max


def previous_route_hash(agent: int, role: int, logits: list[float]) -> str:
    """The route hash as computed before the fix, written out independently: quantize in the thread's
    default (28-digit) context, then Erlang's external term format of ``[agent, role, [floats]]``."""
    rounded = [float(decimal.Decimal(x).quantize(decimal.Decimal("0.000001"), rounding=decimal.ROUND_HALF_UP))
               for x in logits]
    floats = b"".join(b"F" + struct.pack(">d", v) for v in rounded)
    term = (bytes((131, 108)) + struct.pack(">I", 3) + bytes((97, agent, 97, role, 108)) + struct.pack(">I", 10)
            + floats + bytes((106, 106)))
    return hashlib.sha256(term).hexdigest()


finite = st.floats(allow_nan=False, allow_infinity=False)
small = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False, exclude_min=True,
                  exclude_max=True)
ids = st.tuples(st.integers(0, 6), st.integers(0, 2))


@settings(max_examples=500, deadline=None)
@given(ids, st.lists(finite, min_size=10, max_size=10))
def test_route_hash_never_raises_for_finite_logits(idr: tuple[int, int], logits: list[float]) -> None:
    h = route_hash(idr[0], idr[1], logits)
    assert len(h) == 64 and int(h, 16) >= 0


@settings(max_examples=500, deadline=None)
@given(ids, st.lists(small, min_size=10, max_size=10))
def test_route_hash_is_unchanged_below_1e15(idr: tuple[int, int], logits: list[float]) -> None:
    assert route_hash(idr[0], idr[1], logits) == previous_route_hash(idr[0], idr[1], logits)


def test_the_probe_value_and_the_extremes_hash() -> None:
    logits = [1e22, -1e22, MAX, -MAX, 2.0**52, -(2.0**52), 1e300, 5e-324, -5e-324, 3.5]
    try:
        previous_route_hash(0, 0, logits)
    except decimal.InvalidOperation:
        pass  # the bug this file pins down
    else:
        raise AssertionError("the previous rounding was expected to raise on 1e22")
    assert len(route_hash(0, 0, logits)) == 64


def test_values_without_fractional_digits_come_back_unchanged() -> None:
    for x in (1e22, -1e22, MAX, -MAX, 2.0**52, 2.0**53 + 2, 1e300, -123456789012345678.0):
        assert elixir_round6(x) == x
    # just below 2**52 a double still has a fractional bit: kept, since 0.5 has fewer than 6 decimals
    assert elixir_round6(2.0**52 - 0.5) == 2.0**52 - 0.5
    assert elixir_round6(1e15 + 0.125) == 1e15 + 0.125
    assert elixir_round6(0.0078125) == 0.007813  # ties away from zero, on the exact binary value


def test_rounding_ignores_the_threads_decimal_context() -> None:
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_FLOOR
        assert elixir_round6(1.23456749) == 1.234567
        assert elixir_round6(-0.0078125) == -0.007813
        assert elixir_round6(12345.6789999) == 12345.679


def test_decide_keeps_margins_finite_for_extreme_logits() -> None:
    lg = RouteLogits(request_id="q1", turn=0, agent_logits=[MAX, -MAX, 1e22, 0, 0, 0, 0],
                     role_logits=[-MAX, MAX, 0.0], token_count=3, transcript_hash="0" * 64)
    d = decide(lg, RuntimeProfile())
    assert (d.agent_id, d.role) == (0, Role.THINKER)
    assert d.agent_margin == MAX and d.role_margin == MAX  # MAX - (-MAX) overflows; JSON has no infinity
    assert d.route_hash == route_hash(0, 1, lg.logits)
