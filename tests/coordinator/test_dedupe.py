"""Idempotency: duplicates join in-flight runs, get cached results, conflicts are refused."""

from __future__ import annotations

import asyncio

import pytest

from actors.coordinator.dedupe import Deduper
from actors.coordinator.errors import DuplicateRequestConflict


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_inflight_duplicates_share_one_run() -> None:
    d: Deduper[str] = Deduper(capacity=8, ttl_s=60.0, clock=Clock())
    gate = asyncio.Event()
    runs = 0

    async def work() -> str:
        nonlocal runs
        runs += 1
        await gate.wait()
        return f"result {runs}"

    waiters = [asyncio.create_task(d.run("q1", "fp", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert d.inflight == 1
    gate.set()
    assert await asyncio.gather(*waiters) == ["result 1"] * 5
    assert runs == 1 and (d.stats.started, d.stats.joined) == (1, 4)
    # after completion: cached
    assert await d.run("q1", "fp", work) == "result 1"
    assert runs == 1 and d.stats.cached == 1


async def test_conflicting_payload_is_refused() -> None:
    d: Deduper[str] = Deduper(capacity=8, ttl_s=60.0, clock=Clock())
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "r"

    first = asyncio.create_task(d.run("q1", "fp-a", work))
    await asyncio.sleep(0)
    with pytest.raises(DuplicateRequestConflict, match="'q1' was already used for a different request"):
        await d.run("q1", "fp-b", work)
    gate.set()
    assert await first == "r"
    with pytest.raises(DuplicateRequestConflict):
        await d.run("q1", "fp-b", work)
    assert d.stats.conflicts == 2


async def test_ttl_and_lru_eviction() -> None:
    clock = Clock()
    d: Deduper[int] = Deduper(capacity=2, ttl_s=10.0, clock=clock)
    calls: list[str] = []

    def work_for(key: str, value: int):  # type: ignore[no-untyped-def]
        async def work() -> int:
            calls.append(key)
            return value
        return work

    assert await d.run("a", "f", work_for("a", 1)) == 1
    assert await d.run("b", "f", work_for("b", 2)) == 2
    assert await d.run("a", "f", work_for("a", 9)) == 1  # cached; "a" becomes most recent
    assert await d.run("c", "f", work_for("c", 3)) == 3  # evicts "b" (least recent)
    assert len(d) == 2
    assert await d.run("b", "f", work_for("b", 4)) == 4  # ran again
    clock.t = 11.0
    assert await d.run("b", "f", work_for("b", 5)) == 5  # expired
    assert calls == ["a", "b", "c", "b", "b"]


async def test_failures_are_not_cached() -> None:
    d: Deduper[str] = Deduper(capacity=8, ttl_s=60.0, clock=Clock())
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("boom")
        return "ok"

    with pytest.raises(RuntimeError, match="boom"):
        await d.run("q", "f", flaky)
    assert await d.run("q", "f", flaky) == "ok"


async def test_cancelled_waiter_does_not_cancel_the_run() -> None:
    d: Deduper[str] = Deduper(capacity=8, ttl_s=60.0, clock=Clock())
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(d.run("q", "f", work))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(d.run("q", "f", work))
    await asyncio.sleep(0)
    gate.set()
    assert await second == "done" and d.stats.started == 1 and d.stats.joined == 1


async def test_cancel_all_stops_runs_in_progress_and_their_waiters() -> None:
    d: Deduper[str] = Deduper(capacity=10, ttl_s=60.0, clock=lambda: 0.0)
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    waiter = asyncio.create_task(d.run("k", "fp", work))
    await started.wait()
    assert d.inflight == 1 and d.cancel_all() == 1
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert d.inflight == 0 and len(d) == 0 and d.cancel_all() == 0
