"""Parity of the bounded-memory SVF path on the nine real TRINITY shapes with the real vector's offsets.

Base weights are seeded random float32 (std 0.02, like a real checkpoint). The reference is computed in
the same run: ``torch.linalg.svd(W.double(), full_matrices=False)``, then the SVF formula in float64.

Relative error := ``max|W' - ref| / max|ref|`` over the whole matrix. Tolerance: 1e-5 (observed ~1e-13).
"""

from __future__ import annotations

import pytest
import torch

from crucible.factorization import compute_factors, svf_reconstruct, svf_scale
from crucible.router_vector import TRINITY_SVF_SLOTS, RouterVectorParts, Slot

TOL = 1e-5
LAYER_SLOTS = [slot for slot in TRINITY_SVF_SLOTS if slot[1][0] < 100_000]
EMBED_SHAPE = (151936, 1024)
REFERENCE_BLOCK = 16384


def seeded_weights(shape: tuple[int, int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02


def reference_relative_error(
    ours: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, d: torch.Tensor
) -> float:
    """``max|ours - ref| / max|ref|`` with ``ref = U diag(S (1 + d) c) Vh``, built block by block."""
    scaled = s * (1.0 + d) * svf_scale(s, d)
    worst_diff = 0.0
    worst_ref = 0.0
    for start in range(0, u.shape[0], REFERENCE_BLOCK):
        ref = (u[start : start + REFERENCE_BLOCK] * scaled) @ vh
        worst_ref = max(worst_ref, float(ref.abs().max()))
        worst_diff = max(worst_diff, float((ours[start : start + REFERENCE_BLOCK].double() - ref).abs().max()))
    return worst_diff / worst_ref


def test_layer_slots_cover_seven_of_nine() -> None:
    assert len(LAYER_SLOTS) == 7 and len(TRINITY_SVF_SLOTS) == 9


@pytest.mark.parametrize("slot", LAYER_SLOTS, ids=[slot[0].split(".", 3)[-1] for slot in LAYER_SLOTS])
def test_layer_shape_parity(slot: Slot, real_parts: RouterVectorParts) -> None:
    name, shape, _, _ = slot
    w = seeded_weights(shape, seed=shape[0] * 7 + shape[1])
    d = torch.from_numpy(real_parts.offsets[name])
    factors = compute_factors(w)
    ours64 = svf_reconstruct(w, factors, d, out_dtype=torch.float64)
    ours32 = svf_reconstruct(w, factors, d)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert float((factors.singular_values - s).abs().max() / s[0]) <= 1e-12
    error64 = reference_relative_error(ours64, u, s, vh, d)
    error32 = reference_relative_error(ours32, u, s, vh, d)
    assert error64 <= TOL, f"{name}: float64 relative error {error64:.3e}"
    assert error32 <= TOL, f"{name}: float32 relative error {error32:.3e}"
    assert ours32.dtype == torch.float32 and tuple(ours32.shape) == shape
    # the adapter really changes the matrix (d is not ~0)
    assert float((ours64 - w.double()).abs().max()) > 100 * error64 * float(ours64.abs().max())


@pytest.mark.slow
def test_embedding_shape_parity(real_parts: RouterVectorParts) -> None:
    """151936 x 1024, both tied slots' offsets. Peak ~6 GB (the dense float64 reference SVD dominates)."""
    w = seeded_weights(EMBED_SHAPE, seed=151936)
    factors = compute_factors(w)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert float((factors.singular_values - s).abs().max() / s[0]) <= 1e-12
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        d = torch.from_numpy(real_parts.offsets[name])
        ours = svf_reconstruct(w, factors, d, out_dtype=torch.float64)
        error = reference_relative_error(ours, u, s, vh, d)
        assert error <= TOL, f"{name}: relative error {error:.3e}"
        del ours
