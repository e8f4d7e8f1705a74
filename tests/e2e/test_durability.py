"""Durable execution and backpressure, with coordinators in processes of their own (``run.py node``) where the
claim is about crashes: SIGKILL mid-run, SIGSTOP past the ack wait; and jobs against one runtime of small
capacity. The fake agents log every request and every call they make (``--calls-log``)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from bus import subjects
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from ops.client import build_request, submit_job
from schemas import RunStatus, StopReason
from tests.e2e import procs
from tests.e2e.durability_support import calls_of, submit_all, traces, wait_for_event
from tests.e2e.fake_services import fake_services
from tests.e2e.support import results_stored

ACK_WAIT = 2.0
COORDINATOR = (f"coordinator.jobs_ack_wait_s={ACK_WAIT}", "coordinator.jobs_max_deliver=4",
               "coordinator.role_inject_mode=local", "coordinator.route_timeout_s=3", "coordinator.agent_timeout_s=6",
               "nats.reconnect_wait_s=0.2")


@pytest.fixture
async def client(fresh_nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    nc = await nats.connect(fresh_nats_server.url, name="durability-test")
    yield nc
    await nc.close()


async def test_sigkill_mid_run_20_jobs_resume_each_stored_once_and_no_agent_called_twice(
        fresh_nats_server: NatsServerProcess, client: Client, tmp_path: Path) -> None:
    urls = [fresh_nats_server.url]
    log = tmp_path / "calls.log"
    fake = procs.fakes("fakes", urls, tmp_path, agent_delay=2.0, extra=["--calls-log", str(log), "--idempotent"])
    first = procs.node("coord-a", urls, "coordinator", tmp_path, *COORDINATOR)
    second: procs.Proc | None = None
    try:
        rids = [f"dk-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
        tasks = submit_all(client, rids)
        second = await asyncio.to_thread(procs.node, "coord-b", urls, "coordinator", tmp_path, *COORDINATOR)
        await wait_for_event(client, rids, "agent_call_finished")  # turn 0 done everywhere, turn 1's calls running
        first.kill()
        results = await asyncio.gather(*tasks)
        for rid, res in zip(rids, results, strict=True):
            assert (res.request_id, res.status, res.answer, res.stop_reason, len(res.turns)) == (
                rid, RunStatus.OK, "42", StopReason.ACCEPTED, 2)
            assert await results_stored(client, rid) == 1
        requests, calls = calls_of(log)
        assert sorted(calls) == sorted(f"{rid}:{t}:{a}" for rid in rids for t, a in ((0, 1), (1, 2)))
        assert set(calls.values()) == {1}, calls  # 0 repeated agent calls: 40 calls for 40 turns
        # the journal: no completed turn was asked again; only the calls in flight at the kill were (and joined)
        assert all(requests[f"{rid}:0:1"] == 1 for rid in rids), requests
        assert sum(requests.values()) - len(calls) <= len(rids)
        by_rid = await traces(client)
        resumed = 0
        for rid in rids:
            kinds = [e.kind for e in by_rid[rid]]
            assert kinds.count("run_finished") == 1 and kinds.count("run_redelivered") == 1, kinds
            starts = [e for e in by_rid[rid] if e.kind == "run_started"]
            resumed += any(e.attrs.get("resumed_at_turn") == "1" for e in starts)  # type: ignore[attr-defined]
        assert resumed == len(rids)
        assert (await client.jetstream().stream_info(subjects.JOBS_STREAM)).state.messages == 0
    finally:
        for p in (second, first, fake):
            if p is not None:
                p.stop()


async def test_sigstop_past_the_ack_wait_no_job_runs_twice_to_completion(
        fresh_nats_server: NatsServerProcess, client: Client, tmp_path: Path) -> None:
    urls = [fresh_nats_server.url]
    log = tmp_path / "calls.log"
    fake = procs.fakes("fakes", urls, tmp_path, agent_delay=1.5, extra=["--calls-log", str(log)])
    first = procs.node("coord-a", urls, "coordinator", tmp_path, *COORDINATOR)
    second: procs.Proc | None = None
    try:
        rids = [f"ds-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
        tasks = submit_all(client, rids)
        second = await asyncio.to_thread(procs.node, "coord-b", urls, "coordinator", tmp_path, *COORDINATOR)
        await wait_for_event(client, rids, "agent_call_started")
        os.kill(first.proc.pid, signal.SIGSTOP)  # paused mid-call, past the ack wait: B takes the jobs over
        await asyncio.sleep(3 * ACK_WAIT + 1.0)
        os.kill(first.proc.pid, signal.SIGCONT)
        results = await asyncio.gather(*tasks)
        await asyncio.sleep(2.0)  # A's late replies arrive: it must stop, not finish a second time
        by_rid = await traces(client)
        for rid, res in zip(rids, results, strict=True):
            assert (res.status, res.answer) == (RunStatus.OK, "42")
            assert await results_stored(client, rid) == 1
            kinds = [e.kind for e in by_rid[rid]]
            assert kinds.count("run_finished") == 1 and "run_failed" not in kinds, kinds
        assert "claimed by another coordinator" in first.text()
        _, calls = calls_of(log)
        # no agent cache here: only the call each job had in flight at the pause may be repeated (by B), and
        # no completed turn is (A recorded it, B resumed after it)
        assert len(calls) == 2 * len(rids) and max(calls.values()) <= 2, calls
        assert sum(calls.values()) - len(calls) <= len(rids), calls
    finally:
        with_pid = first.proc.poll() is None
        if with_pid:
            os.kill(first.proc.pid, signal.SIGCONT)
        for p in (second, first, fake):
            if p is not None:
                p.stop()


OVERLOAD = CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=5.0, role_inject_mode="bus",
                               jobs_concurrency=64, route_attempts=1, trace_enabled=False,
                               overload_backoff_s=0.02, overload_backoff_max_s=0.5)


async def _overload_run(url: str, n: int, settings: CoordinatorSettings) -> tuple[Counter[str], CoordinatorActor]:
    from actors.role_injector.actor import RoleInjectorActor

    conns = [await nats.connect(url) for _ in range(3)]
    services = fake_services(conns[0], conns[0], route_delay=0.01, runtime_capacity=2, runtime_id="tiny")
    injector = RoleInjectorActor(conns[0])
    coordinator = CoordinatorActor(conns[1], settings)
    for s in services:
        await s.start()
    await injector.start()
    await coordinator.start()
    try:
        rids = [f"ov-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        results = await asyncio.gather(*submit_all(conns[2], rids, deadline_s=300.0))
        outcome = Counter(r.status.value for r in results)
        assert [await results_stored(conns[2], rid) for rid in rids[:20]] == [1] * 20
        return outcome, coordinator
    finally:
        await coordinator.drain(timeout=2.0)
        await injector.drain()
        for s in services:
            await s.drain(timeout=2.0)
        for c in conns:
            await c.close()


async def test_jobs_against_one_tiny_runtime_back_off_and_all_end_ok(fresh_nats_server: NatsServerProcess) -> None:
    outcome, coordinator = await _overload_run(fresh_nats_server.url, 200, OVERLOAD)
    assert outcome == Counter({"ok": 200}), outcome
    assert coordinator.jobs.intake.cuts >= 1  # intake followed the runtime's capacity down
    assert coordinator.stats()["jobs"]["results"] == 200


async def test_without_backoff_the_same_load_fails_jobs(fresh_nats_server: NatsServerProcess) -> None:
    """The baseline (the test above can fail): an overloaded route ends the run at once."""
    baseline = msgspec.structs.replace(OVERLOAD, overload_wait_s=0.0, jobs_adaptive_intake=False)
    outcome, _ = await _overload_run(fresh_nats_server.url, 100, baseline)
    assert outcome["failed"] > 0 and outcome["ok"] + outcome["failed"] == 100, outcome


async def test_a_job_that_cannot_proceed_goes_back_to_the_queue_and_resumes(
        fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """Turn 1 finds the only runtime overloaded for longer than ``jobs_requeue_after_s``: the job is handed back
    (nak with delay), not failed, and its redelivery resumes at turn 1 (turn 0's agent is not called again)."""
    from actors.role_injector.actor import RoleInjectorActor
    from bus.errors import Rejected
    from bus.service import ActorService, Endpoint, RequestContext
    from schemas import ErrorCode, RouteLogits, RouteRequest
    from tests.coordinator.fakes import make_logits
    from tests.e2e.fake_services import world

    w = world()
    loop = asyncio.get_running_loop()
    busy_until: list[float] = []

    async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
        if req.turn == 1:
            if not busy_until:
                busy_until.append(loop.time() + 1.0)
            if loop.time() < busy_until[0]:
                raise Rejected(ErrorCode.OVERLOADED, "at capacity", retryable=True)
        agent, role = w.route_plan(req.turn)
        return make_logits(req.request_id, req.turn, agent, role)

    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    runtime = ActorService(nc, name="busy-runtime", endpoints=[
        Endpoint("route", subjects.route("torch", "base"), RouteRequest, route, queue_group="runtimes")])
    log = tmp_path / "calls.log"
    agents = fake_services(None, nc, calls_log=str(log))[0]
    injector = RoleInjectorActor(nc)
    settings = CoordinatorSettings(role_inject_mode="bus", jobs_max_deliver=4, jobs_requeue_after_s=0.4,
                                   jobs_requeue_delay_s=0.2, overload_backoff_s=0.02, overload_backoff_max_s=0.1,
                                   route_attempts=1)
    coordinator = CoordinatorActor(nc, settings)
    for actor in (runtime, agents, injector, coordinator):
        await actor.start()
    try:
        res = await submit_job(client, build_request("busy", request_id=f"rq-{uuid.uuid4().hex[:6]}"), timeout=30.0)
        assert (res.status, res.answer, len(res.turns)) == (RunStatus.OK, "42", 2)
        jobs = coordinator.jobs.counters
        assert jobs.deferred >= 1 and jobs.requeued >= 1 and jobs.resumed >= 1 and jobs.resumed_turns >= 1, jobs
        requests, _ = calls_of(log)
        assert requests == {f"{res.request_id}:0:1": 1, f"{res.request_id}:1:2": 1}  # the redelivery resumed at 1
        assert await results_stored(client, res.request_id) == 1
    finally:
        await coordinator.drain(timeout=2.0)
        await injector.drain()
        await agents.drain(timeout=2.0)
        await runtime.drain(timeout=2.0)
        await nc.close()
        await client.close()


async def test_a_second_copy_elsewhere_waits_for_the_live_owner_and_never_takes_it_over(
        fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """Cluster-wide dedupe of a running id: the same job queued twice (past the stream's dedupe window) lands on
    two coordinators; the second waits while the first renews its lease (longer than two ack waits), then
    acknowledges its copy once the result is stored. No agent runs twice, nothing is taken over."""
    from actors.role_injector.actor import RoleInjectorActor
    from bus.codec import encode
    from bus.jetstream import MSG_ID_HEADER
    from tests.e2e.test_jobs import _shrink_dedupe_window

    log = tmp_path / "calls.log"
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    services = fake_services(nc, nc, agent_delay=2.5, calls_log=str(log))
    injector = RoleInjectorActor(nc)
    settings = CoordinatorSettings(role_inject_mode="bus", jobs_ack_wait_s=1.5, jobs_concurrency=1,
                                   agent_timeout_s=10.0)
    a, b = CoordinatorActor(await nats.connect(fresh_nats_server.url), settings), \
        CoordinatorActor(await nats.connect(fresh_nats_server.url), settings)
    for actor in (*services, injector, a, b):
        await actor.start()
    try:
        req = build_request("twice", request_id=f"tw-{uuid.uuid4().hex[:6]}")
        js = client.jetstream()
        await _shrink_dedupe_window(js)  # (after every start: a starting coordinator restores the window)
        waiting = asyncio.create_task(submit_job(client, req, timeout=30.0))
        for _ in range(200):
            if a.jobs.running + b.jobs.running == 1:
                break
            await asyncio.sleep(0.02)
        if b.jobs.running:  # name the owner a
            a, b = b, a
        await asyncio.sleep(0.3)
        await js.publish(subjects.COORD_JOBS, encode(req), headers={MSG_ID_HEADER: req.request_id})
        res = await waiting
        assert (res.status, res.answer) == (RunStatus.OK, "42")
        for _ in range(100):
            if b.jobs.counters.already_done >= 1:
                break
            await asyncio.sleep(0.05)
        assert b.jobs.counters.lease_waits >= 1 and b.jobs.counters.already_done == 1, b.jobs.counters
        assert a.jobs.counters.superseded == 0 and b.jobs.counters.results == 0
        _, calls = calls_of(log)
        assert sorted(calls.values()) == [1, 1], calls  # each of the two turns called once, by A
        assert await results_stored(client, req.request_id) == 1
        assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0
    finally:
        for c in (b, a):
            await c.drain(timeout=2.0)
            await c.nc.close()
        await injector.drain()
        for s in services:
            await s.drain(timeout=2.0)
        await nc.close()
        await client.close()


async def test_a_request_for_an_id_running_as_a_job_elsewhere_gets_that_jobs_result(
        fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """Cluster-wide dedupe for request/reply: coordinator B, asked (request/reply) for an id that runs as a queued
    job on A, answers with the job's stored result instead of running it again; another payload under the id is
    refused ``invalid``. (B's handler is called directly: over the bus the queue group may pick A.)"""
    from actors.role_injector.actor import RoleInjectorActor
    from bus.errors import Rejected
    from bus.provenance import Provenance
    from bus.service import RequestContext

    def ctx(rid: str) -> RequestContext:
        return RequestContext(subject=subjects.coord_request(), headers={}, provenance=Provenance(request_id=rid),
                              received_at=0.0)

    log = tmp_path / "calls.log"
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    services = fake_services(nc, nc, agent_delay=1.0, calls_log=str(log))
    injector = RoleInjectorActor(nc)
    settings = CoordinatorSettings(role_inject_mode="bus", jobs_ack_wait_s=3.0, agent_timeout_s=10.0)
    a = CoordinatorActor(await nats.connect(fresh_nats_server.url), settings)
    b = CoordinatorActor(await nats.connect(fresh_nats_server.url), settings)
    for actor in (*services, injector, a):
        await actor.start()
    try:
        req = build_request("joined", request_id=f"jr-{uuid.uuid4().hex[:6]}")
        waiting = asyncio.create_task(submit_job(client, req, timeout=30.0))
        for _ in range(200):
            if a.jobs.running == 1:
                break
            await asyncio.sleep(0.02)
        await b.start()
        other = build_request("another payload", request_id=req.request_id)
        with pytest.raises(Rejected) as refused:
            await b.handle(other, ctx(req.request_id))
        assert refused.value.reply.code.value == "invalid"
        joined = await b.handle(req, ctx(req.request_id))
        res = await waiting
        assert msgspec.json.encode(joined) == msgspec.json.encode(res)
        _, calls = calls_of(log)
        assert sorted(calls.values()) == [1, 1], calls  # one run, on A
        assert (b.jobs.replies.claimed, b.jobs.replies.joined, b.jobs.replies.conflicts) == (0, 1, 1)
    finally:
        for c in (b, a):
            await c.drain(timeout=2.0)
            await c.nc.close()
        await injector.drain()
        for s in services:
            await s.drain(timeout=2.0)
        await nc.close()
        await client.close()
