"""Self-healing storage against real nats-servers: typed errors for what JetStream refuses, a keeper that
recreates deleted streams and consumers, and async publishes that never leak nats-py's publish slots."""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from bus.embedded import NatsServerProcess
from bus.jetstream import ConsumerSpec, StreamSpec, ensure_stream, results_stream_spec, trace_stream_spec
from bus.storage import (
    AlreadyStored,
    PublishRefused,
    StorageKeeper,
    StoreFull,
    StoreTooSmall,
    StreamMissing,
    publish_async,
    storage_error,
)
from schemas.wire import ErrorCode
from tests.waiting import until as wait_until

GUARD_S = 30.0  # hang guard only


async def until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pred, what, guard_s=GUARD_S, poll_s=0.05)


async def refused(coro) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        await coro
    except Exception as e:  # noqa: BLE001 - the test inspects what was raised
        return e
    raise AssertionError("the server accepted it")


async def test_publish_errors_are_typed(fresh_nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    try:
        await ensure_stream(js, results_stream_spec())
        await js.delete_stream("TRINITY_RESULTS")
        e = await refused(js.publish("trinity.coord.result.q1", b"r", stream="TRINITY_RESULTS", timeout=2))
        typed = storage_error(e, subject="trinity.coord.result.q1")
        assert isinstance(typed, StreamMissing) and typed.code is ErrorCode.UNAVAILABLE and typed.retryable

        await js.add_stream(StreamConfig(name="S", subjects=["s.>"], max_bytes=300, discard="new",
                                         max_msgs_per_subject=1, discard_new_per_subject=True, max_msg_size=200))
        await js.publish("s.0", b"z" * 100)
        e = await refused(js.publish("s.0", b"z"))
        assert isinstance(storage_error(e), AlreadyStored)
        await js.publish("s.1", b"z" * 100)
        e = await refused(js.publish("s.2", b"z" * 100))
        full = storage_error(e, stream="S")
        assert isinstance(full, StoreFull) and full.retryable and "maximum bytes exceeded" in str(full)
        e = await refused(js.publish("s.3", b"z" * 250))
        big = storage_error(e)
        assert isinstance(big, PublishRefused) and not big.retryable
    finally:
        await nc.close()


async def test_store_too_small_and_store_full_are_typed(caplog: pytest.LogCaptureFixture) -> None:
    srv = NatsServerProcess.start(name="trinity-test-small", max_file_store="1MB")
    nc = await nats.connect(srv.url)
    js = nc.jetstream()
    try:
        keeper = StorageKeeper(js, "test", [trace_stream_spec()], check_every_s=0.2)
        with caplog.at_level(logging.ERROR, logger="bus.storage"):
            assert await keeper.ensure() is False
        assert isinstance(keeper.error, StoreTooSmall) and not keeper.error.retryable
        assert "max_file_store" in str(keeper.error) and "TRINITY_TRACE" in str(keeper.error)
        assert sum("StoreTooSmall" in r.getMessage() for r in caplog.records) == 1
        assert await keeper.ensure() is False  # the same error is not logged again
        assert sum("StoreTooSmall" in r.getMessage() for r in caplog.records) == 1
        # a stream with no cap fills the whole store: the publish that does not fit is a typed StoreFull
        await js.add_stream(StreamConfig(name="R", subjects=["r.>"]))
        with pytest.raises(nats.errors.Error) as info:
            for i in range(5000):
                await js.publish(f"r.{i}", b"q" * 1000)
        full = storage_error(info.value, stream="R")
        assert isinstance(full, StoreFull) and "insufficient resources" in str(full)
    finally:
        await nc.close()
        srv.close()


async def test_keeper_recreates_deleted_streams_and_consumers(fresh_nats_server: NatsServerProcess,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    spec = StreamSpec(name="HEAL", subjects=["heal.>"])
    keeper = StorageKeeper(js, "test", [spec], [("HEAL", ConsumerSpec(durable="reader", filter_subject="heal.>"))],
                           check_every_s=0.1)
    try:
        assert await keeper.ensure()
        sub = await js.pull_subscribe_bind(durable="reader", stream="HEAL")
        await keeper.start()
        with caplog.at_level(logging.WARNING, logger="bus.storage"):
            await js.delete_consumer("HEAL", "reader")
            await until(lambda: keeper.recreated.get("HEAL/reader") == 1, "consumer recreated")
            await js.delete_stream("HEAL")
            await until(lambda: keeper.recreated.get("HEAL") == 1 and keeper.recreated.get("HEAL/reader") == 2,
                        "stream and consumer recreated")
        assert any("stream HEAL was missing; recreated it" in r.getMessage() for r in caplog.records)
        assert any("consumer HEAL/reader was missing; recreated it" in r.getMessage() for r in caplog.records)
        # the subscription bound before the deletions still consumes from the recreated consumer
        await js.publish("heal.x", b"after")
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"after"]
        await keeper.watch.check()  # its loop runs
    finally:
        await keeper.stop()
        await nc.close()


async def test_keeper_loop_death_is_seen_by_its_watch(nc: nats.NATS) -> None:
    from supervisors.watch import LoopDied

    keeper = StorageKeeper(nc.jetstream(), "test", [], check_every_s=0.1)
    await keeper.start()
    assert keeper._task is not None
    keeper._task.cancel()
    await asyncio.sleep(0.05)
    with pytest.raises(LoopDied, match="test storage keeper was cancelled"):
        await keeper.watch.check()
    await keeper.stop()


async def test_raw_publish_async_leaks_slots_and_the_wrapper_does_not(nc: nats.NATS) -> None:
    """nats-py takes a publish slot before it validates: 10 bad publishes exhaust a 10-slot context for good.
    Through :func:`publish_async`, 50 bad publishes hold no slot and valid ones still go through."""
    await ensure_stream(nc.jetstream(), StreamSpec(name="SLOTS", subjects=["slots.>"]))
    raw = nc.jetstream(publish_async_max_pending=10)
    for _ in range(10):
        with pytest.raises(nats.errors.BadSubjectError):
            await raw.publish_async("slots.a\nb", b"x", wait_stall=0.1)
    assert raw.publish_async_pending() == 10  # leaked: nothing will ever resolve them
    with pytest.raises(nats.js.errors.TooManyStalledMsgsError):
        await raw.publish_async("slots.ok", b"x", wait_stall=0.1)

    js = nc.jetstream(publish_async_max_pending=10)
    too_big = b"x" * (nc.max_payload + 1)
    for i in range(50):
        with pytest.raises(PublishRefused):
            if i % 2:
                await publish_async(js, "slots.a\nb", b"x", wait_stall=0.1)
            else:  # nats-py refuses it only after taking the slot: the wrapper gives the slot back
                await publish_async(js, "slots.big", too_big, wait_stall=0.1)
    assert js.publish_async_pending() == 0
    acks = [await publish_async(js, f"slots.{i}", b"ok", wait_stall=1.0) for i in range(20)]
    assert [(await a).stream for a in acks] == ["SLOTS"] * 20
    await asyncio.sleep(0)  # done-callbacks (which free the slots) run on the next loop turn
    assert js.publish_async_pending() == 0


def test_one_error_contract_for_every_bus_failure() -> None:
    from bus.errors import MalformedPayload, NoResponders, RemoteError, RequestTimeout, error_contract
    from schemas.wire import ErrorReply

    cases = {
        RemoteError(ErrorReply(code=ErrorCode.OVERLOADED, message="busy", retryable=True)): ("overloaded", True),
        RequestTimeout("trinity.agent.1.call", 2.0): ("deadline", True),
        NoResponders("trinity.agent.1.call"): ("unavailable", False),
        MalformedPayload("RouteLogits", "bad json"): ("malformed", False),
        StreamMissing("gone"): ("unavailable", True),
        StoreFull("full"): ("unavailable", True),
        StoreTooSmall("small"): ("unavailable", False),
        PublishRefused("bad subject"): ("invalid", False),
    }
    for exc, (code, retryable) in cases.items():
        reply = error_contract(exc, "s")
        assert reply is not None and (reply.code.value, reply.retryable) == (code, retryable), exc
    assert error_contract(ValueError("a bug")) is None


async def test_a_poke_checks_at_once_and_a_burst_of_pokes_coalesces(fresh_nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    keeper = StorageKeeper(js, "test", [StreamSpec(name="POKE", subjects=["poke.>"])], check_every_s=600.0)
    try:
        assert await keeper.ensure()
        await keeper.start()
        await js.delete_stream("POKE")
        checks = keeper.checks
        for _ in range(50):  # every failed publish of a burst pokes
            keeper.poke()
            await asyncio.sleep(0.01)
        await until(lambda: keeper.recreated.get("POKE") == 1, "recreated on a poke, long before check_every_s")
        await asyncio.sleep(0.3)
        assert 1 <= keeper.checks - checks <= 4  # 50 pokes in 0.5 s: a few checks, not 50
        await js.publish("poke.x", b"stored")
    finally:
        await keeper.stop()
        await nc.close()
