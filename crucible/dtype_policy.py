"""Dtype transfer policy: compute in float64 or float32, cast back to the target dtype exactly once.

The policy is the single place that decides how a patched value travels from the compute dtype to the
parameter's dtype:

* **Compute dtype**: ``float64`` (default) or ``float32``. Inputs are upcast to it exactly.
* **Cast back**: round-to-nearest, ties-to-even, **one rounding** from the compute dtype to the target
  dtype (``float64``, ``float32``, ``float16`` or ``bfloat16``). ``torch`` casts ``float64`` to
  ``bfloat16``/``float16`` through ``float32``, rounding twice, which can differ from the nearest value by
  one unit in the last place on near-ties; this module rounds ``float64 -> float32`` *to odd* first, which
  makes the second rounding exact (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums:
  proved algorithms using rounding to odd", 2008), so the result is the correctly rounded value.
* **Finiteness**: a value that becomes NaN or inf in the target dtype is refused
  (:class:`~crucible.errors.NonFiniteResult`), never written into a model.

Example::

    policy = DTypePolicy()                       # float64 compute
    w64 = policy.to_compute(weight_bf16)         # exact upcast
    new = policy.cast_back(w64 * 1.01, torch.bfloat16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from crucible.errors import NonFiniteResult, UnsupportedDtype

COMPUTE_DTYPES: Final = (torch.float64, torch.float32)
TARGET_DTYPES: Final = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: Identifier of the rounding rule, recorded in patch receipts.
ROUNDING_ID: Final = "nearest-even-single-rounding"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def round_to_odd_float32(values: torch.Tensor) -> torch.Tensor:
    """Round float64 values to float32 with round-to-odd (truncate, then set the last bit if inexact).

    NaN and inf pass through; finite values beyond the float32 range become ``±FLT_MAX`` (which is odd)
    so a following rounding to a narrower format still overflows correctly.
    """
    if values.dtype != torch.float64:
        raise UnsupportedDtype(f"round_to_odd_float32 expects float64 input, got {dtype_name(values.dtype)}")
    nearest = values.to(torch.float32)
    widened = nearest.to(torch.float64)
    inexact = widened != values  # also true for NaN, harmlessly: NaN | 1 is still NaN
    away = inexact & (widened.abs() > values.abs())
    toward_zero = torch.where(away, torch.nextafter(nearest, torch.zeros_like(nearest)), nearest)
    bits = toward_zero.view(torch.int32)
    return torch.where(inexact, bits | 1, bits).view(torch.float32)


def cast_correctly_rounded(values: torch.Tensor, target: torch.dtype) -> torch.Tensor:
    """Cast a floating tensor to ``target`` with a single round-to-nearest-even rounding."""
    if target not in TARGET_DTYPES:
        raise UnsupportedDtype(
            f"cannot cast to {dtype_name(target)}: supported targets are "
            f"{', '.join(dtype_name(d) for d in TARGET_DTYPES)}"
        )
    if values.dtype == target:
        return values
    if values.dtype == torch.float64 and target in (torch.float16, torch.bfloat16):
        return round_to_odd_float32(values).to(target)
    return values.to(target)


@dataclass(frozen=True, slots=True)
class DTypePolicy:
    """How patched values are computed and written back.

    Attributes:
        compute_dtype: ``torch.float64`` (default) or ``torch.float32``.
    """

    compute_dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise UnsupportedDtype(
                f"compute dtype {dtype_name(self.compute_dtype)} is not supported; use float64 or float32"
            )

    @property
    def policy_id(self) -> str:
        """A stable label for receipts, e.g. ``"compute=float64;cast=nearest-even-single-rounding"``."""
        return f"compute={dtype_name(self.compute_dtype)};cast={ROUNDING_ID}"

    def to_compute(self, values: torch.Tensor) -> torch.Tensor:
        """Upcast (exactly) a floating tensor to the compute dtype."""
        if not values.dtype.is_floating_point:
            raise UnsupportedDtype(f"expected a floating-point tensor, got {dtype_name(values.dtype)}")
        return values.to(self.compute_dtype)

    def cast_back(self, values: torch.Tensor, target: torch.dtype, *, what: str = "value") -> torch.Tensor:
        """Cast computed values to ``target`` (single rounding) and refuse NaN/inf in the result.

        Args:
            values: computed values (any floating dtype).
            target: the parameter's dtype.
            what: names the value in error messages (e.g. a parameter path).

        Raises:
            UnsupportedDtype: ``target`` is not float64/float32/float16/bfloat16.
            NonFiniteResult: the cast result holds NaN or inf.
        """
        out = cast_correctly_rounded(values, target)
        finite = torch.isfinite(out)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteResult(
                f"{what}: {bad} element(s) are NaN/inf after casting to {dtype_name(target)} "
                "(overflow of the target range or non-finite inputs); check the adapter values"
            )
        return out
