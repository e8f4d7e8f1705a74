"""Apply a TRINITY router vector's SVF offsets to a loaded Qwen3 routing backbone, in place.

The vector is ``[offsets for the nine matrices of the layout][head rows*cols]`` (see
:mod:`crucible.registry.layout`). Names are matched to the module's parameters with or without the
``model.`` prefix, so a bare ``Qwen3Model`` (what the routing engine loads) and a ``Qwen3ForCausalLM``
both work.

**Tied embeddings policy.** Routing reads the *input* embedding and never the LM head. A bare
``Qwen3Model`` has no ``lm_head``: its offsets are reported as skipped. On a model whose ``lm_head`` is
tied to ``embed_tokens`` the shared storage is adapted once with the embedding's offsets
(``TiedWeights.FIRST_WINS``) and ``lm_head`` is reported as skipped. The exported bundle
(:mod:`crucible.registry.export`) instead writes both matrices, each with its own offsets.

Example::

    result = adapt_backbone(engine.model, vector, factor_cache_dir="~/.cache/trinity-nats/svf-factors")
    result.adapter_ref.token, result.skipped
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from crucible.errors import RouterVectorError
from crucible.factor_cache import FactorCache
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


def _param_names(module: torch.nn.Module) -> dict[str, str]:
    """HF ``Qwen3ForCausalLM`` name -> this module's parameter name."""
    names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    out: dict[str, str] = {}
    for n in names:
        out[n] = n
        if not n.startswith(("model.", "lm_head.")):
            out[f"model.{n}"] = n
    return out


def adapt_backbone(module: torch.nn.Module, vector: NDArray[np.floating], *, factor_cache_dir: str | os.PathLike[str],
                   progress: Progress | None = None) -> Adaptation:
    """SVF-adapt ``module``'s TRINITY matrices with ``vector``'s offsets (in place); returns the head too.

    Factors of the base matrices are computed once per set of base weights and cached under
    ``factor_cache_dir`` (the expensive step: minutes for the 151936 x 1024 embedding on a CPU).

    Raises:
        ExportError: the vector does not fit the backbone's shapes.
        crucible errors from factorization or patching.
    """
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
    parts = split_for(vector, shapes, num_layers, hidden)
    offsets: dict[str, NDArray[np.float64]] = {}
    skipped: dict[str, str] = {}
    for hf_name, d in parts.offsets.items():
        if hf_name in mapping:
            offsets[mapping[hf_name]] = d
        else:
            skipped[hf_name] = "not in this module (routing reads the input embedding; no LM head is loaded)"
    named = [(own, params[own].detach()) for own in offsets]
    if progress is not None:
        progress(f"SVF factors of {len(named)} base matrices (cached under {factor_cache_dir})")
    cache = FactorCache(Path(factor_cache_dir).expanduser())
    factor_set = cache.get_or_compute(named)
    ref = AdapterRef.build(factor_set.key, parts.offsets_sha256, parts.head_sha256, SVF_FORMULA)
    if progress is not None:
        how = "loaded from cache" if factor_set.from_cache else f"computed ({factor_set.factorizations})"
        progress(f"factors {how}; applying SVF adapter {ref.token}")
    with torch.no_grad():
        applied = apply_svf_adapter(module, offsets, factor_set.factors, adapter_ref=ref.token, order=list(offsets),
                                    tied=TiedWeights.FIRST_WINS)
    skipped.update({k: f"tied to {v}: adapted once with {v}'s offsets" for k, v in applied.skipped.items()})
    return Adaptation(ref, applied.receipts, skipped, parts.head, factor_set.from_cache)
