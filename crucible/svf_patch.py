"""Apply a TRINITY SVF adapter to a model or state dict, in place, with one receipt per matrix.

This joins :mod:`crucible.router_vector` (offsets per matrix), :mod:`crucible.factor_cache` /
:mod:`crucible.factorization` (factors and the ``svf-energy-v1`` reconstruction) and
:mod:`crucible.tensor_patch` (in-place write, dtype policy, receipts).

**Tied weights.** Qwen3-0.6B ties ``model.embed_tokens.weight`` and ``lm_head.weight`` (one storage), yet
the vector holds offsets for both. :class:`TiedWeights` makes the choice explicit:

* ``ERROR`` (default): refuse, naming the tied paths.
* ``UNTIE``: give each tied path its own storage first, so each gets its own offsets (costs one extra
  copy of the matrix: 622 MB for a float32 151936 x 1024 embedding).
* ``FIRST_WINS``: adapt the shared storage once with the offsets of the tied path that comes first in the
  layout (for TRINITY, the input embedding, which is what routing reads) and skip the later tied paths;
  their skip is reported in :attr:`SvfApplication.skipped`. The ``embed-wins`` convention.
* ``LAST_WINS``: adapt the shared storage once with the offsets of the tied path that comes *last* (for
  TRINITY, ``lm_head.weight``), skipping the earlier ones — what Sakana's trainer did by copying each composed
  matrix in state-dict order into the tied parameter. The ``lm_head-wins`` convention.

Both adapt from the *base* factors, so the result is SVF(E, winning offsets) either way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from crucible.dtype_policy import DTypePolicy
from crucible.errors import AliasedParameter, IncompleteAdapter
from crucible.factorization import DEFAULT_BLOCK_ROWS, SVF_FORMULA_ID, SvfFactors, svf_reconstruct
from crucible.tensor_patch import (
    ParamPath,
    PatchReceipt,
    PatchTarget,
    aliases_of,
    apply_patch,
    untie_parameter,
)


class TiedWeights(enum.Enum):
    """What to do when adapted matrices share storage (see module docs)."""

    ERROR = "error"
    UNTIE = "untie"
    FIRST_WINS = "first-wins"
    LAST_WINS = "last-wins"


@dataclass(frozen=True, slots=True)
class SvfApplication:
    """Result of :func:`apply_svf_adapter`.

    Attributes:
        receipts: one per patched path, in layout order.
        skipped: paths not patched because another tied path adapted their storage (``FIRST_WINS``: an
            earlier one; ``LAST_WINS``: a later one), mapped to that path.
    """

    receipts: tuple[PatchReceipt, ...]
    skipped: Mapping[str, str]


def apply_svf(
    target: PatchTarget,
    path: str | ParamPath,
    factors: SvfFactors,
    offsets: torch.Tensor | NDArray[np.floating],
    *,
    adapter_ref: str,
    policy: DTypePolicy | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    allow_aliased: bool = False,
) -> PatchReceipt:
    """Replace one matrix with its SVF reconstruction (formula ``svf-energy-v1``) in place.

    The reconstruction runs block by block in the policy's compute dtype and is cast back to the
    parameter's dtype per block, so the only full-size allocation is the new value in that dtype.
    """
    policy = policy or DTypePolicy()

    def transform(current: torch.Tensor) -> torch.Tensor:
        return svf_reconstruct(
            current, factors, offsets, policy=policy, out_dtype=current.dtype, block_rows=block_rows
        )

    return apply_patch(
        target,
        path,
        transform,
        formula_id=SVF_FORMULA_ID,
        adapter_ref=adapter_ref,
        policy=policy,
        allow_aliased=allow_aliased,
    )


def apply_svf_adapter(
    target: PatchTarget,
    offsets: Mapping[str, NDArray[np.floating]],
    factors: Mapping[str, SvfFactors],
    *,
    adapter_ref: str,
    order: Sequence[str] | None = None,
    tied: TiedWeights = TiedWeights.ERROR,
    policy: DTypePolicy | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> SvfApplication:
    """Apply SVF to every matrix named in ``offsets`` (in ``order``, default the mapping's order).

    ``factors`` must be those of the *base* weights (compute them before any patch, e.g. with
    :class:`crucible.factor_cache.FactorCache`).

    Raises:
        IncompleteAdapter: a name lacks offsets or factors.
        AliasedParameter: tied paths and ``tied`` is ``ERROR``.
        ParameterNotFound, FactorShapeMismatch, NonFiniteResult, ...: from the individual patches.
    """
    names = list(order) if order is not None else list(offsets)
    for name in names:
        missing = [what for what, table in (("offsets", offsets), ("factors", factors)) if name not in table]
        if missing:
            raise IncompleteAdapter(f"{name}: no {' or '.join(missing)} given; the adapter does not cover it")
    skipped: dict[str, str] = {}
    adapted: set[str] = set()
    receipts: list[PatchReceipt] = []
    for pos, name in enumerate(names):
        allow = False
        tied_with = aliases_of(target, name)
        if tied_with:
            earlier = [alias for alias in tied_with if alias in adapted]
            later = [alias for alias in tied_with if alias in names[pos + 1:]]
            if tied is TiedWeights.ERROR:
                raise AliasedParameter(
                    f"{name} is tied to {', '.join(tied_with)}; choose TiedWeights.UNTIE, "
                    "TiedWeights.FIRST_WINS or TiedWeights.LAST_WINS explicitly"
                )
            if tied is TiedWeights.UNTIE:
                untie_parameter(target, name)
            elif tied is TiedWeights.LAST_WINS and later:
                skipped[name] = later[-1]
                continue
            elif tied is TiedWeights.FIRST_WINS and earlier:
                skipped[name] = earlier[0]
                continue
            else:
                allow = True
        receipts.append(
            apply_svf(
                target,
                name,
                factors[name],
                offsets[name],
                adapter_ref=adapter_ref,
                policy=policy,
                block_rows=block_rows,
                allow_aliased=allow,
            )
        )
        adapted.add(name)
    return SvfApplication(receipts=tuple(receipts), skipped=skipped)
