"""crucible.factor_cache: compute once, load after; keyed by weights; tied weights factored once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crucible import errors
from crucible.factor_cache import FACTOR_FORMAT_VERSION, FactorCache, weights_key
from crucible.factorization import SvfFactors, compute_factors, svf_reconstruct
from crucible.safetensors_io import SafetensorsReader


class CountingFactorizer:
    """Wraps compute_factors and counts calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, w: torch.Tensor) -> SvfFactors:
        self.calls.append((int(w.shape[0]), int(w.shape[1])))
        return compute_factors(w, block_rows=64)


def base_weights(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(300, 16, generator=gen) * 0.02
    return [
        ("model.embed_tokens.weight", embed),
        ("model.layers.26.self_attn.q_proj.weight", torch.randn(32, 16, generator=gen) * 0.02),
        ("model.layers.26.self_attn.o_proj.weight", torch.randn(16, 32, generator=gen) * 0.02),
        ("lm_head.weight", embed),  # tied: the same tensor
    ]


def test_second_call_loads_from_cache_without_factoring(tmp_path: Path) -> None:
    counter = CountingFactorizer()
    cache = FactorCache(tmp_path / "cache", factorizer=counter)
    named = base_weights()
    first = cache.get_or_compute(named)
    assert not first.from_cache and first.factorizations == 3  # tied embed/lm_head factored once
    assert counter.calls == [(300, 16), (32, 16), (16, 32)]
    assert first.path.exists() and first.path.parent == tmp_path / "cache"

    second = FactorCache(tmp_path / "cache", factorizer=counter).get_or_compute(named)
    assert second.from_cache and second.factorizations == 0
    assert len(counter.calls) == 3  # no new SVD
    assert second.key == first.key and list(second.factors) == [name for name, _ in named]
    for name, w in named:
        a, b = first.factors[name], second.factors[name]
        assert torch.equal(a.singular_values, b.singular_values) and torch.equal(a.basis, b.basis)
        d = torch.linspace(-0.2, 0.2, min(w.shape), dtype=torch.float64)
        assert torch.equal(svf_reconstruct(w, a, d), svf_reconstruct(w, b, d))


def test_key_tracks_weights_names_and_dtype(tmp_path: Path) -> None:
    named = base_weights()
    key = weights_key(named)
    assert key == weights_key(base_weights())
    changed = base_weights()
    changed[1][1][0, 0] += 1e-3
    assert weights_key(changed) != key
    renamed = [("other", named[0][1]), *named[1:]]
    assert weights_key(renamed) != key
    as_bf16 = [(name, w.to(torch.bfloat16)) for name, w in named]
    assert weights_key(as_bf16) != key
    counter = CountingFactorizer()
    cache = FactorCache(tmp_path, factorizer=counter)
    cache.get_or_compute(named)
    assert not cache.get_or_compute(changed).from_cache  # new weights, new key, new factors
    assert len(list(tmp_path.glob("svf-factors-*.safetensors"))) == 2
    assert not list(tmp_path.glob(".svf-factors-*"))  # no temp files left


def test_caller_supplied_key_skips_hashing_and_detects_ties_by_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crucible.factor_cache as module

    def no_hashing(_: torch.Tensor) -> str:
        raise AssertionError("hashed despite a caller key")

    monkeypatch.setattr(module, "tensor_sha256", no_hashing)
    counter = CountingFactorizer()
    cache = FactorCache(tmp_path, factorizer=counter)
    first = cache.get_or_compute(base_weights(), key="pinned-checkpoint-abc")
    assert first.factorizations == 3 and first.path.name == "svf-factors-pinned-checkpoint-abc.safetensors"
    assert cache.get_or_compute(base_weights(), key="pinned-checkpoint-abc").from_cache


def test_corrupt_or_mismatched_cache_raises(tmp_path: Path) -> None:
    cache = FactorCache(tmp_path, factorizer=CountingFactorizer())
    named = base_weights()
    result = cache.get_or_compute(named)
    result.path.write_bytes(result.path.read_bytes()[:-10])  # truncated
    with pytest.raises(errors.CacheCorrupt, match="delete the file"):
        cache.get_or_compute(named)
    entries = {"model.embed_tokens.weight": "x:300x16"}
    save_file(
        {"x:300x16.singular_values": torch.zeros(16, dtype=torch.float64)},
        str(result.path),
        metadata={"format": FACTOR_FORMAT_VERSION, "key": result.key, "entries": json.dumps(entries)},
    )
    with pytest.raises(errors.CacheCorrupt, match="map differs"):
        cache.get_or_compute(named)
    save_file({"a": torch.zeros(1)}, str(result.path), metadata={"format": "other", "key": result.key})
    with pytest.raises(errors.CacheCorrupt, match="does not match"):
        cache.get_or_compute(named)


def test_wrong_factor_shapes_in_cache_are_caught(tmp_path: Path) -> None:
    named = [("m", torch.randn(20, 4))]
    cache = FactorCache(tmp_path)
    result = cache.get_or_compute(named)
    with SafetensorsReader(result.path) as reader:
        entries = json.loads(reader.metadata["entries"])
        entry = entries["m"]
        meta = dict(reader.metadata)
    save_file(
        {f"{entry}.singular_values": torch.zeros(3, dtype=torch.float64), f"{entry}.basis": torch.eye(4).double()},
        str(result.path),
        metadata=meta,
    )
    with pytest.raises(errors.CacheCorrupt, match="need \\(4,\\) f64"):
        cache.get_or_compute(named)


def test_invalid_requests() -> None:
    cache = FactorCache("/nonexistent-never-written")
    with pytest.raises(errors.InvalidCacheRequest, match="no matrices"):
        cache.get_or_compute([])
    with pytest.raises(errors.InvalidCacheRequest, match="twice"):
        cache.get_or_compute([("a", torch.zeros(2, 2)), ("a", torch.zeros(2, 2))])
    with pytest.raises(errors.InvalidCacheRequest, match="2-D"):
        cache.get_or_compute([("a", torch.zeros(4))])
