"""Helpers for adapter tests: seeded random TRINITY vectors for an engine, and the plainly patched reference.

Usable from any test: ``random_adapter_vector(engine, seed=1)`` gives a vector of the right length for the
engine's backbone (offsets of the nine layout matrices, then a ``{10, hidden}`` head);
``patched_engine(engine, vector, factor_cache_dir)`` is the reference the cheap-adapter path must match: a
deep copy of the engine's backbone SVF-patched in place by :func:`crucible.registry.adapter.adapt_backbone`,
serving it as ``base`` with the vector's head.
"""

from __future__ import annotations

import copy
import os

import msgspec
import numpy as np
from numpy.typing import NDArray

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.head import RoutingHead
from crucible.registry.adapter import Adaptation, adapt_backbone, synthetic_router_vector


def random_adapter_vector(engine: RouterEngine, seed: int, *, offset_std: float = 0.2) -> NDArray[np.float64]:
    """A seeded random router vector that fits ``engine``'s backbone and head."""
    return synthetic_router_vector(engine.model, seed=seed, offset_std=offset_std, num_rows=engine.head.spec.rows)


def patched_engine(engine: RouterEngine, vector: NDArray[np.floating], factor_cache_dir: str | os.PathLike[str],
                   tied_embedding: str = "embed-wins") -> tuple[RouterEngine, Adaptation]:
    """A base-only engine over a deep copy of ``engine``'s backbone with ``vector`` applied by ``adapt_backbone``.

    The copy's prefix cache is off and it loads no adapters; its ``base`` is the patched model + the vector's head.
    """
    model = copy.deepcopy(engine.model)
    adaptation = adapt_backbone(model, vector, factor_cache_dir=factor_cache_dir, tied_embedding=tied_embedding)
    head = RoutingHead.from_array(adaptation.head, engine.head.spec, "patched reference")
    settings = msgspec.structs.replace(engine.settings, cache_max_tokens=0, adapter_vectors=[], adapter="base")
    return RouterEngine(model, engine.tokenizer, head, settings), adaptation
