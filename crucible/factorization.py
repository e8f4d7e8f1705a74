"""Thin SVD in bounded memory and the SVF (singular value fine-tuning) reconstruction TRINITY uses.

**SVF.** With the thin SVD ``W = U diag(S) V^T`` (``k = min(m, n)`` singular values, descending) and
offsets ``d`` (one per singular value)::

    W' = U diag(S * (1 + d)) V^T * (sum(S) / sum(S * (1 + d)))          # formula id "svf-energy-v1"

**Bounded memory.** Nothing of size ``m x m`` (or ``n x n`` for wide matrices) is ever formed, and the
input is never copied whole to float64:

* For a tall matrix (``m >= n``) the right factors come from a sequential **TSQR**: row blocks of at most
  ``block_rows`` rows are upcast to float64 and folded into a running ``n x n`` triangular factor ``R``
  (``W^T W = R^T R``) with Householder QR; then ``R = U_R diag(S) V^T`` (LAPACK SVD of an ``n x n``
  matrix) gives ``S`` and ``V`` exactly as an SVD of ``W`` would, with backward-stable accuracy (the
  Gram-matrix route ``eig(W^T W)`` squares the condition number and is not used).
* Because ``W V = U diag(S)`` for a thin SVD with square ``V``, the SVF result needs no ``U`` at all::

      W' = c * W @ (V diag(1 + d) V^T),      c = sum(S) / sum(S * (1 + d))

  which is applied block by block, so peak extra memory is ``O(block_rows * n + n * n)`` float64 values
  plus the output in the target dtype. A wide matrix (``m < n``) is handled as its transpose:
  ``W' = c * (U diag(1 + d) U^T) @ W`` with ``U`` the left factors from a TSQR of ``W^T``.

:class:`SvfFactors` (``S`` and the ``k x k`` basis) is all a cache needs to keep per matrix
(:mod:`crucible.factor_cache`): 8 MiB for ``k = 1024``, whatever ``m`` is.

**Devices.** Work happens on the input tensor's device (CPU or CUDA); factors live where they were
computed and are moved to the matrix's device for reconstruction. A :class:`RowSource` yields CPU rows.

Example::

    factors = compute_factors(w)                         # once per base matrix
    w_adapted = svf_reconstruct(w, factors, d)           # per vector; same dtype as w
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

from crucible.dtype_policy import DTypePolicy
from crucible.errors import (
    DegenerateScale,
    FactorShapeMismatch,
    InvalidMatrix,
    NonFiniteOffsets,
    OffsetLengthMismatch,
)
from crucible.safetensors_io import SafetensorsReader

#: Identifier of the SVF reconstruction formula, recorded in patch receipts.
SVF_FORMULA_ID: Final = "svf-energy-v1"
#: Rows per TSQR / reconstruction block (16384 x 1024 float64 = 128 MiB).
DEFAULT_BLOCK_ROWS: Final = 16384


@runtime_checkable
class RowSource(Protocol):
    """A 2-D matrix that can hand out row blocks (e.g. a tensor in a safetensors file)."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        ...

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a 2-D tensor."""
        ...


@dataclass(frozen=True, slots=True)
class SafetensorsRows:
    """A :class:`RowSource` over one 2-D tensor of an open :class:`SafetensorsReader`."""

    reader: SafetensorsReader
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` from the validated header."""
        shape = self.reader.info(self.name).shape
        if len(shape) != 2:
            raise InvalidMatrix(f"tensor {self.name!r} has shape {shape}; a matrix is needed")
        return (shape[0], shape[1])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Read rows ``[start, stop)`` from the file (only those bytes)."""
        return self.reader.read_rows(self.name, start, stop)


Matrix = torch.Tensor | RowSource


@dataclass(frozen=True, slots=True)
class SvfFactors:
    """What SVF needs from a thin SVD of one ``m x n`` matrix.

    Attributes:
        shape: ``(m, n)`` of the factored matrix.
        singular_values: float64 ``(k,)``, descending, ``k = min(m, n)``.
        basis: float64 ``(k, k)`` orthogonal; columns are the right singular vectors ``V`` when
            ``m >= n`` (tall) and the left singular vectors ``U`` when ``m < n`` (wide).
    """

    shape: tuple[int, int]
    singular_values: torch.Tensor
    basis: torch.Tensor

    @property
    def k(self) -> int:
        """Number of singular values, ``min(m, n)``."""
        return min(self.shape)

    @property
    def tall(self) -> bool:
        """True when ``m >= n`` (basis holds right singular vectors)."""
        return self.shape[0] >= self.shape[1]


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _shape_of(w: Matrix) -> tuple[int, int]:
    if isinstance(w, torch.Tensor):
        if w.dim() != 2:
            raise InvalidMatrix(f"expected a 2-D matrix, got shape {tuple(w.shape)}")
        if not w.dtype.is_floating_point:
            raise InvalidMatrix(f"expected a floating-point matrix, got {w.dtype}")
        shape = (int(w.shape[0]), int(w.shape[1]))
    else:
        shape = w.shape
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidMatrix(f"cannot factor an empty matrix of shape {shape}")
    return shape


def _row_blocks(w: Matrix, block_rows: int, *, transpose: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row, block)`` of ``w`` (or of ``w^T``) in the source dtype, detached, checked finite.

    Callers upcast (or copy into a float64 buffer) themselves, so no second full-size block is made here.
    """
    if block_rows < 1:
        raise InvalidMatrix(f"block_rows must be >= 1, got {block_rows}")
    read: Callable[[int, int], torch.Tensor]
    if transpose:
        full = w if isinstance(w, torch.Tensor) else w.rows(0, w.shape[0])
        view = full.T
        read, total = (lambda a, b: view[a:b]), int(view.shape[0])
    elif isinstance(w, torch.Tensor):
        tensor = w
        read, total = (lambda a, b: tensor[a:b]), int(tensor.shape[0])
    else:
        read, total = w.rows, w.shape[0]
    for start in range(0, total, block_rows):
        stop = min(start + block_rows, total)
        block = read(start, stop).detach()  # factors never carry autograd history
        if not bool(torch.isfinite(block).all()):
            axis = "columns" if transpose else "rows"
            raise InvalidMatrix(f"matrix holds NaN/inf in {axis} {start}..{stop}")
        yield start, block


# --------------------------------------------------------------------------------------------------
# factorization
# --------------------------------------------------------------------------------------------------


def tsqr_r(w: Matrix, *, block_rows: int = DEFAULT_BLOCK_ROWS, transpose: bool = False) -> torch.Tensor:
    """Triangular factor ``R`` (float64, ``n x n``) of a tall matrix by sequential blocked QR.

    ``R^T R = W^T W`` up to rounding. With ``transpose=True`` the factor is that of ``W^T``.
    """
    m, n = _shape_of(w)
    if transpose:
        m, n = n, m
    # One reusable float64 buffer holds [R; block]: the running factor on top, the next rows below.
    buffer: torch.Tensor | None = None
    r: torch.Tensor | None = None
    for _, block in _row_blocks(w, block_rows, transpose=transpose):
        if buffer is None:
            buffer = torch.empty((min(n, m) + block.shape[0], n), dtype=torch.float64, device=block.device)
        top = 0 if r is None else r.shape[0]
        if r is not None:
            buffer[:top].copy_(r)
        buffer[top : top + block.shape[0]].copy_(block)
        r = torch.linalg.qr(buffer[: top + block.shape[0]], mode="r").R
    if r is None:  # pragma: no cover - _shape_of rejects empty matrices before this
        raise InvalidMatrix("cannot factor an empty matrix")
    return r


def compute_factors(w: Matrix, *, block_rows: int = DEFAULT_BLOCK_ROWS) -> SvfFactors:
    """Singular values and the ``k x k`` basis of ``w`` by TSQR, in bounded memory.

    Args:
        w: a floating-point 2-D tensor (any float dtype, any strides) or a :class:`RowSource`.
            A wide :class:`RowSource` is read whole (wide TRINITY matrices are at most 1024 x 3072).
        block_rows: rows per block; peak extra memory is about ``(block_rows + n) * n * 8`` bytes.

    Raises:
        InvalidMatrix: not 2-D, not floating point, empty, or holds NaN/inf.
    """
    m, n = _shape_of(w)
    tall = m >= n
    r = tsqr_r(w, block_rows=block_rows, transpose=not tall)
    # R is k x k; its SVD R = U_R diag(S) Vh gives S and the basis (V for W, or U for W^T -> W).
    _, s, vh = torch.linalg.svd(r, full_matrices=False)
    return SvfFactors(shape=(m, n), singular_values=s.contiguous(), basis=vh.T.contiguous())


# --------------------------------------------------------------------------------------------------
# SVF
# --------------------------------------------------------------------------------------------------


def _offsets_tensor(d: torch.Tensor | NDArray[np.floating] | list[float], k: int) -> torch.Tensor:
    offsets = torch.as_tensor(np.asarray(d, dtype=np.float64) if not isinstance(d, torch.Tensor) else d)
    offsets = offsets.to(torch.float64).reshape(-1)
    if offsets.numel() != k:
        raise OffsetLengthMismatch(f"SVF needs {k} offsets (one per singular value), got {offsets.numel()}")
    if not bool(torch.isfinite(offsets).all()):
        raise NonFiniteOffsets("SVF offsets hold NaN/inf; the adapter vector is corrupt")
    return offsets


def svf_scale(singular_values: torch.Tensor, d: torch.Tensor) -> float:
    """The energy-preserving rescale ``sum(S) / sum(S * (1 + d))``.

    Raises:
        DegenerateScale: the denominator is not positive.
    """
    s = singular_values.to(torch.float64)
    denominator = float((s * (1.0 + d.to(device=s.device, dtype=torch.float64))).sum())
    if not denominator > 0.0:
        raise DegenerateScale(
            f"sum(S * (1 + d)) = {denominator!r} is not positive; offsets <= -1 erase the spectrum"
        )
    return float(s.sum()) / denominator


def svf_operator(
    factors: SvfFactors, d: torch.Tensor | NDArray[np.floating] | list[float]
) -> torch.Tensor:
    """The ``k x k`` float64 matrix ``M = c * B diag(1 + d) B^T`` (``B`` = basis) that SVF applies."""
    basis = factors.basis
    offsets = _offsets_tensor(d, factors.k).to(basis.device)
    c = svf_scale(factors.singular_values, offsets)
    return (basis * (c * (1.0 + offsets))) @ basis.T


def svf_reconstruct(
    w: Matrix,
    factors: SvfFactors,
    d: torch.Tensor | NDArray[np.floating] | list[float],
    *,
    policy: DTypePolicy | None = None,
    out_dtype: torch.dtype | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> torch.Tensor:
    """``W'`` of formula ``svf-energy-v1``, computed block by block.

    Args:
        w: the base matrix the factors were computed from (tensor or :class:`RowSource`).
        factors: from :func:`compute_factors` (or a cache) for a matrix of ``w``'s shape.
        d: ``k`` offsets, in descending-singular-value order.
        policy: compute dtype and cast-back rule (default float64 compute).
        out_dtype: dtype of the result; defaults to ``w``'s dtype (float32 for a :class:`RowSource`
            unless given).
        block_rows: rows (tall) or columns (wide) per block.

    Raises:
        FactorShapeMismatch: the factors belong to another shape.
        OffsetLengthMismatch, NonFiniteOffsets, DegenerateScale: unusable offsets.
        NonFiniteResult: the result overflows ``out_dtype``.
    """
    policy = policy or DTypePolicy()
    shape = _shape_of(w)
    if shape != factors.shape:
        raise FactorShapeMismatch(f"factors are for shape {factors.shape}, the matrix is {shape}")
    if out_dtype is None:
        out_dtype = w.dtype if isinstance(w, torch.Tensor) else torch.float32
    device = w.device if isinstance(w, torch.Tensor) else torch.device("cpu")
    operator = svf_operator(factors, d).to(device=device, dtype=policy.compute_dtype)
    out = torch.empty(shape, dtype=out_dtype, device=device)
    if factors.tall:
        for start, block in _row_blocks(w, block_rows, transpose=False):
            value = block.to(policy.compute_dtype) @ operator
            out[start : start + block.shape[0]] = policy.cast_back(value, out_dtype, what="SVF result")
    else:
        for start, block in _row_blocks(w, block_rows, transpose=True):  # blocks of W^T = columns of W
            value = operator @ block.to(policy.compute_dtype).T
            out[:, start : start + block.shape[0]] = policy.cast_back(value, out_dtype, what="SVF result")
    return out


def thin_svd(
    w: Matrix, *, block_rows: int = DEFAULT_BLOCK_ROWS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U, S, Vh)`` in float64 without any ``m x m`` matrix.

    ``S`` and the ``k x k`` factor come from :func:`compute_factors`; the other factor is recovered as
    ``U = W V / S`` (tall) or ``Vh = U^T W / S`` (wide), block by block. Its column ``i`` is accurate to
    about ``eps * S[0] / S[i]``; columns with ``S[i] == 0`` are returned as zeros. Use
    :func:`svf_reconstruct` for SVF: it never needs this factor.
    """
    factors = compute_factors(w, block_rows=block_rows)
    m, n = factors.shape
    s = factors.singular_values
    inverse = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), torch.zeros_like(s))
    if factors.tall:
        u = torch.empty((m, factors.k), dtype=torch.float64, device=s.device)
        for start, block in _row_blocks(w, block_rows, transpose=False):
            u[start : start + block.shape[0]] = (block.to(torch.float64) @ factors.basis) * inverse
        return u, s, factors.basis.T.contiguous()
    vt = torch.empty((factors.k, n), dtype=torch.float64, device=s.device)
    for start, block in _row_blocks(w, block_rows, transpose=True):
        vt[:, start : start + block.shape[0]] = ((block.to(torch.float64) @ factors.basis) * inverse).T
    return factors.basis, s, vt


def reference_svf_reconstruct(
    w: torch.Tensor, d: torch.Tensor | NDArray[np.floating] | list[float]
) -> torch.Tensor:
    """Dense float64 reference: ``torch.linalg.svd(full_matrices=False)`` then the SVF formula.

    Memory is several ``m x n`` float64 copies; meant for tests and benchmarks, not for serving.
    """
    w64 = w.to(torch.float64)
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    del w64
    offsets = _offsets_tensor(d, int(s.numel())).to(s.device)
    scaled = s * (1.0 + offsets) * svf_scale(s, offsets)
    u.mul_(scaled)
    result: torch.Tensor = u @ vh
    return result
