"""Parity of the runtime's routing state with the plain reference path, for every execution path.

Reference: ``Qwen3ForCausalLM`` forward over the full token sequence with ``output_hidden_states``,
``hidden_states[-1][0, -2]`` (``logits_to_keep=1`` only skips LM-head work; the states are identical).
Tolerances: cosine >= 0.99999 between states, and identical agent and role argmax under a random head, on
200 seeded random transcripts, for the plain (no cache, one at a time), prefix-cached (an earlier,
mid-token-cut state of the transcript routed first under the same run id, both in batches) and batched
(packed batches of up to 16, block-diagonal mask) paths.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from actors.model_runtime.engine import HiddenResult, PreparedRoute, RouterEngine
from actors.model_runtime.head import RoutingHead
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest
from tests.model_runtime.support import Reference, argmaxes, cosine
from tests.model_runtime.transcripts import random_transcript, truncated

COSINE_MIN = 0.99999
N_TRANSCRIPTS = 200


def _states(engine: RouterEngine, batch: list[PreparedRoute]) -> list[HiddenResult]:
    out = engine._hidden(batch)
    assert all(isinstance(h, HiddenResult) for h in out)
    return out  # type: ignore[return-value]


def _check(engine: RouterEngine, head: RoutingHead, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    c = cosine(got, want)
    assert c >= COSINE_MIN, f"{what}: cosine {c:.7f} < {COSINE_MIN}"
    g = head.apply(got.unsqueeze(0))[0].tolist()
    w = head.apply(want.unsqueeze(0))[0].tolist()
    assert argmaxes(g) == argmaxes(w), f"{what}: argmax {argmaxes(g)} != reference {argmaxes(w)}"


def run_parity(checkpoint: Path, tokenizer: RouterTokenizer, reference: Reference, *, seed: int,
               words: tuple[int, int], max_replies: int = 2) -> dict[str, int]:
    """Route N_TRANSCRIPTS transcripts through every path and compare with the reference; return counters."""
    rng = random.Random(seed)
    transcripts = [random_transcript(rng, words, max_replies) for _ in range(N_TRANSCRIPTS)]
    earlier = [truncated(rng, t) for t in transcripts]
    settings = ModelRuntimeSettings(max_batch=16)
    plain = RouterEngine.load(msgspec_replace(settings, cache_max_tokens=0), checkpoint_dir=checkpoint,
                              tokenizer=tokenizer)
    cached = RouterEngine(plain.model, tokenizer, plain.head, settings)  # same weights, prefix cache on
    head = plain.head

    def prep(engine: RouterEngine, msgs: list[Message], i: int, run: bool) -> PreparedRoute:
        return engine.prepare(RouteRequest(f"r{i}", 0, msgs, run_id=f"run-{i}" if run else None))

    counters = {"reused": 0, "cropped": 0, "fresh_fallback": 0, "mixed_length_batches": 0}
    for start in range(0, N_TRANSCRIPTS, 16):
        idx = list(range(start, min(start + 16, N_TRANSCRIPTS)))
        full = [prep(plain, transcripts[i], i, False) for i in idx]
        want = [reference.hidden(p.ids) for p in full]
        # plain: one at a time, no cache
        for i, p, w in zip(idx, full, want, strict=True):
            _check(plain, head, _states(plain, [p])[0].hidden, w, f"plain #{i}")
        # batched: one packed forward pass
        if len({len(p.ids) for p in full}) > 1:
            counters["mixed_length_batches"] += 1
        for i, h, w in zip(idx, _states(plain, full), want, strict=True):
            _check(plain, head, h.hidden, w, f"batched #{i}")
        # prefix-cached: the earlier state first (batched, caches split per run), then the full transcript
        first = [prep(cached, earlier[i], i, True) for i in idx]
        _states(cached, first)
        second = [prep(cached, transcripts[i], i, True) for i in idx]
        for i, p0, p1, h, w in zip(idx, first, second, _states(cached, second), want, strict=True):
            _check(cached, head, h.hidden, w, f"cached #{i}")
            if h.cached_tokens:
                counters["reused"] += 1
                if h.cached_tokens < len(p0.feed):
                    counters["cropped"] += 1
            else:
                counters["fresh_fallback"] += 1
            assert h.cached_tokens <= len(p1.feed) - 1
    return counters


def msgspec_replace(settings: ModelRuntimeSettings, **changes: object) -> ModelRuntimeSettings:
    """``settings`` with some fields changed."""
    import msgspec

    return msgspec.structs.replace(settings, **changes)


def test_parity_tiny_all_paths(tiny_checkpoint: Path, tokenizer: RouterTokenizer, tiny_reference: Reference) -> None:
    counters = run_parity(tiny_checkpoint, tokenizer, tiny_reference, seed=1234, words=(1, 30))
    # The cached path really reused K/V, and cropped it where appended text re-segmented the last tokens.
    assert counters["reused"] >= 150
    assert counters["cropped"] >= 10
    assert counters["mixed_length_batches"] >= 10


@pytest.mark.slow
def test_parity_full_size_all_paths(full_checkpoint: Path, tokenizer: RouterTokenizer) -> None:
    # Short transcripts (~12 tokens: a few words, no reply; the cached path still cuts the query mid-token)
    # keep this to minutes on 2 cores: small-M matmuls dominate, ~600 single forward passes plus 26 packs.
    counters = run_parity(full_checkpoint, tokenizer, Reference(full_checkpoint), seed=4321, words=(1, 3),
                          max_replies=0)
    assert counters["reused"] >= 150
    assert counters["cropped"] >= 10
