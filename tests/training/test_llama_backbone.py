"""The runtime engine serves a Llama-family backbone (SmolLM2's architecture) as well as Qwen3.

A tiny random LlamaForCausalLM (hidden 48, 2 layers, the Qwen vocabulary so the default tokenizer fits) is
saved as a checkpoint folder; the engine must read its final-norm state at position -2, equal to transformers'
own ``LlamaModel`` on ``ids[:-1]``, singly and in a batch of several transcripts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import CheckpointError
from actors.model_runtime.formatting import router_text
from config.model_runtime import ModelRuntimeSettings
from crucible.training.episodes import HiddenMemo
from crucible.training.layout import make_layout
from crucible.training.setup import layout_for
from schemas.common import Message
from schemas.routing import RouteRequest


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=151936, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


def test_engine_routes_with_a_llama_backbone(llama_dir: Path) -> None:
    engine = RouterEngine.load(ModelRuntimeSettings(checkpoint_dir=str(llama_dir), dtype="float32"))
    assert type(engine.model).__name__ == "LlamaModel" and engine.head.spec.cols == 48
    reference = LlamaModel.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    transcripts = [[Message(role="user", content="What is 12 times 3?")],
                   [Message(role="user", content="Capital of Chile?"), Message(role="assistant", content="Santiago")]]
    memo = HiddenMemo(engine, batch=2)
    states = memo.states([memo.text(m) for m in transcripts])  # one batch of two
    for m, got in zip(transcripts, states, strict=True):
        ids = engine.tokenizer.encode(router_text(m))
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([ids[:-1]])).last_hidden_state[0, -1].double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        logits = engine.route(RouteRequest(request_id="r", turn=0, messages=m))
        np.testing.assert_allclose(logits.agent_logits, engine.head.weight[:7].double().numpy() @ want,
                                   rtol=1e-3, atol=1e-3)
    assert layout_for("head-only", {"kind": "dir", "path": str(llama_dir)}, "elixir-port") == \
        make_layout("head-only", n_agents=7, hidden=48)


def test_engine_refuses_other_model_types(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="gpt2"):
        RouterEngine.load(ModelRuntimeSettings(checkpoint_dir=str(tmp_path)))
