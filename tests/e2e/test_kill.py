"""Kill tests: a coordinator, a runtime or a NATS server dies mid-run (SIGKILL) on a 3-node JetStream cluster
on loopback, with the actors in processes of their own (``run.py node`` for coordinators; the fast fake
runtime and agents of :mod:`tests.e2e.fake_services`). Every submitted request must end with exactly one
stored result (or an explicit failure), and its trace must show what happened."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bus import subjects
from bus.embedded import NatsCluster
from bus.jetstream import wait_for_jetstream
from ops.client import build_request, submit_job
from schemas import CoordinationResult, RunStatus, StopReason
from tests.e2e import procs
from tests.e2e.support import results_stored, trace_of

ACK_WAIT = 2.0
COORDINATOR = ("coordinator.stream_replicas=3", f"coordinator.jobs_ack_wait_s={ACK_WAIT}",
               "coordinator.jobs_max_deliver=4", "coordinator.role_inject_mode=local",
               "coordinator.route_timeout_s=3", "coordinator.agent_timeout_s=5", "nats.reconnect_wait_s=0.2")


@pytest.fixture
def cluster(fresh_nats_cluster: NatsCluster) -> NatsCluster:
    """A 3-node cluster of this test's own (these tests kill its nodes)."""
    return fresh_nats_cluster


@pytest.fixture
async def client(cluster: NatsCluster) -> AsyncIterator[Client]:
    async def quiet(e: Exception) -> None:  # reconnect attempts to a killed server are expected here
        pass

    nc = await nats.connect(servers=cluster.urls, name="kill-test", reconnect_time_wait=0.2,
                            max_reconnect_attempts=-1, error_cb=quiet)
    await wait_for_jetstream(nc.jetstream(), timeout=30.0)
    yield nc
    await nc.close()


async def wait_started(nc: Client, request_ids: list[str], timeout: float = 30.0) -> None:
    """Wait until every request's run has started (its ``run_started`` event is stored)."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(request_ids)
    while pending and loop.time() < deadline:
        for rid in list(pending):
            try:
                await js.get_last_msg(subjects.TRACE_STREAM, subjects.trace(rid, "run_started"))
                pending.discard(rid)
            except nats.js.errors.NotFoundError:
                pass
        await asyncio.sleep(0.1)
    assert not pending, f"runs never started: {sorted(pending)}"


async def submit_all(nc: Client, n: int, tag: str) -> tuple[list[str], list[asyncio.Task[CoordinationResult]]]:
    rids = [f"{tag}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    tasks = [asyncio.create_task(submit_job(nc, build_request(f"question {i}", request_id=rid, deadline_s=60.0),
                                            timeout=90.0)) for i, rid in enumerate(rids)]
    return rids, tasks


async def test_coordinator_killed_mid_run_another_finishes_each_request_once(
        cluster: NatsCluster, client: Client, tmp_path: Path) -> None:
    fake = procs.fakes("fakes", cluster.urls, tmp_path, agent_delay=1.5)
    first = procs.node("coord-a", cluster.urls, "coordinator", tmp_path, *COORDINATOR)
    second: procs.Proc | None = None
    try:
        rids, tasks = await submit_all(client, 4, "ck")
        await wait_started(client, rids)  # coordinator A holds all four jobs, mid-run (agents take 1.5 s)
        second = await asyncio.to_thread(procs.node, "coord-b", cluster.urls, "coordinator", tmp_path, *COORDINATOR)
        first.kill()
        results = await asyncio.gather(*tasks)
        for rid, res in zip(rids, results, strict=True):
            assert (res.request_id, res.status, res.answer, res.stop_reason) == (rid, RunStatus.OK, "42",
                                                                                  StopReason.ACCEPTED)
            assert await results_stored(client, rid) == 1
            kinds = [e.kind for e in await trace_of(client, rid)]
            # A started it and died; JetStream redelivered it after the ack wait; B ran it to the end, once
            assert kinds.count("run_redelivered") == 1 and kinds.count("run_finished") == 1, kinds
            assert kinds.count("run_started") == 2 and kinds.index("run_redelivered") < kinds.index("run_finished")
            redelivered = next(e for e in await trace_of(client, rid) if e.kind == "run_redelivered")
            assert redelivered.delivery == 2  # type: ignore[union-attr]
        assert (await client.jetstream().stream_info(subjects.JOBS_STREAM)).state.messages == 0
    finally:
        for p in (second, first, fake):
            if p is not None:
                p.stop()


@pytest.mark.parametrize("spare", [True, False], ids=["a-spare-runtime", "the-only-runtime"])
async def test_runtime_killed_mid_run_the_retry_goes_to_a_spare_or_the_run_fails_explicitly(
        cluster: NatsCluster, client: Client, tmp_path: Path, spare: bool) -> None:
    agents = procs.fakes("agents", cluster.urls, tmp_path, serve="agents")
    runtime_a = procs.fakes("runtime-a", cluster.urls, tmp_path, serve="runtime", route_delay=1.0)
    coordinator = procs.node("coord", cluster.urls, "coordinator", tmp_path, *COORDINATOR)
    runtime_b: procs.Proc | None = None
    try:
        rids, tasks = await submit_all(client, 3, "rk")
        await wait_started(client, rids)  # every run is waiting on runtime A's (slow) routing reply
        if spare:
            runtime_b = await asyncio.to_thread(procs.fakes, "runtime-b", cluster.urls, tmp_path, serve="runtime",
                                                route_delay=0.2)
        runtime_a.kill()
        results = await asyncio.gather(*tasks)
        for rid, res in zip(rids, results, strict=True):
            assert await results_stored(client, rid) == 1
            events = await trace_of(client, rid)
            kinds = [e.kind for e in events]
            assert kinds.count("run_started") == 1, kinds
            if spare:  # the route call to the dead runtime timed out (retryable); the retry went to runtime B
                assert (res.status, res.answer, len(res.turns)) == (RunStatus.OK, "42", 2), res
                assert kinds[-1] == "run_finished" and kinds.count("run_finished") == 1, kinds
                runtimes = [e.runtime_id for e in events if e.kind == "route_decided"]  # type: ignore[union-attr]
                assert runtimes[0] == "runtime-b", runtimes  # the first turn could only be answered by B
            else:  # no runtime left: the run waits for one (route_deferred) until its deadline, then fails explicitly
                assert (res.status, res.stop_reason, res.answer) == (RunStatus.FAILED, StopReason.DEADLINE, None)
                assert res.error and "routing turn 0: no runtime joined within" in res.error, res.error
                assert "route_deferred" in kinds, kinds
                assert kinds[-1] == "run_failed" and kinds.count("run_failed") == 1, kinds
    finally:
        for p in (coordinator, runtime_b, runtime_a, agents):
            if p is not None:
                p.stop()


@pytest.mark.slow
async def test_nats_server_killed_mid_run_clients_reconnect_and_no_request_is_lost(
        cluster: NatsCluster, client: Client, tmp_path: Path) -> None:
    fake = procs.fakes("fakes", cluster.urls, tmp_path, agent_delay=1.0)
    coordinator = procs.node("coord", cluster.urls, "coordinator", tmp_path, *COORDINATOR)
    victim = next(n for n in cluster.nodes if n.port == client.connected_url.port)  # type: ignore[union-attr]
    try:
        rids, tasks = await submit_all(client, 6, "nk")
        await wait_started(client, rids)
        victim.kill()  # the server this client (and maybe the actors) is connected to
        results = await asyncio.gather(*tasks)
        assert client.connected_url is not None and client.connected_url.port != victim.port
        for rid, res in zip(rids, results, strict=True):
            # exactly one stored result each: ok, or an explicit failure the record explains
            assert res.request_id == rid and await results_stored(client, rid) == 1
            assert res.status == RunStatus.OK or res.error, res
            for _ in range(30):  # events whose publish met the dead server are still being retried
                kinds = [e.kind for e in await trace_of(client, rid)]
                if "run_finished" in kinds or "run_failed" in kinds:
                    break
                await asyncio.sleep(1.0)
            assert kinds[0] in ("run_started", "run_redelivered"), kinds
            assert kinds.count("run_finished") + kinds.count("run_failed") == 1, kinds
            assert "route_decided" in kinds and "agent_call_started" in kinds, kinds
        ok = sum(r.status == RunStatus.OK for r in results)
        print(f"\n{ok}/{len(results)} runs ok after the server kill")
    finally:
        coordinator.stop()
        fake.stop()
        victim.restart()
