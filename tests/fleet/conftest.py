"""Fixtures of the fleet tests: two tiny synthetic base models (different seeds), adapter vectors for them,
and in-process runtime engines. Checkpoints and factor caches live in the session's temporary folder."""

from __future__ import annotations

import numpy as np
import pytest

from actors.model_runtime.checkpoints import ensure_checkpoint
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.identity import base_model_identity
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from crucible.registry.adapter import synthetic_router_vector
from tests.fleet.support import BaseModel, EngineMaker, Fleet, engine_maker

TINY = "qwen3-tiny-synthetic"


@pytest.fixture(scope="session")
def fleet_tokenizer() -> RouterTokenizer:
    """The real Qwen tokenizer."""
    return RouterTokenizer.load()


@pytest.fixture(scope="session")
def fleet_models(tmp_path_factory: pytest.TempPathFactory, fleet_tokenizer: RouterTokenizer) -> Fleet:
    """Base A (seed 1) with adapters from vector seeds 11 and 12, base B (seed 2) with one from seed 13."""
    root = tmp_path_factory.mktemp("fleet")
    factors = root / "factors"
    bases = []
    for seed, vector_seeds in ((1, (11, 12)), (2, (13,))):
        ckpt = ensure_checkpoint(TINY, root / "ckpt", seed=seed)
        engine = RouterEngine.load(ModelRuntimeSettings(checkpoint_dir=str(ckpt), factor_cache_dir=str(factors)),
                                   tokenizer=fleet_tokenizer)
        identity = base_model_identity(engine.model, engine.head.weight)
        adapters = {}
        for vs in vector_seeds:
            path = root / f"vector-base{seed}-{vs}.npy"
            np.save(path, synthetic_router_vector(engine.model, seed=vs, num_rows=engine.head.spec.rows))
            adapters[engine.load_adapter(str(path)).token] = path
        bases.append(BaseModel(seed, ckpt, identity, adapters))
    return Fleet(bases[0], bases[1], factors)


@pytest.fixture
def make_engine(fleet_models: Fleet, fleet_tokenizer: RouterTokenizer) -> EngineMaker:
    """Build an engine on base ``a`` or ``b`` (see :func:`engine_maker`)."""
    return engine_maker(fleet_models, fleet_tokenizer)
