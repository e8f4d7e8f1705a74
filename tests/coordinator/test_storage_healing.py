"""Self-healing storage at the coordinator, on real nats-servers: deleted streams and consumers come back and
the next jobs are stored and traced; a store too small is a typed, logged error while request/reply keeps
answering; a full results stream is not mistaken for "already stored"; stored results and the dedupe cache
are bounded by bytes; the trace publisher's loop is watched."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import msgspec
import nats
import nats.js.errors
import pytest

from actors.coordinator.actor import CoordinatorActor
from actors.coordinator.bounds import bound_result, encoded_size
from actors.coordinator.dedupe import Deduper
from actors.coordinator.tracing import TracePublisher
from actors.role_injector.actor import local_injector, registry_from_settings
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from bus.jetstream import ensure_stream, trace_stream_spec
from bus.storage import StoreTooSmall
from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from ops.client import stored_result, submit_job
from schemas import CoordinationRequest, CoordinationResult, Role, RunStatus
from schemas.trace import RunStarted
from supervisors.watch import LoopDied, LoopStalled
from tests.coordinator.fakes import BusFakes, FakeWorld, plan_of, reply_by_role
from tests.waiting import until as wait_until

W, V = Role.WORKER, Role.VERIFIER
GUARD_S = 60.0  # hang guard only
HEAL = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_mode="local", storage_check_s=0.2,
                           jobs_ack_wait_s=5.0)


def rid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def world() -> FakeWorld:
    return FakeWorld(plan_of([(1, W), (2, V)]), reply_by_role(worker="42", verifier="ACCEPT"))


async def until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pred, what, guard_s=GUARD_S, poll_s=0.05)


async def start_node(nc: nats.NATS, settings: CoordinatorSettings) -> tuple[CoordinatorActor, BusFakes]:
    fakes = BusFakes(nc, world())
    await fakes.start()
    injector = local_injector(registry_from_settings(RoleInjectorSettings()))
    coord = CoordinatorActor(nc, settings, local_injector=injector)
    await coord.start()
    return coord, fakes


async def traced(js: nats.js.JetStreamContext, request_id: str) -> bool:
    try:
        await js.get_last_msg(subjects.TRACE_STREAM, subjects.trace(request_id, "run_started"))
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_deleted_streams_and_consumer_are_recreated_and_the_next_runs_stored_and_traced(
        fresh_nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    coord, fakes = await start_node(nc, HEAL)
    try:
        first = CoordinationRequest(request_id=rid(), query="q")
        assert (await submit_job(nc, first, timeout=GUARD_S)).answer == "42"
        with caplog.at_level(logging.WARNING, logger="bus.storage"):
            for stream in (subjects.RESULTS_STREAM, subjects.TRACE_STREAM, subjects.JOBS_STREAM):
                await js.delete_stream(stream)  # the jobs stream takes the coordinators' consumer with it
            await js.delete_key_value("TRINITY_RUNS")  # the run journal (a key-value bucket)
            await until(lambda: all(coord.storage.recreated.get(k) == 1 for k in (
                subjects.RESULTS_STREAM, subjects.TRACE_STREAM, subjects.JOBS_STREAM, "KV_TRINITY_RUNS",
                f"{subjects.JOBS_STREAM}/{subjects.JOBS_CONSUMER}")), "every stream and the consumer recreated")
        lines = [r.getMessage() for r in caplog.records]
        for stream in (subjects.RESULTS_STREAM, subjects.TRACE_STREAM, subjects.JOBS_STREAM):
            assert f"coordinator: stream {stream} was missing; recreated it" in lines
        assert "coordinator: key-value bucket TRINITY_RUNS was missing; recreated it" in lines
        reqs = [CoordinationRequest(request_id=rid(), query=f"q{i}") for i in range(8)]
        results = await asyncio.gather(*(submit_job(nc, r, timeout=GUARD_S) for r in reqs))
        assert [r.answer for r in results] == ["42"] * 8
        stored = [await stored_result(nc, r.request_id) for r in reqs]
        assert sum(s is not None and s.status is RunStatus.OK for s in stored) == 8  # stored after deletion 8/8
        assert await coord.traces.flush(10.0)
        assert [await traced(js, r.request_id) for r in reqs] == [True] * 8  # untraced runs 0
        # a consumer deleted on its own comes back too, and jobs keep flowing through the old binding
        await js.delete_consumer(subjects.JOBS_STREAM, subjects.JOBS_CONSUMER)
        await until(lambda: coord.storage.recreated.get(f"{subjects.JOBS_STREAM}/{subjects.JOBS_CONSUMER}") == 2,
                    "consumer recreated")
        late = CoordinationRequest(request_id=rid(), query="late")
        assert (await submit_job(nc, late, timeout=GUARD_S)).answer == "42"
        for w in coord.watches():
            await w.check()
    finally:
        await coord.drain(timeout=2.0)
        await fakes.drain()
        await nc.close()


async def test_store_too_small_is_typed_and_request_reply_keeps_answering(caplog: pytest.LogCaptureFixture) -> None:
    srv = NatsServerProcess.start(name="trinity-test-small-store", max_file_store="1MB")
    nc = await nats.connect(srv.url)
    try:
        with caplog.at_level(logging.INFO):
            coord, fakes = await start_node(nc, HEAL)  # before: a bare ServerError() and a crash loop
        try:
            assert isinstance(coord.storage.error, StoreTooSmall) and not coord.jobs_started
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and "StoreTooSmall" in errors[0] and "max_file_store" in errors[0], errors
            for i in range(3):
                res = await rpc.request(nc, subjects.coord_request(), CoordinationRequest(request_id=rid(), query="q"),
                                        CoordinationResult, timeout=GUARD_S)
                assert res.status is RunStatus.OK and res.answer == "42", i
            # no run journal: each request ran here without a cluster-wide claim, said once in the log
            assert coord.jobs.replies.local == 3 and coord.jobs.replies.claimed == 0
            unclaimed = [r for r in caplog.records if "without a cluster-wide claim" in r.getMessage()]
            assert len(unclaimed) == 1 and unclaimed[0].levelno == logging.WARNING
            for w in coord.watches():
                await w.check()
            assert coord.stats()["storage"]["error"].startswith("StoreTooSmall")
        finally:
            await coord.drain(timeout=2.0)
            await fakes.drain()
    finally:
        await nc.close()
        srv.close()


async def test_a_full_results_stream_is_not_taken_for_a_stored_result(fresh_nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    settings = msgspec.structs.replace(HEAL, results_max_bytes=16_384, result_max_bytes=4096, jobs_max_deliver=50)
    coord, fakes = await start_node(nc, settings)
    try:
        js = nc.jetstream()
        filler = 0
        with pytest.raises(nats.js.errors.APIError, match="maximum bytes exceeded"):
            while True:  # fill the results stream with other results
                await js.publish(subjects.coord_result(f"fill{filler}"), b"x" * 3000)
                filler += 1
        job = CoordinationRequest(request_id=rid(), query="q")
        with pytest.raises(Exception):  # noqa: B017 - the client times out: no result can be stored
            await submit_job(nc, job, timeout=3.0)
        counters = coord.jobs.counters
        assert counters.store_failed >= 1 and counters.already_done == 0 and counters.requeued >= 1
        assert await stored_result(nc, job.request_id) is None
        # space comes back (an operator purges old results): the handed-back job is stored
        await js.purge_stream(subjects.RESULTS_STREAM)
        assert (await submit_job(nc, job, timeout=GUARD_S)).answer == "42"
    finally:
        await coord.drain(timeout=2.0)
        await fakes.drain()
        await nc.close()


def big_result(query_bytes: int, turns: int = 5) -> CoordinationResult:
    """A run's result with a large query, built by the state machine's own fakes."""
    from actors.coordinator.state_machine import Policy, coordinate

    fw = FakeWorld(plan_of([(1, W)] * (turns - 1) + [(2, V)]), reply_by_role(worker="42 " * 100, verifier="REVISE"))
    req = CoordinationRequest(request_id="big", query="x" * query_bytes)
    return asyncio.run(coordinate(req, fw.ports(), Policy()))


def test_stored_results_are_bounded_by_bytes() -> None:
    res = big_result(190_000)
    assert encoded_size(res) > 2 * 190_000  # the query is repeated in every turn's intent
    bounded = bound_result(res, 65_536)
    assert encoded_size(bounded) <= 65_536
    assert bounded.answer == res.answer and len(bounded.turns) == len(res.turns)
    assert "…[trimmed" in bounded.turns[0].intent.messages[-1].content  # type: ignore[union-attr]
    small = big_result(100)
    assert bound_result(small, 65_536) is small  # what fits is kept as it is


async def test_dedupe_cache_is_bounded_by_bytes() -> None:
    d: Deduper[bytes] = Deduper(capacity=10_000, ttl_s=600.0, clock=time.monotonic, max_bytes=10_000, size=len,
                                max_entry_bytes=4_000)

    async def value(n: int) -> bytes:
        return b"v" * n

    for i in range(100):
        await d.run(f"q{i}", "fp", lambda: value(1_000))
    assert d.bytes <= 10_000 and len(d) == 10 and d.stats.evicted == 90
    await d.run("huge", "fp", lambda: value(50_000))  # too large to cache: only its fingerprint is kept
    assert d.bytes <= 10_000 and d.stats.too_large == 1
    runs = 0

    async def counted() -> bytes:
        nonlocal runs
        runs += 1
        return b"v" * 50_000

    await d.run("huge", "fp", counted)
    assert runs == 1  # not cached, so it ran again


class _HangingJs:
    """A JetStream context whose async publish never returns (a wedged connection)."""

    async def publish_async(self, *a: object, **kw: object) -> None:
        await asyncio.Event().wait()


async def test_trace_publisher_loop_death_and_stall_are_seen(nc: nats.NATS) -> None:
    pub = TracePublisher(nc.jetstream(), capacity=10)
    await pub.start()
    assert pub._task is not None
    pub._task.cancel()
    await asyncio.sleep(0.05)
    with pytest.raises(LoopDied, match="coordinator trace publisher was cancelled"):
        await pub.watch.check()
    await pub.close(timeout=0.1)

    stuck = TracePublisher(_HangingJs(), capacity=10, publish_timeout_s=0.05, retry_window_s=0.05)  # type: ignore[arg-type]
    await stuck.start()
    await stuck.watch.check()  # idle is not a stall
    ev = RunStarted(request_id="q1", event_id="e1", causation_id="q1", ts=0.0, query_sha256="0" * 64)
    await stuck.emit(ev)
    await stuck.emit(RunStarted(request_id="q1", event_id="e2", causation_id="q1", ts=0.0, query_sha256="0" * 64))
    await asyncio.sleep(stuck.watch.stall_after_s + 0.1)
    with pytest.raises(LoopStalled, match="2 messages are pending"):
        await stuck.watch.check()
    await stuck.close(timeout=0.1)


async def test_a_node_on_a_store_too_small_stays_up_and_answers(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The whole node (coordinator + trace sink, the real factories): before, both crash-looped on a bare
    ``ServerError()`` until the node gave up and exited."""
    from config.settings import load_settings
    from ops.node import Node

    caplog.set_level(logging.INFO)
    srv = NatsServerProcess.start(name="trinity-test-small-node", max_file_store="1MB")
    settings = load_settings(overrides=[
        f'nats.servers=["{srv.url}"]', 'node.actors=["trace_sink", "coordinator"]', 'node.node_id="small"',
        'coordinator.role_inject_mode="local"', 'fleet.placement="subject"', "coordinator.storage_check_s=0.2",
        "trace_sink.storage_check_s=0.2", f'trace_sink.jsonl.path="{tmp_path / "t.jsonl"}"',
        'trace_sink.otel.exporter="none"'])
    node = Node(settings)
    nc = await nats.connect(srv.url)
    fakes = BusFakes(nc, world())
    await fakes.start()
    await node.start()
    try:
        await asyncio.wait_for(node.wait_ready(), GUARD_S)
        await asyncio.sleep(1.5)  # several keeper rounds, each failing with the same typed error
        for i in range(3):
            res = await rpc.request(nc, subjects.coord_request(), CoordinationRequest(request_id=rid(), query="q"),
                                    CoordinationResult, timeout=GUARD_S)
            assert res.status is RunStatus.OK and res.answer == "42", i
        assert node.status().restarts == {"trace_sink": 0, "coordinator": 0} and node.ready
    finally:
        await node.stop()
        await fakes.drain()
        await nc.close()
        srv.close()
    typed = [r.getMessage() for r in caplog.records if "StoreTooSmall" in r.getMessage()]
    assert {m.split(":")[0] for m in typed} == {"coordinator", "trace sink (trace-sink)"}, typed  # one line each
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


async def test_trace_publisher_never_leaks_publish_slots_nor_retries_what_is_refused() -> None:
    """Issue 14: each bad request leaked ~104 of nats-py's async publish slots, and after 41 requests nothing
    was traced. Here 200 events the server can never take (over its max_payload: nats-py refuses them after
    taking a slot) go through a publisher with 50 slots; the good events after them are all stored."""
    srv = NatsServerProcess.start(name="trinity-test-slots", config_text="max_payload: 4096\n")
    nc = await nats.connect(srv.url)
    try:
        js = nc.jetstream(publish_async_max_pending=50)
        await ensure_stream(js, trace_stream_spec())
        pub = TracePublisher(js, capacity=1000, publish_timeout_s=1.0)
        await pub.start()
        for i in range(200):
            await pub.emit(RunStarted(request_id="bad", event_id=f"b{i}", causation_id="bad", ts=0.0,
                                      query_sha256="0" * 64, query_text="x" * 5000))
        for i in range(10):
            await pub.emit(RunStarted(request_id="good", event_id=f"g{i}", causation_id="good", ts=0.0,
                                      query_sha256="0" * 64))
        assert await pub.flush(GUARD_S)
        assert pub.counters.as_dict() == {"emitted": 210, "published": 10, "dropped": 0, "failed": 0, "refused": 200}
        await asyncio.sleep(0)
        assert js.publish_async_pending() == 0
        info = await js.stream_info(subjects.TRACE_STREAM)
        assert info.state.messages == 10
        await pub.close()
    finally:
        await nc.close()
        srv.close()
