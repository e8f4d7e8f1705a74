"""The durable work queue in one process over a real nats-server: one stored result per job, resubmission,
late clients, and the explicit failure of a job that ran out of deliveries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from actors.coordinator.actor import CoordinatorActor
from bus import subjects
from bus.codec import encode
from bus.embedded import NatsServerProcess
from bus.errors import RemoteError
from bus.jetstream import MSG_ID_HEADER, ensure_consumer, ensure_stream, jobs_consumer_spec, jobs_stream_spec
from config.coordinator import CoordinatorSettings
from ops.client import JobQueueMissing, build_request, stored_result, submit, submit_job
from schemas import ErrorCode, RunStatus, StopReason
from tests.coordinator.fakes import BusFakes, FakeWorld
from tests.e2e.fake_services import world
from tests.e2e.support import results_stored, trace_of

FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_mode="bus")

Scripted = Callable[..., Awaitable[FakeWorld]]


async def _shrink_dedupe_window(js: JetStreamContext, seconds: float = 0.2) -> None:
    """Shorten the jobs stream's duplicate window, so a test can queue a job twice under its own id (a job
    whose Nats-Msg-Id is not its request id is terminated unrun)."""
    config = (await js.stream_info(subjects.JOBS_STREAM)).config
    config.duplicate_window = seconds
    await js.update_stream(config)


@pytest.fixture
async def scripted(fresh_nats_server: NatsServerProcess) -> AsyncIterator[Scripted]:
    """Starts the scripted fake runtime and agents (agent 1 answers ``42`` as Worker, agent 2 ``ACCEPT``, agent 1
    taking ``slow_agent_s``, or each agent in ``slow_agents`` its seconds) and a role injector on the test's own
    server; drains them afterwards."""
    from actors.role_injector.actor import RoleInjectorActor

    nc = await nats.connect(fresh_nats_server.url)
    running: list[BusFakes | RoleInjectorActor] = []

    async def start(slow_agent_s: float = 0.0, slow_agents: dict[int, float] | None = None) -> FakeWorld:
        w = world()
        slow = slow_agents if slow_agents is not None else ({1: slow_agent_s} if slow_agent_s else None)
        fakes = BusFakes(nc, w, slow_agents=slow)
        injector = RoleInjectorActor(nc)
        for actor in (fakes, injector):
            await actor.start()
            running.append(actor)
        return w

    yield start
    for actor in reversed(running):
        await actor.drain()
    await nc.close()


async def test_job_runs_once_and_its_result_is_stored_for_late_clients(
        fresh_nats_server: NatsServerProcess, scripted: Scripted) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    with pytest.raises(JobQueueMissing):  # no coordinator has created the queue yet
        await submit_job(client, build_request("early?"), timeout=2.0)
    fake_world = await scripted()
    coordinator = CoordinatorActor(nc, FAST)
    await coordinator.start()
    try:
        req = build_request("What is 17 + 25?", request_id=f"j-{uuid.uuid4().hex[:8]}")
        res = await submit_job(client, req, timeout=10.0)
        assert (res.status, res.answer, res.stop_reason, len(res.turns)) == (RunStatus.OK, "42", StopReason.ACCEPTED, 2)
        assert await results_stored(client, req.request_id) == 1

        # the same id again (a retry, or another client): the stored result, no second run
        again = await submit_job(client, req, timeout=10.0)
        assert msgspec.json.encode(again) == msgspec.json.encode(res)
        late = await nats.connect(fresh_nats_server.url)
        assert msgspec.json.encode(await stored_result(late, req.request_id)) == msgspec.json.encode(res)
        await late.close()
        assert coordinator.dedupe.stats.started == 1 and len(fake_world.calls) == 2

        # a job stored twice on the queue (published past the stream's dedupe window) still gives one result
        dup = build_request("twice", request_id=f"j-{uuid.uuid4().hex[:8]}")
        js = client.jetstream()
        await _shrink_dedupe_window(js)
        await js.publish(subjects.COORD_JOBS, encode(dup), headers={MSG_ID_HEADER: dup.request_id})
        await asyncio.sleep(0.3)
        await js.publish(subjects.COORD_JOBS, encode(dup), headers={MSG_ID_HEADER: dup.request_id})
        for _ in range(100):
            if coordinator.jobs.counters.received >= 3 and coordinator.jobs.running == 0:
                break
            await asyncio.sleep(0.05)
        assert await results_stored(client, dup.request_id) == 1
        assert (await stored_result(client, dup.request_id)).status == RunStatus.OK  # type: ignore[union-attr]
        assert coordinator.jobs.counters.already_done >= 1
        assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0  # every job acknowledged

        assert coordinator.stats()["jobs"]["results"] == 2  # one stored result per request id

        # the request/reply path works beside the queue, and stores its result like a job (cluster-wide dedupe)
        rr = await submit(client, build_request("direct", request_id="rr-1"), timeout=10.0)
        assert rr.answer == "42"
        assert msgspec.json.encode(await stored_result(client, "rr-1")) == msgspec.json.encode(rr)
    finally:
        await coordinator.drain(timeout=2.0)
        await nc.close()
        await client.close()


async def test_a_job_that_runs_out_of_deliveries_fails_explicitly(fresh_nats_server: NatsServerProcess) -> None:
    settings = msgspec.structs.replace(FAST, jobs_ack_wait_s=1.0, jobs_max_deliver=2, role_inject_mode="bus")
    client = await nats.connect(fresh_nats_server.url)
    js = client.jetstream()
    await ensure_stream(js, jobs_stream_spec())
    await ensure_consumer(js, subjects.JOBS_STREAM, jobs_consumer_spec(ack_wait_s=1.0, max_deliver=2))
    req = build_request("never finishes", request_id=f"x-{uuid.uuid4().hex[:8]}")
    await js.publish(subjects.COORD_JOBS, encode(req), headers={MSG_ID_HEADER: req.request_id})
    # two coordinators take the job and die without acknowledging it (a raw consumer that never acks)
    crashed = await js.pull_subscribe_bind(durable=subjects.JOBS_CONSUMER, stream=subjects.JOBS_STREAM)
    seen = []
    for _ in range(2):
        msgs = await crashed.fetch(1, timeout=5.0)
        seen.append(msgs[0].metadata.num_delivered)
    await crashed.unsubscribe()
    assert seen == [1, 2]
    nc = await nats.connect(fresh_nats_server.url)
    coordinator = CoordinatorActor(nc, settings)
    await coordinator.start()
    try:
        with pytest.raises(RemoteError) as ei:
            await submit_job(client, req, timeout=10.0)
        assert ei.value.code == ErrorCode.UNAVAILABLE and "delivered 2 times" in ei.value.message
        assert coordinator.jobs.counters.exhausted == 1
        for _ in range(100):  # removed from the queue right after its failure is stored
            if (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0
        await coordinator.traces.flush(5.0)
        kinds = [(e.kind, getattr(e, "error_code", "")) for e in await trace_of(client, req.request_id)]
        assert kinds == [("run_failed", "deliveries_exhausted")]
    finally:
        await coordinator.drain(timeout=2.0)
        await nc.close()
        await client.close()


async def test_a_draining_coordinator_hands_its_running_job_back_at_once(
        fresh_nats_server: NatsServerProcess, scripted: Scripted) -> None:
    # the ack wait is long: only an explicit hand-back (nak) can get the job to the other coordinator in time
    settings = msgspec.structs.replace(FAST, jobs_ack_wait_s=60.0, agent_timeout_s=30.0)
    nc_a = await nats.connect(fresh_nats_server.url)
    nc_b = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    await scripted(slow_agent_s=5.0)
    first, second = CoordinatorActor(nc_a, settings), CoordinatorActor(nc_b, settings)
    await first.start()
    try:
        req = build_request("slow one", request_id=f"d-{uuid.uuid4().hex[:8]}")
        waiting = asyncio.create_task(submit_job(client, req, timeout=20.0))
        for _ in range(200):
            if first.jobs.running == 1:
                break
            await asyncio.sleep(0.02)
        assert first.jobs.running == 1
        await second.start()
        await first.drain(timeout=0.1)  # the run cannot finish in 0.1 s: it goes back to the queue
        res = await waiting
        assert (res.status, res.answer) == (RunStatus.OK, "42")
        assert first.jobs.counters.requeued == 1 and first.jobs.counters.results == 0
        assert second.jobs.counters.redelivered == 1 and second.jobs.counters.results == 1
        assert await results_stored(client, req.request_id) == 1
        await second.traces.flush(5.0)
        kinds = [e.kind for e in await trace_of(client, req.request_id)]
        # the first run was cut short (no end event); the second ran to the end
        assert kinds.count("run_redelivered") == 1 and kinds.count("run_finished") == 1, kinds
        assert kinds.index("run_redelivered") > kinds.index("run_started")
    finally:
        await second.drain(timeout=2.0)
        for c in (nc_a, nc_b, client):
            await c.close()


async def test_a_conflicting_job_under_a_running_id_does_not_take_the_result(
        fresh_nats_server: NatsServerProcess, scripted: Scripted) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    fake_world = await scripted(slow_agent_s=1.0)
    coordinator = CoordinatorActor(nc, FAST)
    await coordinator.start()
    try:
        rid = f"c-{uuid.uuid4().hex[:8]}"
        waiting = asyncio.create_task(submit_job(client, build_request("the real one", request_id=rid), timeout=20.0))
        for _ in range(200):
            if coordinator.jobs.running == 1:
                break
            await asyncio.sleep(0.02)
        other = build_request("another question under the same id", request_id=rid)
        await _shrink_dedupe_window(client.jetstream())
        await asyncio.sleep(0.3)  # past the dedupe window: the stream takes a second job under the id
        await client.jetstream().publish(subjects.COORD_JOBS, encode(other), headers={MSG_ID_HEADER: rid})
        res = await waiting
        assert (res.status, res.answer) == (RunStatus.OK, "42")
        assert coordinator.jobs.counters.conflicts == 1 and coordinator.jobs.counters.results == 1
        assert await results_stored(client, rid) == 1
        assert len(fake_world.calls) == 2  # one run only: its Worker and Verifier calls
    finally:
        await coordinator.drain(timeout=2.0)
        await nc.close()
        await client.close()
