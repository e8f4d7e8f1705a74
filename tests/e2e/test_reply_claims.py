"""Cluster-wide dedupe of request/reply runs: two coordinators on their own connections to one real nats-server,
each handed the same request id (the handler called directly, so that each surely gets it; the queue group would
pick one at random). One run, one stored result, every caller answered with it; another payload under the id is
refused; a coordinator that dies or drains mid-run leaves the run to the other, which resumes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import nats
import pytest
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from bus import subjects
from bus.codec import encode
from bus.embedded import NatsServerProcess
from bus.errors import Rejected
from bus.jetstream import MSG_ID_HEADER
from bus.provenance import Provenance
from bus.service import RequestContext
from config.coordinator import CoordinatorSettings
from ops.client import build_request, stored_result, submit, submit_job
from schemas import AgentCallIntent, CoordinationRequest, CoordinationResult, ErrorCode, RunStatus, StopReason
from tests.coordinator.fakes import FakeWorld
from tests.e2e.support import results_stored
from tests.e2e.test_jobs import Scripted, scripted  # noqa: F401  (the fixture)
from tests.waiting import until

StartPair = Callable[..., Awaitable[tuple[CoordinatorActor, CoordinatorActor]]]
FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=10.0, role_inject_mode="bus")


def ctx(req: CoordinationRequest) -> RequestContext:
    """What the endpoint hands the handler for ``req``."""
    return RequestContext(subject="trinity.coord.request", headers={},
                          provenance=Provenance(request_id=req.request_id), received_at=time.time())


def same(a: CoordinationResult, b: CoordinationResult) -> bool:
    return msgspec.json.encode(a) == msgspec.json.encode(b)


def agents_called(calls: list[AgentCallIntent]) -> dict[int, int]:
    return dict(Counter(c.agent_id for c in calls))


@pytest.fixture
async def pair(fresh_nats_server: NatsServerProcess) -> AsyncIterator[StartPair]:
    """Starts two coordinators (each on its own connection) with the given settings; drains them afterwards."""
    started: list[CoordinatorActor] = []

    async def start(settings: CoordinatorSettings = FAST) -> tuple[CoordinatorActor, CoordinatorActor]:
        for _ in range(2):
            actor = CoordinatorActor(await nats.connect(fresh_nats_server.url), settings)
            await actor.start()
            started.append(actor)
        return started[-2], started[-1]

    yield start
    for actor in started:
        if not actor.nc.is_closed:
            await actor.drain(timeout=2.0)
            await actor.nc.close()
        actor.dedupe.cancel_all()





@pytest.fixture
async def client(fresh_nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    nc = await nats.connect(fresh_nats_server.url)
    yield nc
    await nc.close()


async def test_one_id_sent_to_two_coordinators_runs_once_and_both_get_its_result(
        scripted: Scripted, pair: StartPair, client: Client) -> None:  # noqa: F811
    world = await scripted(slow_agent_s=0.5)
    a, b = await pair()
    req = build_request("What is 17 + 25?", request_id=f"rr-{uuid.uuid4().hex[:8]}")
    ra, rb = await asyncio.gather(a.handle(req, ctx(req)), b.handle(req, ctx(req)))
    assert (ra.status, ra.answer, ra.stop_reason, len(ra.turns)) == (RunStatus.OK, "42", StopReason.ACCEPTED, 2)
    assert same(ra, rb)
    assert agents_called(world.calls) == {1: 1, 2: 1}  # one run: its Worker and its Verifier call
    claimed = a.jobs.replies.claimed + b.jobs.replies.claimed
    joined = a.jobs.replies.joined + b.jobs.replies.joined
    assert (claimed, joined) == (1, 1)
    assert a.dedupe.stats.started == b.dedupe.stats.started == 1  # each handled it once, only one of them ran it
    assert await results_stored(client, req.request_id) == 1
    assert same(await stored_result(client, req.request_id), ra)  # type: ignore[arg-type]

    # later: the same id over the bus (either coordinator), and as a queued job: the stored result, no run
    assert same(await submit(client, req, timeout=10.0), ra)
    assert same(await submit_job(client, req, timeout=10.0), ra)  # the client finds it stored
    js = client.jetstream()  # a job queued anyway under the id: acknowledged as done, not run
    await js.publish(subjects.COORD_JOBS, encode(req), headers={MSG_ID_HEADER: req.request_id})
    await until(lambda: a.jobs.counters.already_done + b.jobs.counters.already_done == 1, "the job is found done")
    assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0
    assert agents_called(world.calls) == {1: 1, 2: 1}
    assert await results_stored(client, req.request_id) == 1

    # 8 concurrent duplicates over the bus (the queue group spreads them over both): one run
    burst = build_request("burst", request_id=f"rb-{uuid.uuid4().hex[:8]}")
    results = await asyncio.gather(*(submit(client, burst, timeout=20.0) for _ in range(8)))
    assert all(same(r, results[0]) for r in results) and results[0].answer == "42"
    assert agents_called(world.calls) == {1: 2, 2: 2}


async def test_another_payload_under_a_running_or_stored_id_is_invalid(
        scripted: Scripted, pair: StartPair) -> None:  # noqa: F811
    world = await scripted(slow_agent_s=1.0)
    a, b = await pair()
    rid = f"rc-{uuid.uuid4().hex[:8]}"
    req, other = build_request("the real one", request_id=rid), build_request("another question", request_id=rid)
    running = asyncio.create_task(a.handle(req, ctx(req)))
    await until(lambda: a.jobs.replies.claimed == 1, "a claimed the id")
    with pytest.raises(Rejected) as live:
        await b.handle(other, ctx(other))
    assert live.value.reply.code is ErrorCode.INVALID and "another payload" in live.value.reply.message
    res = await running
    assert res.answer == "42"
    with pytest.raises(Rejected) as stored:  # finished: its stored result carries the request's fingerprint
        await b.handle(other, ctx(other))
    assert stored.value.reply.code is ErrorCode.INVALID and "stored result" in stored.value.reply.message
    assert b.jobs.replies.conflicts == 2 and b.dedupe.stats.started == 2 and b.jobs.replies.claimed == 0
    assert agents_called(world.calls) == {1: 1, 2: 1}


MidRun = tuple[FakeWorld, CoordinatorActor, CoordinatorActor, CoordinationRequest,
               "asyncio.Task[CoordinationResult]", "asyncio.Task[CoordinationResult]"]


async def a_runs_b_waits(start: Scripted, pair: StartPair, lease_s: float, verifier_s: float) -> MidRun:
    """A runs a request whose Verifier (agent 2) takes ``verifier_s``: it has journaled turn 0 and calls the
    Verifier when B is handed the same request; B waits on A's live claim (leases of ``lease_s``)."""
    world = await start(slow_agents={2: verifier_s})
    a, b = await pair(msgspec.structs.replace(FAST, jobs_ack_wait_s=lease_s))
    req = build_request("survives", request_id=f"rd-{uuid.uuid4().hex[:8]}")
    first = asyncio.create_task(a.handle(req, ctx(req)))
    await until(lambda: agents_called(world.calls).get(2) == 1, "A calls the Verifier")
    waiting = asyncio.create_task(b.handle(req, ctx(req)))
    await asyncio.sleep(0.3)
    assert not waiting.done() and b.jobs.replies.claimed == 0  # waits on A's live claim
    return world, a, b, req, first, waiting


def taken_over_and_resumed(world: FakeWorld, b: CoordinatorActor, res: CoordinationResult) -> None:
    assert (res.status, res.answer, len(res.turns)) == (RunStatus.OK, "42", 2)
    assert (b.jobs.replies.claimed, b.jobs.replies.resumed) == (1, 1)
    assert agents_called(world.calls) == {1: 1, 2: 2}  # turn 0 not called again; turn 1's in-flight call was


async def test_a_coordinator_that_dies_mid_run_leaves_the_run_to_the_waiting_one(
        scripted: Scripted, pair: StartPair, client: Client) -> None:  # noqa: F811
    world, a, b, req, first, waiting = await a_runs_b_waits(scripted, pair, lease_s=1.0, verifier_s=3.0)
    await a.nc.close()  # A is gone (its connection cut): no more lease renewals
    res = await waiting  # B takes the claim over once the 1 s lease has run out
    taken_over_and_resumed(world, b, res)
    assert same(await stored_result(client, req.request_id), res)  # type: ignore[arg-type]
    first.cancel()


async def test_a_draining_coordinator_hands_the_run_to_the_waiting_one_at_once(
        scripted: Scripted, pair: StartPair, client: Client) -> None:  # noqa: F811
    # a lease of 60 s: only the explicit hand-back (lease ended on cancel) lets B take over within the test
    world, a, b, req, first, waiting = await a_runs_b_waits(scripted, pair, lease_s=60.0, verifier_s=2.0)
    await a.drain(timeout=0.1)  # the run cannot finish in 0.1 s: cancelled, its claim handed back
    with pytest.raises(asyncio.CancelledError):
        await first
    res = await asyncio.wait_for(waiting, timeout=30.0)  # hang guard, far under the 60 s lease
    taken_over_and_resumed(world, b, res)
    assert await results_stored(client, req.request_id) == 1
