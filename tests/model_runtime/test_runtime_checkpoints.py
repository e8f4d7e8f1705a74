"""Synthetic checkpoints: labelled, deterministic, independent of sharding, loadable by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from actors.model_runtime.checkpoints import (
    build_checkpoint,
    ensure_checkpoint,
    qwen3_0_6b_config,
    qwen3_tiny_config,
    read_metadata,
    safetensors_files,
)
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import CheckpointError
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def test_full_size_config_has_qwen3_0_6b_shapes() -> None:
    c = qwen3_0_6b_config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
            c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (1024, 28, 16, 8, 128, 3072, 151936, True)


def test_sharded_and_single_file_builds_hold_identical_weights(tmp_path: Path) -> None:
    cfg = qwen3_tiny_config(vocab_size=512)
    single = build_checkpoint(tmp_path / "single", cfg, seed=3)
    sharded = build_checkpoint(tmp_path / "sharded", cfg, seed=3, max_shard_bytes=64 * 1024)
    assert [f.name for f in safetensors_files(single)] == ["model.safetensors"]
    assert len(list(safetensors_files(sharded))) > 2
    a, b = _tensors(single), _tensors(sharded)
    assert a.keys() == b.keys() and "lm_head.weight" not in a  # tied: stored once, as embed_tokens
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _tensors(build_checkpoint(tmp_path / "other", cfg, seed=4))
    assert not torch.equal(a["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    emb = a["model.embed_tokens.weight"]
    assert abs(float(emb.std()) - 0.02) < 0.002 and torch.equal(a["model.norm.weight"], torch.ones(64))


def test_checkpoint_is_labelled_synthetic(tiny_checkpoint: Path) -> None:
    meta = read_metadata(tiny_checkpoint)
    assert meta["synthetic"] is True and meta["seed"] == 7 and meta["preset"] == "qwen3-tiny-synthetic"
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["trinity_synthetic"]["synthetic"] is True
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as st:
        assert st.metadata()["trinity_synthetic"] == "true"


def test_sharded_checkpoint_routes_like_single_file(tmp_path: Path, tokenizer: RouterTokenizer) -> None:
    cfg = qwen3_tiny_config()
    settings = ModelRuntimeSettings()
    req = RouteRequest("r", 0, [Message("user", "shard me")])
    outs = []
    for name, shard in (("one", None), ("many", 4 * 1024 * 1024)):
        path = build_checkpoint(tmp_path / name, cfg, seed=11, max_shard_bytes=shard)
        outs.append(RouterEngine.load(settings, checkpoint_dir=path, tokenizer=tokenizer).route(req).logits)
    assert outs[0] == outs[1]


def test_ensure_checkpoint_builds_once(tmp_path: Path) -> None:
    first = ensure_checkpoint("qwen3-tiny-synthetic", tmp_path, seed=1)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_checkpoint("qwen3-tiny-synthetic", tmp_path, seed=1) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.tmp-*"))


def test_missing_checkpoint_is_actionable(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        RouterEngine.load(ModelRuntimeSettings(checkpoint_dir=str(tmp_path)))
