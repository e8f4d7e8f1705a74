"""Cheap SVF adapters: many TRINITY adapters over one unmodified base model, chosen per token.

SVF (:mod:`crucible.factorization`) replaces each adapted matrix by ``W' = W @ M`` (tall, ``m >= n``) or
``W' = M @ W`` (wide) with ``M = c * B diag(1 + d) B^T``: ``B`` is the base matrix's orthogonal ``k x k``
basis, ``d`` the adapter's ``k`` offsets and ``c = sum(S) / sum(S * (1 + d))`` its energy rescale. Because
``B`` is orthogonal, ``x @ M = c * (x + ((x @ B) * d) @ B^T)``, so an adapter needs only ``d`` and ``c``
per matrix (plus its routing head); ``B`` is shared by all adapters of the base model (from the
:class:`~crucible.factor_cache.FactorCache`, keyed by the base weights). The base weights never change:

* a tall ``nn.Linear`` weight (``out >= in``; ``y = x W^T``) gives ``y = base(x @ M)`` (``M`` symmetric),
  applied by a forward *pre*-hook on the module's input;
* a wide one (``out < in``) gives ``y = base(x) @ M``, applied by a forward hook on its output;
* the input embedding (``vocab x hidden``, tall) gives row ``E[t] @ M``, a forward hook on its output.

The hooks read a :class:`TokenPlan` the engine activates around one forward pass: per token (the engine
packs several transcripts into one row) the offsets and scales of that token's adapter. Tokens of
``base`` requests are left untouched, and a pass with no adapted token skips the adapter math entirely.
The plan is only ever active on the engine's single worker thread.

**Tied embeddings.** Routing reads the input embedding and never computes the LM head; the runtime loads
a bare ``Qwen3Model`` without one. ``tied_embedding`` (the runtime's setting) says which offsets adapt the
embedding: ``embed-wins`` (its own ``d[0:1024]``; the ``lm_head`` offsets are skipped) or ``lm_head-wins``
(``d[8192:9216]``, as Sakana's trainer wrote the tied matrix; the embedding offsets are skipped). Skips are
reported in :attr:`AdapterInfo.skipped` — the same convention as :func:`crucible.registry.adapter.adapt_backbone`
with the same setting, whose adapter token this module reproduces for the same vector.

Example::

    bank = AdapterBank(model, head_spec, factor_cache_dir="~/.cache/trinity-nats/svf-factors")
    plan, ref = bank.plan_vector(vector, "model_iter_60.npy")     # split + token (bases on first use)
    adapter = bank.build(plan, ref, "model_iter_60.npy")          # offsets, scales, head as tensors
    with bank.activate(bank.plan([(adapter, 12), (None, 7)])):    # 12 adapted tokens, then 7 base tokens
        out = model(input_ids=...)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from actors.model_runtime.errors import AdapterVectorInvalid, CheckpointError, HeadShapeMismatch
from actors.model_runtime.head import RoutingHead
from crucible.errors import CrucibleError
from crucible.factorization import svf_scale
from crucible.registry.adapter import AdapterPlan, adapter_ref_for, base_factors, plan_adaptation
from crucible.registry.errors import ExportError
from crucible.router_vector import load_router_vector
from schemas.sakana import AdapterRef, HeadSpec

VectorSource = str | os.PathLike[str] | NDArray[np.floating]


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter.

    Attributes:
        token: the adapter token (``AdapterRef.token``; what requests name).
        nbytes: extra memory this adapter holds (its offsets, scales and head tensors).
        source: where the vector came from (a path, or ``"array"``).
        ref: the full content address (base factors key, offsets, head, formula); ``None`` for ``base``.
        skipped: layout matrices the runtime does not adapt (``lm_head.weight``: see the module docs).
        load_s: seconds the load took (splitting, scales, head; plus factoring on a cold factor cache).
    """

    token: str
    nbytes: int
    source: str
    ref: AdapterRef | None = None
    skipped: tuple[str, ...] = ()
    load_s: float = 0.0


@dataclass(frozen=True)
class _Target:
    """One adapted base matrix: its module, basis and singular values, and where M applies."""

    name: str
    module: torch.nn.Module
    basis: torch.Tensor  # (k, k) in the compute dtype, on the model's device
    singular_values: torch.Tensor  # (k,) float64
    on_input: bool  # tall nn.Linear: x @ M before the layer; else the layer's output @ M


@dataclass(frozen=True)
class Adapter:
    """What one adapter holds: per adapted matrix its offsets ``d`` and scale ``c``, and its head."""

    info: AdapterInfo
    offsets: Mapping[str, torch.Tensor]  # (k,) compute dtype
    scales: Mapping[str, torch.Tensor]  # () compute dtype
    head: RoutingHead


@dataclass(frozen=True)
class TokenPlan:
    """Per-token adapter parameters of one forward pass over a packed row.

    ``rows`` are the (flattened) token positions that use an adapter (``None``: all of them); per matrix
    name, ``offsets`` is ``(R, k)`` (or ``(1, k)`` when one adapter covers every row) and ``scales``
    ``(R, 1)`` (or ``(1, 1)``).
    """

    rows: torch.Tensor | None
    offsets: Mapping[str, torch.Tensor]
    scales: Mapping[str, torch.Tensor]


def read_vector(source: VectorSource) -> tuple[NDArray[np.float64], str]:
    """The vector as float64 and a description of its source (``.npy``/``.safetensors`` path, or an array).

    Raises:
        AdapterVectorInvalid: unreadable file, not a finite 1-D float array.
    """
    if isinstance(source, np.ndarray):
        return np.asarray(source), "array"
    path = Path(source).expanduser()
    try:
        return load_router_vector(path), str(path)
    except (CrucibleError, OSError) as e:
        raise AdapterVectorInvalid(str(path), str(e)) from None


def svf_apply(x: torch.Tensor, basis: torch.Tensor, offsets: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ M`` for ``M = c * B diag(1 + d) B^T`` without forming M: ``c * (x + ((x @ B) * d) @ B^T)``.

    ``x`` is ``(R, k)``; ``offsets`` ``(R, k)`` or ``(1, k)``; ``scales`` ``(R, 1)`` or ``(1, 1)``. Computed in
    ``basis``'s dtype, returned in ``x``'s.
    """
    z = x.to(basis.dtype)
    return (scales * (z + ((z @ basis) * offsets) @ basis.T)).to(x.dtype)


class AdapterBank:
    """The shared SVF bases of one base model and the hooks that apply per-token adapters to it.

    The bases are factored (or read from the factor cache) and the hooks installed by the first
    :meth:`plan_vector`; :meth:`close` removes the hooks. Hooks do nothing unless a plan is active.
    """

    def __init__(self, model: torch.nn.Module, head_spec: HeadSpec, *,
                 factor_cache_dir: str | os.PathLike[str], tied_embedding: str = "embed-wins") -> None:
        self.model = model
        self.tied_embedding = tied_embedding
        self.head_spec = head_spec
        self.factor_cache_dir = Path(factor_cache_dir).expanduser()
        dtype = next(model.parameters()).dtype
        self.compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.device = next(model.parameters()).device
        self.factor_key: str | None = None
        self._targets: dict[str, _Target] = {}
        self._hooks: list[Any] = []
        self._plan: TokenPlan | None = None

    # -- shared state ------------------------------------------------------------------------------------------

    @property
    def shared_nbytes(self) -> int:
        """Bytes of the bases shared by every adapter of this base model (0 before the first adapter)."""
        return sum(t.basis.numel() * t.basis.element_size() + t.singular_values.numel() * 8
                   for t in self._targets.values())

    def _ensure_targets(self, plan: AdapterPlan) -> None:
        """Factor (or load from the cache) the base matrices and install the hooks, once."""
        names = list(plan.offsets)
        if self._targets:
            if names != list(self._targets):
                raise AdapterVectorInvalid("vector", f"adapts {names}, loaded adapters adapt {list(self._targets)}")
            return
        try:
            factor_set = base_factors(self.model, names, self.factor_cache_dir)
        except CrucibleError as e:
            raise CheckpointError(str(self.factor_cache_dir), f"cannot get the base SVF factors: {e}") from None
        targets: dict[str, _Target] = {}
        for name in names:
            module = self.model.get_submodule(name.removesuffix(".weight"))
            factors = factor_set.factors[name]
            on_input = isinstance(module, torch.nn.Linear) and factors.tall
            if not isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                raise AdapterVectorInvalid("vector", f"{name} is in a {type(module).__name__}, not a Linear/Embedding")
            basis = factors.basis.to(device=self.device, dtype=self.compute_dtype).contiguous()
            targets[name] = _Target(name, module, basis, factors.singular_values.to("cpu", torch.float64), on_input)
        for t in targets.values():
            if t.on_input:
                self._hooks.append(t.module.register_forward_pre_hook(self._input_hook(t.name)))
            else:
                self._hooks.append(t.module.register_forward_hook(self._output_hook(t.name)))
        self._targets = targets
        self.factor_key = factor_set.key

    def close(self) -> None:
        """Remove the hooks from the model (adapters built by this bank stop working)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._targets.clear()

    # -- adapters ------------------------------------------------------------------------------------------------

    def plan_vector(self, vector: NDArray[np.floating], source: str) -> tuple[AdapterPlan, AdapterRef]:
        """Split ``vector`` for this model and compute its adapter ref (factors the base model on first use).

        Raises:
            AdapterVectorInvalid: the vector does not fit the backbone or holds NaN/inf.
        """
        try:
            plan = plan_adaptation(self.model, vector, self.head_spec.rows, self.tied_embedding)
        except (ExportError, CrucibleError, ValueError, TypeError) as e:
            raise AdapterVectorInvalid(source, str(e)) from None
        self._ensure_targets(plan)
        assert self.factor_key is not None
        return plan, adapter_ref_for(self.factor_key, plan.parts, self.tied_embedding)

    def build(self, plan: AdapterPlan, ref: AdapterRef, source: str, started: float | None = None) -> Adapter:
        """Make the adapter of a planned vector (its offsets, scales and head as tensors on the model's device).

        Raises:
            AdapterVectorInvalid: offsets that erase a spectrum (``sum(S * (1 + d)) <= 0``) or a bad head.
        """
        started = time.perf_counter() if started is None else started
        offsets: dict[str, torch.Tensor] = {}
        scales: dict[str, torch.Tensor] = {}
        for name, target in self._targets.items():
            d = torch.from_numpy(np.ascontiguousarray(plan.offsets[name], dtype=np.float64))
            try:
                c = svf_scale(target.singular_values, d)
            except CrucibleError as e:
                raise AdapterVectorInvalid(source, f"{name}: {e}") from None
            offsets[name] = d.to(device=self.device, dtype=self.compute_dtype)
            scales[name] = torch.tensor(c, device=self.device, dtype=self.compute_dtype)
        try:
            head = RoutingHead.from_array(plan.parts.head, self.head_spec, source).to(self.device)
        except HeadShapeMismatch as e:
            raise AdapterVectorInvalid(source, f"head: {e}") from None
        nbytes = sum(t.numel() * t.element_size() for t in (*offsets.values(), *scales.values(), head.weight))
        info = AdapterInfo(token=ref.token, nbytes=nbytes, source=source, ref=ref, skipped=tuple(plan.skipped),
                           load_s=time.perf_counter() - started)
        return Adapter(info, offsets, scales, head)

    # -- per-pass plans ------------------------------------------------------------------------------------------

    def plan(self, segments: Sequence[tuple[Adapter | None, int]]) -> TokenPlan | None:
        """The plan of a packed row of ``(adapter or None for base, token count)`` segments, in order.

        ``None`` when no token uses an adapter (the pass then runs the base model untouched).
        """
        used = [a for a, n in segments if a is not None and n > 0]
        if not used:
            return None
        distinct = list({id(a): a for a in used}.values())
        if len(distinct) == 1 and all(a is not None for a, n in segments if n > 0):
            only = distinct[0]
            return TokenPlan(None, {k: v[None] for k, v in only.offsets.items()},
                             {k: v.reshape(1, 1) for k, v in only.scales.items()})
        index = {id(a): i for i, a in enumerate(distinct)}
        rows: list[torch.Tensor] = []
        which: list[int] = []
        start = 0
        for a, n in segments:
            if a is not None and n > 0:
                rows.append(torch.arange(start, start + n))
                which.extend([index[id(a)]] * n)
            start += n
        pick = torch.tensor(which, device=self.device)
        offsets = {k: torch.stack([a.offsets[k] for a in distinct])[pick] for k in self._targets}
        scales = {k: torch.stack([a.scales[k] for a in distinct])[pick][:, None] for k in self._targets}
        return TokenPlan(torch.cat(rows).to(self.device), offsets, scales)

    @contextmanager
    def activate(self, plan: TokenPlan | None) -> Iterator[None]:
        """Apply ``plan`` to the forward passes run inside the block (``None``: base weights only)."""
        self._plan = plan
        try:
            yield
        finally:
            self._plan = None

    def _adapt(self, name: str, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan
        assert plan is not None
        t = self._targets[name]
        flat = x.reshape(-1, x.shape[-1])
        d, c = plan.offsets[name], plan.scales[name]
        if plan.rows is None:
            return svf_apply(flat, t.basis, d, c).reshape(x.shape)
        out = flat.clone()
        out[plan.rows] = svf_apply(flat[plan.rows], t.basis, d, c)
        return out.reshape(x.shape)

    def _input_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self._plan is None:
                return None
            return (self._adapt(name, args[0]), *args[1:])

        return hook

    def _output_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self._plan is None:
                return None
            return self._adapt(name, output)

        return hook
