"""Dynamic batching: concurrent requests within the window run as one batch, answers equal solo runs."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch

from actors.model_runtime.batcher import DynamicBatcher
from actors.model_runtime.errors import ModelRuntimeError, Overloaded, RuntimeClosed, TranscriptTooShort
from actors.model_runtime.runtime import RouterRuntime
from schemas.routing import RouteRequest
from tests.model_runtime.support import EngineFactory, argmaxes, cosine
from tests.model_runtime.transcripts import random_transcript


async def test_requests_within_window_form_one_batch() -> None:
    seen: list[list[int]] = []
    threads: set[str] = set()

    def run(xs: list[int]) -> list[int]:
        seen.append(list(xs))
        threads.add(threading.current_thread().name)
        return [x + 100 for x in xs]

    b: DynamicBatcher[int, int] = DynamicBatcher(run, window_ms=200, max_batch=8, max_queue=64)
    await b.start()
    out = await asyncio.gather(*(b.submit(i) for i in range(5)))
    assert out == [100, 101, 102, 103, 104]
    assert seen == [[0, 1, 2, 3, 4]]
    assert len(threads) == 1 and threading.current_thread().name not in threads  # off the event loop
    await b.close()


async def test_max_batch_splits_and_queue_bound_rejects() -> None:
    release = threading.Event()
    sizes: list[int] = []

    def run(xs: list[int]) -> list[int]:
        release.wait(5)
        sizes.append(len(xs))
        return xs

    b: DynamicBatcher[int, int] = DynamicBatcher(run, window_ms=50, max_batch=3, max_queue=4)
    await b.start()
    first = [asyncio.create_task(b.submit(i)) for i in range(3)]
    while b.stats().in_flight == 0:  # the first batch (3 items) is now running and blocked
        await asyncio.sleep(0.005)
    queued = [asyncio.create_task(b.submit(i)) for i in range(3, 7)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as err:
        await b.submit(99)
    assert err.value.retryable and b.stats().rejected == 1
    release.set()
    assert await asyncio.gather(*first, *queued) == list(range(7))
    assert sizes == [3, 3, 1]
    await b.close()
    with pytest.raises(RuntimeClosed):
        await b.submit(1)


async def test_per_item_errors_and_batch_failures_reach_the_right_callers() -> None:
    def run(xs: list[int]) -> list[int | BaseException]:
        if 13 in xs:
            raise RuntimeError("boom")
        return [TranscriptTooShort(1) if x < 0 else x for x in xs]

    b: DynamicBatcher[int, int] = DynamicBatcher(run, window_ms=20, max_batch=8, max_queue=64)
    await b.start()
    res = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
    assert res[0] == 1 and res[2] == 2 and isinstance(res[1], TranscriptTooShort)
    with pytest.raises(RuntimeError, match="boom"):
        await b.submit(13)
    assert await b.submit(3) == 3  # the batcher keeps serving after a failed batch
    await b.close()


async def test_concurrent_routes_are_batched_and_match_solo(tiny_engine: EngineFactory) -> None:
    rng = random.Random(99)
    requests = [RouteRequest(f"r{i}", 0, random_transcript(rng, (1, 25))) for i in range(16)]
    solo_engine = tiny_engine(cache_max_tokens=0)
    solo = [solo_engine.route(r) for r in requests]
    rt = RouterRuntime(tiny_engine(cache_max_tokens=0), window_ms=100, max_batch=16)
    await rt.start()
    batched = await asyncio.gather(*(rt.route(r) for r in requests))
    stats = rt.stats()
    await rt.close()
    assert stats.batcher.batches == 1 and stats.batcher.largest_batch == 16
    assert len({o.token_count for o in batched}) > 1  # lengths differ: packing boundaries were exercised
    for s, b in zip(solo, batched, strict=True):
        assert (b.request_id, b.token_count, b.transcript_hash) == (s.request_id, s.token_count, s.transcript_hash)
        assert cosine(torch.tensor(b.logits), torch.tensor(s.logits)) >= 0.99999
        assert argmaxes(b.logits) == argmaxes(s.logits)


async def test_bad_request_fails_fast_while_others_are_served(tiny_engine: EngineFactory) -> None:
    rt = RouterRuntime(tiny_engine(max_context_tokens=12), window_ms=20)
    await rt.start()
    rng = random.Random(5)
    good = RouteRequest("ok", 0, random_transcript(rng, (1, 1))[:1])
    long = RouteRequest("long", 0, random_transcript(rng, (40, 40)))
    res = await asyncio.gather(rt.route(good), rt.route(long), return_exceptions=True)
    await rt.close()
    assert not isinstance(res[0], BaseException) and res[0].request_id == "ok"
    assert isinstance(res[1], ModelRuntimeError) and res[1].code.value == "too_large"
