"""Apply a TRINITY router vector's SVF offsets to a loaded Qwen3 routing backbone, in place.

The vector is ``[offsets for the nine matrices of the layout][head rows*cols]`` (see
:mod:`crucible.registry.layout`). Names are matched to the module's parameters with or without the
``model.`` prefix, so a bare ``Qwen3Model`` (what the routing engine loads) and a ``Qwen3ForCausalLM``
both work.

**Tied embeddings convention** (``tied_embedding``, an explicit setting; the routing profiles pick the default).
Qwen3-0.6B ties ``lm_head`` to ``embed_tokens`` (one matrix E) but the vector holds offsets for both; routing
reads only the *input* embedding, so the convention decides what the router sees:

* ``embed-wins`` (the ``elixir-port`` profile): E is adapted with the embedding's offsets ``d[0:1024]``; the
  ``lm_head`` offsets are reported as skipped (a bare ``Qwen3Model`` has no ``lm_head``; on a tied model the
  shared storage is adapted once, ``TiedWeights.FIRST_WINS``).
* ``lm_head-wins`` (the ``sakana`` profile): E becomes SVF(E, ``d[8192:9216]``), as Sakana's trainer
  (``SVDParameterManager.load_model_weights`` copies the composed weights in state-dict order, ``lm_head``
  last, into the tied parameter) and the Elixir port's parity script left it; the embedding offsets
  ``d[0:1024]`` have no effect and are reported as skipped.

Both conventions factor the same base matrix E. The convention is part of the adapter's content address
(its ``formula``: ``svf-energy-v1`` for embed-wins, ``svf-energy-v1-lm_head-wins`` otherwise), so one vector
gets a different adapter token under each. An untied model (its own ``lm_head`` storage) adapts each matrix
with its own offsets under either convention.

The model runtime's cheap adapters (``actors/model_runtime/adapters.py``) apply the same vector without
patching: they use :func:`plan_adaptation`, :func:`base_factors` and :func:`adapter_ref_for` from here, so
the same vector gets the same adapter token and the same tied-embedding policy in both paths.

Example::

    result = adapt_backbone(engine.model, vector, factor_cache_dir="~/.cache/trinity-nats/svf-factors")
    result.adapter_ref.token, result.skipped
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from crucible.errors import RouterVectorError
from crucible.factor_cache import FactorCache, FactorSet
from crucible.registry.errors import ExportError
from crucible.registry.layout import trinity_slots
from crucible.router_vector import split_router_vector
from crucible.svf_patch import TiedWeights, apply_svf_adapter
from crucible.tensor_patch import PatchReceipt
from schemas.sakana import SVF_FORMULA, AdapterRef

Progress = Callable[[str], None]


def array_sha256(values: NDArray[np.floating]) -> str:
    """sha256 of an array's float64 little-endian bytes (row-major)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class VectorParts:
    """A router vector split for a given backbone: offsets per HF name, the head, and their digests."""

    offsets: Mapping[str, NDArray[np.float64]]
    head: NDArray[np.float64]
    offsets_sha256: str
    head_sha256: str


def split_for(vector: NDArray[np.floating], shapes: Mapping[str, tuple[int, int]], num_layers: int,
              hidden: int, num_rows: int = 10) -> VectorParts:
    """Split ``vector`` with the TRINITY layout of a backbone of these shapes (raises on a length mismatch)."""
    slots = trinity_slots(shapes, num_layers)
    try:
        parts = split_router_vector(np.asarray(vector, dtype=np.float64), slots, head_shape=(num_rows, hidden))
    except RouterVectorError as e:
        raise ExportError(f"the router vector does not fit this backbone: {e}") from None
    flat = np.concatenate([parts.offsets[name] for name, _, _, _ in slots])
    return VectorParts(parts.offsets, parts.head, array_sha256(flat), array_sha256(parts.head))


@dataclass(frozen=True, slots=True)
class Adaptation:
    """What :func:`adapt_backbone` did."""

    adapter_ref: AdapterRef
    receipts: tuple[PatchReceipt, ...]
    skipped: Mapping[str, str]
    head: NDArray[np.float64]
    factors_from_cache: bool


@dataclass(frozen=True, slots=True)
class AdapterPlan:
    """How a router vector maps onto one module (see :func:`plan_adaptation`).

    Attributes:
        parts: the split vector and its digests.
        offsets: SVF offsets per *module* parameter name, in layout order, for the matrices the module holds.
        skipped: HF names of the layout the module does not hold (the LM head of a bare ``Qwen3Model``),
            with the reason.
    """

    parts: VectorParts
    offsets: Mapping[str, NDArray[np.float64]]
    skipped: Mapping[str, str]


def _param_names(module: torch.nn.Module) -> dict[str, str]:
    """HF ``Qwen3ForCausalLM`` name -> this module's parameter name."""
    names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    out: dict[str, str] = {}
    for n in names:
        out[n] = n
        if not n.startswith(("model.", "lm_head.")):
            out[f"model.{n}"] = n
    return out


def _backbone_shapes(module: torch.nn.Module) -> tuple[dict[str, str], dict[str, tuple[int, int]], int, int]:
    """HF name -> own name, HF name -> shape (``lm_head`` added when tied/absent), layers, hidden size."""
    config = getattr(module, "config", None)
    num_layers = int(getattr(config, "num_hidden_layers", 0))
    hidden = int(getattr(config, "hidden_size", 0))
    if num_layers < 1 or hidden < 1:
        raise ExportError("the module has no Qwen3 config (num_hidden_layers, hidden_size)")
    mapping = _param_names(module)
    params = dict(module.named_parameters(remove_duplicate=False))
    shapes: dict[str, tuple[int, int]] = {}
    for hf_name, own in mapping.items():
        t = params[own]
        if t.dim() == 2:
            shapes[hf_name] = (int(t.shape[0]), int(t.shape[1]))
    if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes:
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]  # tied or absent: same shape
    return mapping, shapes, num_layers, hidden


EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIED_EMBEDDINGS = ("embed-wins", "lm_head-wins")


def tied_formula(tied_embedding: str) -> str:
    """The adapter formula id of a tied-embedding convention (part of the adapter's content address)."""
    if tied_embedding not in TIED_EMBEDDINGS:
        raise ExportError(f"tied_embedding must be one of {', '.join(TIED_EMBEDDINGS)}, got {tied_embedding!r}")
    return SVF_FORMULA if tied_embedding == "embed-wins" else f"{SVF_FORMULA}-lm_head-wins"


def _lm_head_shares_embedding(module: torch.nn.Module, mapping: Mapping[str, str]) -> bool:
    """True when the module has no own ``lm_head`` storage (absent, or tied to the embedding)."""
    if LM_HEAD not in mapping:
        return True
    params = dict(module.named_parameters(remove_duplicate=False))
    return params[mapping[LM_HEAD]].data_ptr() == params[mapping[EMBED]].data_ptr()


def plan_adaptation(module: torch.nn.Module, vector: NDArray[np.floating], num_rows: int = 10,
                    tied_embedding: str = "embed-wins") -> AdapterPlan:
    """Split ``vector`` for ``module`` and name its offsets by the module's own parameters.

    ``tied_embedding`` picks which offsets adapt a tied (or LM-head-less) embedding (see the module docs).

    Raises:
        ExportError: the module has no Qwen3 config, the vector does not fit its shapes, or an unknown convention.
    """
    tied_formula(tied_embedding)
    mapping, shapes, num_layers, hidden = _backbone_shapes(module)
    parts = split_for(vector, shapes, num_layers, hidden, num_rows)
    offsets: dict[str, NDArray[np.float64]] = {}
    skipped: dict[str, str] = {}
    shared = EMBED in mapping and _lm_head_shares_embedding(module, mapping)
    for hf_name, d in parts.offsets.items():
        if shared and tied_embedding == "lm_head-wins" and hf_name == EMBED:
            offsets[mapping[EMBED]] = parts.offsets[LM_HEAD]
            skipped[EMBED] = "lm_head-wins: the tied embedding is adapted with lm_head's offsets; these have no effect"
        elif shared and tied_embedding == "lm_head-wins" and hf_name == LM_HEAD:
            if hf_name in mapping:
                skipped[LM_HEAD] = f"tied to {EMBED}: adapted through it with these offsets (lm_head-wins)"
        elif hf_name in mapping:
            offsets[mapping[hf_name]] = d
        else:
            skipped[hf_name] = "not in this module (routing reads the input embedding; no LM head is loaded)"
    return AdapterPlan(parts, offsets, skipped)


def base_factors(module: torch.nn.Module, names: Sequence[str], factor_cache_dir: str | os.PathLike[str]) -> FactorSet:
    """SVF factors of ``module``'s *current* parameters ``names`` (own names, layout order), via the on-disk cache.

    The key hashes those weights, so call it on unadapted weights and with the same names to get the same
    key (and adapter tokens) as :func:`adapt_backbone`.
    """
    params = dict(module.named_parameters(remove_duplicate=False))
    return FactorCache(Path(factor_cache_dir).expanduser()).get_or_compute([(n, params[n].detach()) for n in names])


def adapter_ref_for(factor_key: str, parts: VectorParts, tied_embedding: str = "embed-wins") -> AdapterRef:
    """The content address of an adapter: base factors key, offsets, head and formula (with the convention)."""
    return AdapterRef.build(factor_key, parts.offsets_sha256, parts.head_sha256, tied_formula(tied_embedding))


def synthetic_router_vector(module: torch.nn.Module, *, seed: int, offset_std: float = 0.2, head_std: float = 1.0,
                            num_rows: int = 10) -> NDArray[np.float64]:
    """A seeded random vector of the TRINITY layout for ``module`` (normal offsets, then a normal head).

    Synthetic: for tests and benchmarks of the adapter machinery on random-weight checkpoints.
    """
    _, shapes, num_layers, hidden = _backbone_shapes(module)
    total = sum(end - start for _, _, start, end in trinity_slots(shapes, num_layers))
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, offset_std, total), rng.normal(0.0, head_std, num_rows * hidden)])


def adapt_backbone(module: torch.nn.Module, vector: NDArray[np.floating], *, factor_cache_dir: str | os.PathLike[str],
                   progress: Progress | None = None, tied_embedding: str = "embed-wins") -> Adaptation:
    """SVF-adapt ``module``'s TRINITY matrices with ``vector``'s offsets (in place); returns the head too.

    Factors of the base matrices are computed once per set of base weights and cached under
    ``factor_cache_dir`` (the expensive step: minutes for the 151936 x 1024 embedding on a CPU).

    Raises:
        ExportError: the vector does not fit the backbone's shapes.
        crucible errors from factorization or patching.
    """
    plan = plan_adaptation(module, vector, tied_embedding=tied_embedding)
    offsets = dict(plan.offsets)
    skipped = dict(plan.skipped)
    if progress is not None:
        progress(f"SVF factors of {len(offsets)} base matrices (cached under {factor_cache_dir})")
    factor_set = base_factors(module, list(offsets), factor_cache_dir)
    ref = adapter_ref_for(factor_set.key, plan.parts, tied_embedding)
    if progress is not None:
        how = "loaded from cache" if factor_set.from_cache else f"computed ({factor_set.factorizations})"
        progress(f"factors {how}; applying SVF adapter {ref.token}")
    with torch.no_grad():
        applied = apply_svf_adapter(module, offsets, factor_set.factors, adapter_ref=ref.token, order=list(offsets),
                                    tied=TiedWeights.FIRST_WINS)
    skipped.update({k: f"tied to {v}: adapted once with {v}'s offsets (embed-wins)"
                    for k, v in applied.skipped.items()})
    return Adaptation(ref, applied.receipts, skipped, plan.parts.head, factor_set.from_cache)
