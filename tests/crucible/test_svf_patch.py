"""crucible.svf_patch on a tiny random Qwen3 (28 layers, tied embeddings) built with transformers.

The nine TRINITY paths resolve in a real ``Qwen3ForCausalLM``; offsets are random with one value per
singular value of each tiny matrix. The tied-weight policies are checked value by value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from transformers import Qwen3Config, Qwen3ForCausalLM

from crucible import errors
from crucible.factor_cache import FactorCache
from crucible.factorization import SVF_FORMULA_ID, svf_reconstruct
from crucible.hashing import tensor_sha256
from crucible.router_vector import TRINITY_SVF_SLOTS
from crucible.svf_patch import TiedWeights, apply_svf_adapter

NAMES = [slot[0] for slot in TRINITY_SVF_SLOTS]
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


def tiny_qwen3() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=96,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=28,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config)  # no dropout in Qwen3: train/eval mode does not matter here


def random_offsets(model: Qwen3ForCausalLM) -> dict[str, NDArray[np.float64]]:
    rng = np.random.default_rng(26)
    return {name: rng.normal(0, 0.2, min(model.get_parameter(name).shape)) for name in NAMES}


def test_untie_adapts_each_matrix_with_its_own_offsets(tmp_path: Path) -> None:
    model = tiny_qwen3()
    offsets = random_offsets(model)
    base = {name: model.get_parameter(name).detach().clone() for name in NAMES}
    factor_set = FactorCache(tmp_path).get_or_compute([(name, model.get_parameter(name)) for name in NAMES])
    assert factor_set.factorizations == 8  # embed and lm_head are one tensor

    with pytest.raises(errors.AliasedParameter, match="TiedWeights"):
        apply_svf_adapter(model, offsets, factor_set.factors, adapter_ref="sakana/trinity@test")
    assert torch.equal(model.get_parameter(EMBED).detach(), base[EMBED])  # refused before any write

    result = apply_svf_adapter(
        model, offsets, factor_set.factors, adapter_ref="sakana/trinity@test", tied=TiedWeights.UNTIE
    )
    assert [r.path for r in result.receipts] == NAMES and not result.skipped
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    for receipt in result.receipts:
        expected = svf_reconstruct(base[receipt.path], factor_set.factors[receipt.path], offsets[receipt.path])
        assert torch.equal(model.get_parameter(receipt.path).detach(), expected)
        assert receipt.formula_id == SVF_FORMULA_ID and receipt.adapter_ref == "sakana/trinity@test"
        assert receipt.sha256_before == tensor_sha256(base[receipt.path])
        assert receipt.sha256_after != receipt.sha256_before and receipt.aliases == ()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert bool(torch.isfinite(logits).all())


def test_first_wins_adapts_shared_storage_with_the_embedding_offsets(tmp_path: Path) -> None:
    model = tiny_qwen3()
    offsets = random_offsets(model)
    base_embed = model.get_parameter(EMBED).detach().clone()
    factors = FactorCache(tmp_path).get_or_compute([(name, model.get_parameter(name)) for name in NAMES]).factors
    result = apply_svf_adapter(
        model, offsets, factors, adapter_ref="sakana/trinity@test", tied=TiedWeights.FIRST_WINS
    )
    assert [r.path for r in result.receipts] == NAMES[:-1]
    assert dict(result.skipped) == {LM_HEAD: EMBED}
    assert result.receipts[0].aliases == (LM_HEAD,)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.get_parameter(EMBED).detach(), svf_reconstruct(base_embed, factors[EMBED], offsets[EMBED]))


def test_state_dict_target_and_missing_entries(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    state = {"a.weight": torch.randn(12, 5, generator=gen), "b.weight": torch.randn(5, 9, generator=gen)}
    base = {k: v.clone() for k, v in state.items()}
    factors = FactorCache(tmp_path).get_or_compute(list(state.items())).factors
    offsets = {"a.weight": np.full(5, 0.1), "b.weight": np.linspace(-0.3, 0.3, 5)}
    result = apply_svf_adapter(state, offsets, factors, adapter_ref="x")
    assert len(result.receipts) == 2
    assert torch.equal(state["b.weight"], svf_reconstruct(base["b.weight"], factors["b.weight"], offsets["b.weight"]))
    with pytest.raises(errors.IncompleteAdapter, match=r"c\.weight: no offsets or factors"):
        apply_svf_adapter(state, offsets, factors, adapter_ref="x", order=["c.weight"])
