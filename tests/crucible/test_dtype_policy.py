"""crucible.dtype_policy: single correctly rounded cast back, compute dtypes, finiteness."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from crucible import errors
from crucible.dtype_policy import DTypePolicy, cast_correctly_rounded, round_to_odd_float32

# (mantissa bits incl. implicit, min normal exponent, max finite) per target format
FORMATS = {
    torch.bfloat16: (8, -126, (2 - 2**-7) * 2**127),
    torch.float16: (11, -14, 65504.0),
}


def nearest_even(x: float, target: torch.dtype) -> float:
    """Reference: round a finite float64 to the target format exactly, with Fractions."""
    precision, emin, max_finite = FORMATS[target]
    if x == 0:
        return x
    value = Fraction(x)
    sign = -1 if value < 0 else 1
    value = abs(value)
    exponent = max(value.numerator.bit_length() - value.denominator.bit_length(), emin)
    while Fraction(2) ** exponent > value and exponent > emin:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= value:
        exponent += 1
    ulp = Fraction(2) ** (exponent - precision + 1)
    q, r = divmod(value, ulp)
    q = int(q)
    if r > ulp / 2 or (r == ulp / 2 and q % 2 == 1):
        q += 1
    result = q * ulp
    max_f = Fraction(max_finite)
    if result > max_f:
        return sign * float("inf")
    return sign * float(result)


def sample_values(rng: random.Random, target: torch.dtype) -> list[float]:
    precision, _, _ = FORMATS[target]
    values: list[float] = []
    for _ in range(3000):
        kind = rng.random()
        base = rng.uniform(0.5, 1.0) * 2.0 ** rng.randint(-20, 15)
        if kind < 0.5:  # near a tie: halfway between two target values, nudged by a tiny amount
            ulp = 2.0 ** (-(precision - 1))
            mantissa = (rng.randrange(2 ** (precision - 1)) + 0.5) * ulp
            base = (1 + mantissa) * 2.0 ** rng.randint(-10, 10)
            base += rng.choice([-1, 0, 1]) * base * 2.0 ** rng.randint(-52, -25)
        values.append(rng.choice([-1.0, 1.0]) * base)
    return values


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
def test_float64_cast_is_single_correct_rounding(target: torch.dtype) -> None:
    values = sample_values(random.Random(11), target)
    ours = cast_correctly_rounded(torch.tensor(values, dtype=torch.float64), target).to(torch.float64).tolist()
    reference = [nearest_even(v, target) for v in values]
    assert ours == reference
    # torch's own double -> narrow cast rounds twice and differs on some near-ties: the reason for the policy
    naive = torch.tensor(values, dtype=torch.float64).to(target).to(torch.float64).tolist()
    assert sum(a != b for a, b in zip(naive, reference, strict=True)) > 0


def test_known_double_rounding_case() -> None:
    x = torch.tensor([1.0 + 2**-8 + 2**-30], dtype=torch.float64)  # just above a bf16 tie
    assert x.to(torch.bfloat16).item() == 1.0  # torch: rounds to float32 (the tie), then to even
    assert cast_correctly_rounded(x, torch.bfloat16).item() == 1.0078125


def test_round_to_odd_edges() -> None:
    x = torch.tensor([1e300, -1e300, 1e-300, -1e-300, 0.0, float("inf"), 1.0], dtype=torch.float64)
    odd = round_to_odd_float32(x)
    assert odd[0].item() == torch.finfo(torch.float32).max and odd[1].item() == -torch.finfo(torch.float32).max
    assert odd[2].item() > 0 and odd[3].item() < 0  # inexact tiny values keep a sticky bit
    assert odd[4].item() == 0.0 and odd[5].item() == float("inf") and odd[6].item() == 1.0
    assert torch.isnan(round_to_odd_float32(torch.tensor([float("nan")], dtype=torch.float64))).all()
    out = cast_correctly_rounded(x[:4], torch.bfloat16).tolist()
    assert out == [float("inf"), float("-inf"), 0.0, -0.0]


def test_other_casts_use_torch_single_rounding() -> None:
    x = torch.randn(1000, dtype=torch.float64)
    assert torch.equal(cast_correctly_rounded(x, torch.float32), x.to(torch.float32))
    f = x.to(torch.float32)
    assert torch.equal(cast_correctly_rounded(f, torch.bfloat16), f.to(torch.bfloat16))
    assert cast_correctly_rounded(f, torch.float32) is f


def test_policy_checks_dtypes_and_finiteness() -> None:
    assert DTypePolicy().policy_id == "compute=float64;cast=nearest-even-single-rounding"
    assert DTypePolicy(torch.float32).to_compute(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(errors.UnsupportedDtype, match="float16"):
        DTypePolicy(torch.float16)
    with pytest.raises(errors.UnsupportedDtype):
        DTypePolicy().to_compute(torch.ones(2, dtype=torch.int32))
    with pytest.raises(errors.UnsupportedDtype, match="int8"):
        DTypePolicy().cast_back(torch.ones(2), torch.int8)
    with pytest.raises(errors.NonFiniteResult, match="w: 1 element"):
        DTypePolicy().cast_back(torch.tensor([1.0, 1e6], dtype=torch.float64), torch.float16, what="w")
