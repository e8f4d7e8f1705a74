"""The tied-embedding convention (``embed-wins`` / ``lm_head-wins``) on the tiny checkpoint, in both adapter paths.

* which offsets matter: under ``lm_head-wins`` the embedding offsets ``d[0:k]`` have no effect and the
  ``lm_head`` offsets do; under ``embed-wins`` the other way round (patched weights compared exactly);
* the patched path (``adapt_backbone``) and the cheap adapter (``RouterEngine.load_adapter``) agree for each
  convention (cosine >= 0.99999 of the position -2 state, same argmax, same adapter token), and the two
  conventions give different tokens and different states;
* ``TiedWeights.LAST_WINS`` on a tied ``Qwen3ForCausalLM``: the shared matrix is SVF(E, lm_head offsets).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from transformers import Qwen3ForCausalLM

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from crucible.registry.adapter import EMBED, LM_HEAD, adapt_backbone, base_factors, plan_adaptation
from crucible.svf_patch import TiedWeights, apply_svf_adapter
from schemas.routing import RouteRequest
from tests.model_runtime.adapter_vectors import patched_engine, random_adapter_vector
from tests.model_runtime.support import argmaxes, cosine
from tests.model_runtime.transcripts import random_transcript

CONVENTIONS = ("embed-wins", "lm_head-wins")


def _ranges(engine: RouterEngine, vector: np.ndarray) -> tuple[slice, slice]:
    """Where the embedding's and lm_head's offsets sit in ``vector``."""
    parts = plan_adaptation(engine.model, vector, engine.head.spec.rows).parts
    k_e, k_l = len(parts.offsets[EMBED]), len(parts.offsets[LM_HEAD])
    end = len(vector) - engine.head.spec.size
    return slice(0, k_e), slice(end - k_l, end)


@pytest.fixture
def plain(tiny_checkpoint: Path, tokenizer: RouterTokenizer, tmp_path: Path) -> RouterEngine:
    settings = ModelRuntimeSettings(factor_cache_dir=str(tmp_path / "f"), cache_max_tokens=0, dtype="float32")
    return RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_which_offsets_reach_the_embedding(plain: RouterEngine, tmp_path: Path, convention: str) -> None:
    v = random_adapter_vector(plain, 5)
    emb, lm = _ranges(plain, v)
    winner, loser = (emb, lm) if convention == "embed-wins" else (lm, emb)

    def embedding(vector: np.ndarray) -> torch.Tensor:
        model = copy.deepcopy(plain.model)
        result = adapt_backbone(model, vector, factor_cache_dir=tmp_path / "f", tied_embedding=convention)
        skipped = EMBED if convention == "lm_head-wins" else LM_HEAD
        assert skipped in result.skipped
        return model.embed_tokens.weight.detach().clone()

    base = embedding(v)
    moved_loser, moved_winner = v.copy(), v.copy()
    moved_loser[loser] += 0.3
    moved_winner[winner] += 0.3
    assert torch.equal(embedding(moved_loser), base)  # the losing offsets have no effect
    assert not torch.allclose(embedding(moved_winner), base)
    assert not torch.allclose(base, plain.model.embed_tokens.weight)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_patched_and_cheap_adapter_agree(plain: RouterEngine, tmp_path: Path, convention: str) -> None:
    settings = msgspec.structs.replace(plain.settings, tied_embedding=convention)
    cheap = RouterEngine(plain.model, plain.tokenizer, plain.head, settings)
    v = random_adapter_vector(plain, 11)
    ref_engine, adaptation = patched_engine(plain, v, tmp_path / "f", tied_embedding=convention)
    info = cheap.load_adapter(v)
    assert info.token == adaptation.adapter_ref.token
    assert (EMBED if convention == "lm_head-wins" else LM_HEAD) in info.skipped
    rng = random.Random(3)
    for i in range(25):
        msgs = random_transcript(rng)
        got = cheap.route(RouteRequest(f"c{i}", 0, msgs, adapter=info.token))
        want = ref_engine.route(RouteRequest(f"r{i}", 0, msgs))
        assert cosine(torch.tensor(got.logits), torch.tensor(want.logits)) >= 0.99999
        assert argmaxes(got.logits) == argmaxes(want.logits)


def test_conventions_differ(plain: RouterEngine, tmp_path: Path) -> None:
    v = random_adapter_vector(plain, 12)
    engines = {c: RouterEngine(plain.model, plain.tokenizer, plain.head,
                               msgspec.structs.replace(plain.settings, tied_embedding=c)) for c in CONVENTIONS}
    tokens = {c: e.load_adapter(v).token for c, e in engines.items()}
    assert tokens["embed-wins"] != tokens["lm_head-wins"]
    msgs = random_transcript(random.Random(9), (6, 12))
    out = {c: engines[c].route(RouteRequest("x", 0, msgs, adapter=tokens[c])).logits for c in CONVENTIONS}
    assert out["embed-wins"] != out["lm_head-wins"]


def test_last_wins_on_a_tied_causal_lm(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lm = Qwen3ForCausalLM.from_pretrained(str(tiny_checkpoint), dtype=torch.float32)
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    names = ["model.embed_tokens.weight", "lm_head.weight"]
    factors = base_factors(lm, names, tmp_path / "f").factors
    rng = np.random.default_rng(0)
    k = len(factors[names[0]].singular_values)
    d_embed, d_lm = rng.normal(0, 0.2, k), rng.normal(0, 0.2, k)
    last = copy.deepcopy(lm)
    applied = apply_svf_adapter(last, {names[0]: d_embed, names[1]: d_lm}, factors, adapter_ref="t",
                                order=names, tied=TiedWeights.LAST_WINS)
    assert dict(applied.skipped) == {names[0]: names[1]}
    only_lm = copy.deepcopy(lm)
    apply_svf_adapter(only_lm, {names[0]: d_lm}, factors, adapter_ref="t", order=names[:1],
                      tied=TiedWeights.FIRST_WINS)
    assert torch.equal(last.model.embed_tokens.weight, only_lm.model.embed_tokens.weight)
    assert last.lm_head.weight.data_ptr() == last.model.embed_tokens.weight.data_ptr()
