"""TracePublisher: bounded, never blocking, ordered batches, failures counted (fake JetStream)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.coordinator.tracing import TracePublisher
from schemas.trace import RunStarted, TraceEvent


class FakeJS:
    """Acks every publish, or never acks when ``stall`` (to exercise timeouts)."""

    def __init__(self, stall: bool = False) -> None:
        self.stall = stall
        self.published: list[tuple[str, dict[str, str]]] = []

    async def publish_async(self, subject: str, payload: bytes, wait_stall: float | None = None,
                            headers: dict[str, str] | None = None) -> asyncio.Future[Any]:
        self.published.append((subject, dict(headers or {})))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.stall:
            fut.set_result(object())
        return fut


def event(i: int, rid: str = "q1") -> TraceEvent:
    return RunStarted(request_id=rid, event_id=f"e{i}", causation_id=f"e{i - 1}", ts=0.0, turn=-1,
                      query_sha256="0" * 64)


async def test_events_published_in_order_with_headers() -> None:
    js = FakeJS()
    pub = TracePublisher(js, capacity=100)  # type: ignore[arg-type]
    await pub.start()
    for i in range(10):
        await pub.emit(event(i))
    assert await pub.flush(2.0)
    assert [h["Nats-Msg-Id"] for _, h in js.published] == [f"e{i}" for i in range(10)]
    assert js.published[3] == ("trinity.trace.q1.run_started", {"Trinity-Request-Id": "q1",
                                                                "Trinity-Causation-Id": "e2", "Nats-Msg-Id": "e3"})
    assert pub.counters.as_dict() == {"emitted": 10, "published": 10, "dropped": 0, "failed": 0,
                                      "refused": 0}
    await pub.close()


async def test_overflow_is_dropped_and_counted_without_blocking() -> None:
    pub = TracePublisher(FakeJS(), capacity=3)  # type: ignore[arg-type]
    for i in range(10):  # not started: nothing drains the buffer
        await pub.emit(event(i))
    assert (pub.counters.emitted, pub.counters.dropped, pub.pending) == (3, 7, 3)


async def test_missing_acks_are_counted_failed() -> None:
    pub = TracePublisher(FakeJS(stall=True), capacity=10, publish_timeout_s=0.05)  # type: ignore[arg-type]
    await pub.start()
    for i in range(4):
        await pub.emit(event(i))
    assert await pub.flush(2.0)
    assert (pub.counters.published, pub.counters.failed) == (0, 4)
    await pub.close()


async def test_disabled_publisher_ignores_events() -> None:
    js = FakeJS()
    pub = TracePublisher(js, capacity=3, enabled=False)  # type: ignore[arg-type]
    await pub.start()
    await pub.emit(event(0))
    assert await pub.flush(1.0)
    assert js.published == [] and pub.counters.emitted == 0
    await pub.close()


class FlakyJS(FakeJS):
    """Never acks the first publish of each event (a server dying under it), acks the retries."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    async def publish_async(self, subject: str, payload: bytes, wait_stall: float | None = None,
                            headers: dict[str, str] | None = None) -> asyncio.Future[Any]:
        msg_id = (headers or {})["Nats-Msg-Id"]
        self.stall = msg_id not in self.seen
        self.seen.add(msg_id)
        return await super().publish_async(subject, payload, wait_stall, headers)


async def test_unacknowledged_events_are_retried_with_their_ids() -> None:
    js = FlakyJS()
    pub = TracePublisher(js, capacity=10, publish_timeout_s=0.05)  # type: ignore[arg-type]
    await pub.start()
    for i in range(4):
        await pub.emit(event(i))
    assert await pub.flush(2.0)
    assert (pub.counters.published, pub.counters.failed) == (4, 0)
    ids = [h["Nats-Msg-Id"] for _, h in js.published]
    assert sorted(ids) == sorted([f"e{i}" for i in range(4)] * 2)  # each sent twice, same id (JetStream dedupes)
    await pub.close()
