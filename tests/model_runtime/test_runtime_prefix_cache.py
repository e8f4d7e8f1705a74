"""Prefix cache: LCP over token ids, crop on re-segmentation, LRU eviction under token and byte budgets."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from actors.model_runtime.prefix_cache import PrefixCache, common_prefix_len, crop_to, kv_nbytes
from schemas.common import Message
from schemas.routing import RouteRequest
from tests.model_runtime.support import EngineFactory, Reference, cosine


def _kv(tokens: int, layers: int = 2) -> DynamicCache:
    data = [(torch.zeros(1, 2, tokens, 4), torch.zeros(1, 2, tokens, 4)) for _ in range(layers)]
    return DynamicCache(ddp_cache_data=data)


def test_common_prefix_len() -> None:
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix_len([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix_len([1, 2], [1, 2, 3, 4]) == 2


def test_crop_and_nbytes() -> None:
    kv = _kv(10)
    assert kv_nbytes(kv) == 2 * 2 * (2 * 10 * 4) * 4
    crop_to(kv, 6)
    assert kv.get_seq_length() == 6 and kv_nbytes(kv) == 2 * 2 * (2 * 6 * 4) * 4


def test_lru_evicts_by_tokens() -> None:
    cache = PrefixCache(max_tokens=25, max_bytes=1 << 30)
    for run in ("a", "b", "c"):
        assert cache.put(run, list(range(10)), _kv(10))
    assert cache.keys() == ["b", "c"]
    assert cache.stats().evictions == 1 and cache.stats().tokens == 20
    assert cache.take("b") is not None  # taking marks it in use: it leaves the LRU until put back
    cache.put("b", list(range(10)), _kv(10))
    cache.put("d", list(range(10)), _kv(10))
    assert cache.keys() == ["b", "d"]  # "c" was least recently used


def test_lru_evicts_by_bytes_and_rejects_oversized_entries() -> None:
    per_entry = kv_nbytes(_kv(10))
    cache = PrefixCache(max_tokens=10_000, max_bytes=2 * per_entry)
    for run in ("a", "b", "c"):
        cache.put(run, list(range(10)), _kv(10))
    assert cache.keys() == ["b", "c"] and cache.stats().bytes == 2 * per_entry
    assert not cache.put("huge", list(range(30)), _kv(30))
    assert "huge" not in cache and cache.stats().rejected == 1
    assert cache.keys() == ["b", "c"]


def test_runs_reuse_their_prefix_and_stay_exact_after_resegmentation(
        tiny_engine: EngineFactory, tiny_reference: Reference) -> None:
    engine = tiny_engine()
    turn0 = [Message("user", "Tell me about cats and dogs")]
    turn1 = [*turn0, Message("assistant", "Cats purr; dogs bark.")]
    # A streamed earlier state cut mid-word: "...Summari" -> ["Summ", "ari"] but "...Summarize" -> ["Summar", "ize"]
    before = [Message("user", "Summari")]
    after = [Message("user", "Summarize https://example.com/path please")]
    p0 = engine.prepare(RouteRequest("r", 0, turn0, run_id="run"))
    h0 = engine._hidden([p0])[0]
    p1 = engine.prepare(RouteRequest("r", 1, turn1, run_id="run"))
    h1 = engine._hidden([p1])[0]
    assert h0.cached_tokens == 0  # type: ignore[union-attr]
    assert h1.cached_tokens == len(p0.feed)  # type: ignore[union-attr]
    assert cosine(h1.hidden, tiny_reference.hidden(p1.ids)) >= 0.99999  # type: ignore[union-attr]

    p2 = engine.prepare(RouteRequest("r", 0, before, run_id="other"))
    engine._hidden([p2])
    p3 = engine.prepare(RouteRequest("r", 1, after, run_id="other"))
    lcp = common_prefix_len(p2.feed, p3.feed)
    assert lcp < len(p2.feed)  # the new token ids do not extend the cached ones: the cache must be cropped
    h3 = engine._hidden([p3])[0]
    assert 0 < h3.cached_tokens == lcp  # type: ignore[union-attr]
    assert cosine(h3.hidden, tiny_reference.hidden(p3.ids)) >= 0.99999  # type: ignore[union-attr]
    # The other run's entry was untouched.
    h4 = engine._hidden([engine.prepare(RouteRequest("r", 2, [*turn1, Message("user", "and birds?")],
                                                     run_id="run"))])[0]
    assert h4.cached_tokens == len(p1.feed)  # type: ignore[union-attr]


def test_identical_transcript_recomputes_only_its_last_fed_token(
        tiny_engine: EngineFactory, tiny_reference: Reference) -> None:
    engine = tiny_engine()
    req = RouteRequest("r", 0, [Message("user", "same question twice")], run_id="x")
    a = engine.route(req)
    b = engine.route(req)
    assert b.cached_tokens == b.token_count - 2
    assert cosine(torch.tensor(a.logits), torch.tensor(b.logits)) >= 0.99999


def test_eviction_under_budget_keeps_answers_exact(tiny_engine: EngineFactory, tiny_reference: Reference) -> None:
    # Budget for roughly two runs of this length: the third run evicts the first, which then recomputes.
    engine = tiny_engine(cache_max_tokens=20)  # each run below caches 9 tokens
    runs = {f"run{i}": [Message("user", f"Question number {i} about routing transcripts here")] for i in range(3)}
    first = {k: engine.route(RouteRequest("r", 0, m, run_id=k)) for k, m in runs.items()}
    assert engine.cache.stats().evictions >= 1 and "run0" not in engine.cache
    again = engine.route(RouteRequest("r", 1, [*runs["run0"], Message("assistant", "ok")], run_id="run0"))
    assert again.cached_tokens == 0  # evicted: computed from scratch
    p = engine.prepare(RouteRequest("r", 1, [*runs["run0"], Message("assistant", "ok")]))
    want = engine.head.apply(tiny_reference.hidden(p.ids).unsqueeze(0))[0]
    assert cosine(torch.tensor(again.logits), want) >= 0.99999
    assert all(v.cached_tokens == 0 for v in first.values())
    assert engine.cache.stats().tokens <= 20


def test_disabled_cache_keeps_nothing(tiny_engine: EngineFactory) -> None:
    engine = tiny_engine(cache_max_tokens=0)
    msgs = [Message("user", "no caching please")]
    engine.route(RouteRequest("r", 0, msgs, run_id="x"))
    assert engine.route(RouteRequest("r", 0, msgs, run_id="x")).cached_tokens == 0
    assert engine.cache.stats().entries == 0
