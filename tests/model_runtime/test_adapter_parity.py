"""Parity of cheap SVF adapters with a plainly patched model, on every execution path.

Reference, computed in the same run: a deep copy of the backbone SVF-patched in place by
``crucible.registry.adapter.adapt_backbone`` (one copy per vector), routed one request at a time without
a prefix cache, with the vector's head. Tolerances: cosine >= 0.99999 between position -2 states and
identical agent and role argmax under the adapter's head, on 200 seeded random transcripts, for

* plain: one request at a time, no prefix cache;
* mixed packed batches: up to 16 requests of adapters A, B and ``base`` in one packed row;
* prefix-cached: an earlier, mid-token-cut state of each transcript first (mixed batch), then the full one.

Base requests of a mixed batch must equal (bit for bit) the same packed batch on an engine without adapters,
and agree with single base requests under the same tolerances.

The full-size variant (slow) runs the real trained vector ``anchors/sakana_model_iter_60.npy`` on the
Qwen3-0.6B-shaped synthetic checkpoint and compares routing logits (cosine >= 0.99999, identical argmax).
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from actors.model_runtime.engine import HiddenResult, PreparedRoute, RouterEngine
from actors.model_runtime.head import RoutingHead
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest
from schemas.sakana import BASE_ADAPTER_TOKEN
from tests.model_runtime.adapter_vectors import patched_engine, random_adapter_vector
from tests.model_runtime.support import argmaxes, cosine
from tests.model_runtime.transcripts import random_transcript, truncated

COSINE_MIN = 0.99999
N_TRANSCRIPTS = 200
ANCHOR_VECTOR = Path(__file__).resolve().parents[2].parent / "shared" / "anchors" / "sakana_model_iter_60.npy"


def _states(engine: RouterEngine, batch: list[PreparedRoute]) -> list[HiddenResult]:
    out = engine._hidden(batch)
    assert all(isinstance(h, HiddenResult) for h in out)
    return out  # type: ignore[return-value]


def _check(head: RoutingHead, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    c = cosine(got, want)
    assert c >= COSINE_MIN, f"{what}: cosine {c:.7f} < {COSINE_MIN}"
    g = head.apply(got.unsqueeze(0))[0].tolist()
    w = head.apply(want.unsqueeze(0))[0].tolist()
    assert argmaxes(g) == argmaxes(w), f"{what}: argmax {argmaxes(g)} != reference {argmaxes(w)}"


def test_tiny_cheap_adapters_match_patched_models(tiny_checkpoint: Path, tokenizer: RouterTokenizer,
                                                  tmp_path: Path) -> None:
    factors = tmp_path / "factors"
    settings = ModelRuntimeSettings(max_batch=16, factor_cache_dir=str(factors), cache_max_tokens=0)
    plain = RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)
    base_only = RouterEngine(plain.model, tokenizer, plain.head, settings)  # same weights, no adapters
    vectors = [random_adapter_vector(plain, seed) for seed in (101, 202)]
    references = {}
    for v in vectors:
        ref_engine, adaptation = patched_engine(plain, v, factors)  # before any hook exists on the model
        references[plain.load_adapter(v).token] = ref_engine
        assert adaptation.adapter_ref.token in references  # same vector, same token in both paths
    references[BASE_ADAPTER_TOKEN] = base_only
    cached = RouterEngine(plain.model, tokenizer, plain.head,
                          msgspec.structs.replace(settings, cache_max_tokens=65536))
    for v in vectors:
        cached.load_adapter(v)
    tokens = plain.warm_adapters()
    assert tokens == cached.warm_adapters() and len(tokens) == 3

    rng = random.Random(77)
    transcripts = [random_transcript(rng, (1, 30)) for _ in range(N_TRANSCRIPTS)]
    earlier = [truncated(rng, t) for t in transcripts]
    adapter_of = [tokens[rng.randrange(3)] for _ in range(N_TRANSCRIPTS)]

    def prep(engine: RouterEngine, msgs: list[Message], i: int, run: bool) -> PreparedRoute:
        return engine.prepare(RouteRequest(f"r{i}", 0, msgs, adapter=adapter_of[i], run_id=f"run-{i}" if run else None))

    def head_of(engine: RouterEngine, token: str) -> RoutingHead:
        slot = engine._slots[token]
        return engine.head if slot is None else slot.head

    counts = {"mixed_batches": 0, "reused": 0, "base_rows": 0, "adapted_apart": 0}
    for start in range(0, N_TRANSCRIPTS, 16):
        idx = list(range(start, min(start + 16, N_TRANSCRIPTS)))
        full = [prep(plain, transcripts[i], i, False) for i in idx]
        want = [_states(references[adapter_of[i]], [references[adapter_of[i]].prepare(
            RouteRequest("ref", 0, transcripts[i]))])[0].hidden for i in idx]
        heads = [head_of(plain, adapter_of[i]) for i in idx]
        # the patched reference serves the vector's head: the adapter carries the same one
        for i, h in zip(idx, heads, strict=True):
            assert torch.equal(h.weight, references[adapter_of[i]].head.weight)
        for i, p, w, h in zip(idx, full, want, heads, strict=True):
            _check(h, _states(plain, [p])[0].hidden, w, f"plain #{i} ({adapter_of[i]})")
        if len({adapter_of[i] for i in idx}) == 3:
            counts["mixed_batches"] += 1
        packed = _states(plain, full)
        for i, r, w, h in zip(idx, packed, want, heads, strict=True):
            _check(h, r.hidden, w, f"packed #{i} ({adapter_of[i]})")
        # base rows of the mixed pack equal the same pack on an engine that has no adapters, bit for bit
        as_base = [base_only.prepare(RouteRequest(f"r{i}", 0, transcripts[i])) for i in idx]
        for i, r, b in zip(idx, packed, _states(base_only, as_base), strict=True):
            if adapter_of[i] == BASE_ADAPTER_TOKEN:
                assert torch.equal(r.hidden, b.hidden), f"base row #{i} of a mixed pack differs from the base engine"
                counts["base_rows"] += 1
            else:  # the adapter really changes the state (so the comparisons above can fail)
                counts["adapted_apart"] += cosine(r.hidden, b.hidden) < 0.999
        _states(cached, [prep(cached, earlier[i], i, True) for i in idx])
        second = [prep(cached, transcripts[i], i, True) for i in idx]
        for i, r, w, h in zip(idx, _states(cached, second), want, heads, strict=True):
            _check(h, r.hidden, w, f"cached #{i} ({adapter_of[i]})")
            counts["reused"] += r.cached_tokens > 0
    assert counts["mixed_batches"] >= 10 and counts["reused"] >= 150 and counts["base_rows"] >= 50, counts
    assert counts["adapted_apart"] >= N_TRANSCRIPTS - counts["base_rows"] - 5, counts
    assert plain.adapter_loads == 2 and cached.adapter_loads == 2


@pytest.mark.slow
def test_full_size_real_vector_cheap_adapter_matches_patched_model(full_checkpoint: Path,
                                                                   tokenizer: RouterTokenizer) -> None:
    if not ANCHOR_VECTOR.is_file():
        pytest.skip(f"{ANCHOR_VECTOR} not present")
    # the factor cache is keyed by the base weights: the user's cache is safe to share (and warm after one run)
    settings = ModelRuntimeSettings(max_batch=16, cache_max_tokens=0).expanded()
    engine = RouterEngine.load(settings, checkpoint_dir=full_checkpoint, tokenizer=tokenizer)
    reference, adaptation = patched_engine(engine, np.load(ANCHOR_VECTOR), settings.factor_cache_dir)
    info = engine.load_adapter(ANCHOR_VECTOR)
    assert info.token == adaptation.adapter_ref.token and info.skipped == ("lm_head.weight",)
    adapter = engine._slots[info.token]
    assert adapter is not None
    held = [*adapter.offsets.values(), *adapter.scales.values(), adapter.head.weight]
    # the memory goal: offsets (8 x 1024), scales (8) and head (10 x 1024), float32 = 73,760 bytes <= 16 MiB
    assert info.nbytes == sum(t.numel() * t.element_size() for t in held) == (8 * 1024 + 8 + 10 * 1024) * 4
    assert info.nbytes <= 16 * 2**20

    rng = random.Random(9)
    transcripts = [[Message("user", " ".join(rng.choice(["What", "is", "17", "+", "25", "?", "Prove", "the",
                                                          "lemma", "carefully", "écrire", "数学"])
                                             for _ in range(rng.randint(4, 20))))] for _ in range(N_TRANSCRIPTS)]
    worst, lengths = 1.0, []
    for start in range(0, N_TRANSCRIPTS, 16):
        chunk = transcripts[start:start + 16]
        got = engine.run([engine.prepare(RouteRequest(f"a{i}", 0, t, adapter=info.token)) for i, t in enumerate(chunk)])
        want = reference.run([reference.prepare(RouteRequest(f"b{i}", 0, t)) for i, t in enumerate(chunk)])
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert not isinstance(g, Exception) and not isinstance(w, Exception)
            assert g.adapter == info.token
            lengths.append(g.token_count)
            c = cosine(torch.tensor(g.logits), torch.tensor(w.logits))
            worst = min(worst, c)
            assert c >= COSINE_MIN, f"#{start + k}: logits cosine {c:.7f}"
            assert argmaxes(g.logits) == argmaxes(w.logits), f"#{start + k}: argmax differs"
    print(f"full size, real vector: worst logits cosine {worst:.9f} over {N_TRANSCRIPTS} transcripts of "
          f"{min(lengths)}-{max(lengths)} tokens")
