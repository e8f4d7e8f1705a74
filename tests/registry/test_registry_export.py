"""Adapter application and bundle export on the tiny synthetic checkpoint, checked against dense SVD."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3Model

from crucible.factorization import reference_svf_reconstruct
from crucible.registry.adapter import adapt_backbone
from crucible.registry.errors import ExportError
from crucible.registry.export import export_bundle
from crucible.registry.layout import elixir_name, trinity_names
from crucible.registry.lineage import read_lineage
from crucible.registry.pins import load_pin
from crucible.registry.verify import verify_directory
from schemas.sakana import SakanaManifest

#: float64 factors, float32 storage: the adapted weights agree with a dense float64 SVD to float32 rounding.
ATOL = 1e-6


def test_layout_names_follow_trinity() -> None:
    names = trinity_names(28)
    assert names[1] == "model.layers.26.self_attn.q_proj.weight" and len(names) == 9
    assert elixir_name(names[7]) == "decoder.blocks.26.ffn.output.kernel"
    anchors = Path(__file__).resolve().parents[3] / "shared" / "anchors"
    manifest = msgspec.json.decode((anchors / "sakana_python_reference_manifest.json").read_bytes(),
                                   type=SakanaManifest)
    assert [t.source_name for t in manifest.selected_tensors] == list(names)
    assert [elixir_name(t.source_name) for t in manifest.selected_tensors] == \
        [t.elixir_name for t in manifest.selected_tensors]


def test_export_bundle_matches_dense_reference(tmp_path: Path, tiny_checkpoint: Path, tiny_vector: Path) -> None:
    out = tmp_path / "bundle"
    lines: list[str] = []
    result = export_bundle(tiny_checkpoint, tiny_vector, out, repo_id="me/tiny-adapted", revision="v0",
                           factor_cache_dir=tmp_path / "factors", lineage_cache_dir=tmp_path / "registry",
                           progress=lines.append)
    manifest = msgspec.json.decode((out / "manifest.json").read_bytes(), type=SakanaManifest)
    assert manifest == result.manifest and manifest.selected_tensor_count == 9
    assert manifest.selected_singular_value_count == 512
    pin = load_pin(out / "artifact_pin.json")
    assert len(pin.files) == 11 and verify_directory(out, pin, ignore=("artifact_pin.json",)).ok
    assert verify_directory(out, pin, ignore=("artifact_pin.json",)).unpinned == ()
    vector = np.load(tiny_vector)
    base = load_file(str(tiny_checkpoint / "model.safetensors"))
    for t in manifest.selected_tensors:
        file = out / f"checkpoints/{manifest.selected_tensors.index(t) + 1:04d}_{t.elixir_name}.safetensors"
        adapted = load_file(str(file))[t.source_name]
        source = "model.embed_tokens.weight" if t.source_name == "lm_head.weight" else t.source_name
        expected = reference_svf_reconstruct(base[source], vector[t.offset_start:t.offset_end])
        assert torch.allclose(adapted.double(), expected, atol=ATOL, rtol=0), t.source_name
    head = load_file(str(out / "router_head.safetensors"))["head"]
    assert torch.equal(head, torch.from_numpy(vector[512:].reshape(10, 64)).float())
    (record,) = read_lineage(tmp_path / "registry")
    assert record.adapter == result.adapter_ref and record.pin.manifest_sha256 == pin.manifest_sha256
    assert record.base.synthetic and record.vector.length == 1152
    assert any("adapting" in line for line in lines)
    with pytest.raises(ExportError, match="not empty"):
        export_bundle(tiny_checkpoint, tiny_vector, out, repo_id="me/x", revision="v0",
                      factor_cache_dir=tmp_path / "factors")
    again = export_bundle(tiny_checkpoint, tiny_vector, out, repo_id="me/tiny-adapted", revision="v0",
                          factor_cache_dir=tmp_path / "factors", overwrite=True)
    assert again.factors_from_cache and again.pin.manifest_sha256 == pin.manifest_sha256


def test_vector_that_does_not_fit_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = tmp_path / "short.npy"
    np.save(bad, np.zeros(100))
    with pytest.raises(ExportError, match="does not fit"):
        export_bundle(tiny_checkpoint, bad, tmp_path / "o", repo_id="me/x", revision="v0",
                      factor_cache_dir=tmp_path / "f")


def test_adapt_backbone_adapts_the_input_embedding_and_skips_lm_head(tmp_path: Path, tiny_checkpoint: Path,
                                                                     tiny_vector: Path) -> None:
    model = Qwen3Model.from_pretrained(str(tiny_checkpoint), dtype=torch.float32)
    base_embed = model.embed_tokens.weight.detach().clone()
    base_down = model.get_parameter("layers.0.mlp.down_proj.weight").detach().clone()
    vector = np.load(tiny_vector)
    result = adapt_backbone(model, vector, factor_cache_dir=tmp_path / "f")
    assert set(result.skipped) == {"lm_head.weight"} and len(result.receipts) == 8
    expected = reference_svf_reconstruct(base_embed, vector[0:64])
    assert torch.allclose(model.embed_tokens.weight.double(), expected, atol=ATOL, rtol=0)
    expected_down = reference_svf_reconstruct(base_down, vector[384:448])
    assert torch.allclose(model.get_parameter("layers.0.mlp.down_proj.weight").double(), expected_down, atol=ATOL,
                          rtol=0)
    assert result.head.shape == (10, 64)
    again = adapt_backbone(Qwen3Model.from_pretrained(str(tiny_checkpoint), dtype=torch.float32), vector,
                           factor_cache_dir=tmp_path / "f")
    assert again.factors_from_cache and again.adapter_ref == result.adapter_ref


@pytest.mark.parametrize("convention,lo,hi", [("embed-wins", 0, 64), ("lm_head-wins", 448, 512)])
def test_export_writes_one_tied_convention(tmp_path: Path, tiny_checkpoint: Path, tiny_vector: Path,
                                           convention: str, lo: int, hi: int) -> None:
    out = tmp_path / "bundle"
    result = export_bundle(tiny_checkpoint, tiny_vector, out, repo_id="me/t", revision="v0",
                           factor_cache_dir=tmp_path / "factors", tied_embedding=convention)
    assert result.tied_embedding == convention and result.adapter_ref.formula.endswith(
        "lm_head-wins" if convention == "lm_head-wins" else "v1")
    vector = np.load(tiny_vector)
    base = load_file(str(tiny_checkpoint / "model.safetensors"))["model.embed_tokens.weight"]
    expected = reference_svf_reconstruct(base, vector[lo:hi])
    files = sorted((out / "checkpoints").iterdir())
    for file, name in ((files[0], "model.embed_tokens.weight"), (files[-1], "lm_head.weight")):
        from safetensors import safe_open
        with safe_open(str(file), "pt") as f:
            assert f.metadata()["tied_embedding"] == convention
        assert torch.allclose(load_file(str(file))[name].double(), expected, atol=ATOL, rtol=0), name
