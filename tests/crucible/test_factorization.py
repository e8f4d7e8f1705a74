"""crucible.factorization: TSQR thin SVD and SVF against dense float64 torch references (same run).

Relative error throughout: ``max|W' - ref| / max|ref|`` with ``ref`` from ``torch.linalg.svd`` in float64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from crucible import errors
from crucible.dtype_policy import DTypePolicy, cast_correctly_rounded
from crucible.factorization import (
    SafetensorsRows,
    compute_factors,
    reference_svf_reconstruct,
    svf_operator,
    svf_reconstruct,
    svf_scale,
    thin_svd,
    tsqr_r,
)
from crucible.safetensors_io import SafetensorsReader

TOL = 1e-5


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


def weights(shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.02).to(dtype)


def offsets(k: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(k, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64), (1, 5), (5, 1), (1000, 3)])
@pytest.mark.parametrize("block_rows", [7, 64, 100_000])
def test_svf_matches_dense_reference(shape: tuple[int, int], block_rows: int) -> None:
    w = weights(shape, seed=sum(shape))
    d = offsets(min(shape), seed=shape[0])
    factors = compute_factors(w, block_rows=block_rows)
    ours = svf_reconstruct(w, factors, d, out_dtype=torch.float64, block_rows=block_rows)
    reference = reference_svf_reconstruct(w, d)
    assert ours.dtype == torch.float64 and ours.shape == shape
    assert rel_err(ours, reference) <= 1e-12
    s_ref = torch.linalg.svdvals(w.double())
    assert float((factors.singular_values - s_ref).abs().max() / s_ref[0]) <= 1e-13


def test_zero_or_constant_offsets_return_the_matrix() -> None:
    w = weights((200, 30), seed=1)
    factors = compute_factors(w)
    for d in (torch.zeros(30, dtype=torch.float64), torch.full((30,), 0.37, dtype=torch.float64)):
        assert rel_err(svf_reconstruct(w, factors, d, out_dtype=torch.float64), w.double()) <= 1e-13
        assert svf_scale(factors.singular_values, d) == pytest.approx(float(1 / (1 + d[0])))


def test_energy_is_preserved() -> None:
    w = weights((120, 50), seed=2)
    d = offsets(50, seed=2, scale=0.5).clamp(min=-0.9)  # 1 + d > 0 keeps every S * (1 + d) a singular value
    adapted = svf_reconstruct(w, compute_factors(w), d, out_dtype=torch.float64)
    s0 = torch.linalg.svdvals(w.double())
    s1 = torch.linalg.svdvals(adapted)
    assert float(s1.sum()) == pytest.approx(float(s0.sum()), rel=1e-12)


def test_rank_deficient_matrix() -> None:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(80, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 20, generator=gen, dtype=torch.float64)
    d = offsets(20, seed=5)
    ours = svf_reconstruct(w, compute_factors(w, block_rows=16), d, block_rows=16)
    assert rel_err(ours, reference_svf_reconstruct(w, d)) <= 1e-12


def test_thin_svd_factors() -> None:
    for shape in [(500, 60), (60, 500)]:
        w = weights(shape, seed=9)
        u, s, vh = thin_svd(w, block_rows=50)
        k = min(shape)
        assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])
        eye = torch.eye(k, dtype=torch.float64)
        assert float((u.T @ u - eye).abs().max()) <= 1e-12
        assert float((vh @ vh.T - eye).abs().max()) <= 1e-12
        assert rel_err((u * s) @ vh, w.double()) <= 1e-13


def test_tsqr_memory_is_bounded_by_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every QR sees at most block_rows + n rows; the only SVD is n x n; no m x m anywhere."""
    qr_shapes: list[tuple[int, int]] = []
    svd_shapes: list[tuple[int, int]] = []
    real_qr, real_svd = torch.linalg.qr, torch.linalg.svd

    def spy_qr(a: torch.Tensor, mode: str = "reduced") -> Any:
        qr_shapes.append((a.shape[0], a.shape[1]))
        return real_qr(a, mode=mode)

    def spy_svd(a: torch.Tensor, full_matrices: bool = True) -> Any:
        svd_shapes.append((a.shape[0], a.shape[1]))
        return real_svd(a, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "qr", spy_qr)
    monkeypatch.setattr(torch.linalg, "svd", spy_svd)
    w = weights((5000, 32), seed=3)
    compute_factors(w, block_rows=256)
    assert len(qr_shapes) == 20 and max(rows for rows, _ in qr_shapes) <= 256 + 32
    assert svd_shapes == [(32, 32)]
    r = tsqr_r(w, block_rows=256)
    assert r.shape == (32, 32) and torch.allclose(r.T @ r, w.double().T @ w.double(), rtol=1e-12, atol=1e-15)


def test_streaming_from_safetensors_matches_in_memory(tmp_path: Path) -> None:
    w = weights((777, 48), seed=4)
    path = tmp_path / "w.safetensors"
    save_file({"m": w, "wide": w[:40].T.contiguous()}, str(path))
    d = offsets(48, seed=4)
    in_memory = compute_factors(w, block_rows=100)
    with SafetensorsReader(path) as reader:
        source = SafetensorsRows(reader, "m")
        assert source.shape == (777, 48)
        streamed = compute_factors(source, block_rows=100)
        assert torch.equal(streamed.singular_values, in_memory.singular_values)
        assert torch.equal(streamed.basis, in_memory.basis)
        from_file = svf_reconstruct(source, streamed, d, block_rows=100)
        wide = SafetensorsRows(reader, "wide")
        wide_factors = compute_factors(wide)
        d40 = offsets(40, seed=5)
        wide_out = svf_reconstruct(wide, wide_factors, d40, out_dtype=torch.float64)
    assert torch.equal(from_file, svf_reconstruct(w, in_memory, d, block_rows=100))
    assert rel_err(wide_out, reference_svf_reconstruct(w[:40].T, d40)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_output_dtype_is_the_single_rounding_of_the_float64_result(dtype: torch.dtype) -> None:
    w = weights((256, 24), seed=6, dtype=dtype)
    factors = compute_factors(w)
    d = offsets(24, seed=6)
    exact = svf_reconstruct(w, factors, d, out_dtype=torch.float64)
    out = svf_reconstruct(w, factors, d)
    assert out.dtype == dtype
    assert torch.equal(out, cast_correctly_rounded(exact, dtype))


def test_float32_compute_policy_is_close() -> None:
    w = weights((400, 64), seed=7)
    d = offsets(64, seed=7)
    f32 = svf_reconstruct(w, compute_factors(w), d, policy=DTypePolicy(torch.float32), out_dtype=torch.float64)
    assert rel_err(f32, reference_svf_reconstruct(w, d)) <= 1e-6


def test_operator_is_symmetric_and_scaled() -> None:
    w = weights((90, 12), seed=8)
    factors = compute_factors(w)
    d = offsets(12, seed=8)
    m = svf_operator(factors, d)
    assert torch.allclose(m, m.T, atol=1e-15)
    c = svf_scale(factors.singular_values, d)
    assert torch.allclose(torch.linalg.eigvalsh(m).sort().values, (c * (1 + d)).sort().values, atol=1e-13)


def test_errors_are_typed() -> None:
    w = weights((20, 5), seed=10)
    factors = compute_factors(w)
    with pytest.raises(errors.InvalidMatrix, match="2-D"):
        compute_factors(torch.zeros(3))
    with pytest.raises(errors.InvalidMatrix, match="floating"):
        compute_factors(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(errors.InvalidMatrix, match="empty"):
        compute_factors(torch.zeros(0, 3))
    bad = w.clone()
    bad[13, 2] = float("nan")
    with pytest.raises(errors.InvalidMatrix, match=r"rows 10\.\.20"):
        compute_factors(bad, block_rows=10)
    with pytest.raises(errors.InvalidMatrix, match="block_rows"):
        compute_factors(w, block_rows=0)
    with pytest.raises(errors.OffsetLengthMismatch, match="needs 5"):
        svf_reconstruct(w, factors, [0.0] * 4)
    with pytest.raises(errors.NonFiniteOffsets):
        svf_reconstruct(w, factors, [0.0, 0.0, float("inf"), 0.0, 0.0])
    with pytest.raises(errors.DegenerateScale):
        svf_reconstruct(w, factors, [-1.0] * 5)
    with pytest.raises(errors.FactorShapeMismatch):
        svf_reconstruct(w.T, factors, [0.0] * 5)
    big = w * 5e6  # |values| ~ 1e5, past float16's 65504
    with pytest.raises(errors.NonFiniteResult, match="float16"):
        svf_reconstruct(big, compute_factors(big), [0.0] * 5, out_dtype=torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    w = weights((3000, 256), seed=12)
    d = offsets(256, seed=12)
    cpu = svf_reconstruct(w, compute_factors(w, block_rows=1000), d, block_rows=1000, out_dtype=torch.float64)
    wc = w.cuda()
    factors = compute_factors(wc, block_rows=1000)
    assert factors.basis.is_cuda
    gpu = svf_reconstruct(wc, factors, d, block_rows=1000, out_dtype=torch.float64)
    assert gpu.is_cuda
    assert rel_err(gpu.cpu(), cpu) <= 1e-12
    wide = w[:200].T.contiguous().cuda()
    wide_out = svf_reconstruct(wide, compute_factors(wide), offsets(200, seed=13), out_dtype=torch.bfloat16)
    assert wide_out.is_cuda and wide_out.dtype == torch.bfloat16
