"""Streams and durable consumers over real nats-servers (single node and a 3-node cluster)."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.client import Client

from bus import subjects
from bus.codec import decode
from bus.embedded import NatsCluster
from bus.jetstream import (
    ConsumerSpec,
    StreamConflict,
    StreamSpec,
    ensure_consumer,
    ensure_stream,
    jobs_stream_spec,
    publish_event,
    wait_for_jetstream,
)
from bus.provenance import Provenance
from schemas import RunStarted, TraceEvent


def _event(rid: str, n: int) -> RunStarted:
    return RunStarted(request_id=rid, event_id=f"{rid}-e{n}", causation_id=rid, ts=float(n), query_sha256="0" * 64)


async def test_ensure_stream_and_consumer_are_idempotent(nc: Client) -> None:
    js = nc.jetstream()
    spec = StreamSpec(name=f"T_{uuid.uuid4().hex[:8]}", subjects=[f"it.{uuid.uuid4().hex[:6]}.>"], max_age_s=60)
    assert await ensure_stream(js, spec) is True
    assert await ensure_stream(js, spec) is False
    changed = StreamSpec(name=spec.name, subjects=spec.subjects, max_age_s=120)
    assert await ensure_stream(js, changed) is True
    assert (await js.stream_info(spec.name)).config.max_age == 120
    cons = ConsumerSpec(durable="sink")
    assert await ensure_consumer(js, spec.name, cons) is True
    assert await ensure_consumer(js, spec.name, cons) is False
    with pytest.raises(StreamConflict, match="retention"):
        await ensure_stream(js, StreamSpec(name=spec.name, subjects=spec.subjects, retention="workqueue"))


async def test_trace_events_round_trip_with_provenance_and_dedupe(nc: Client) -> None:
    js = nc.jetstream()
    name = f"TR_{uuid.uuid4().hex[:8]}"
    prefix = f"tr{uuid.uuid4().hex[:6]}"
    await ensure_stream(js, StreamSpec(name=name, subjects=[f"{prefix}.>"]))
    ev = _event("req-7", 1)
    prov = Provenance(request_id="req-7", turn=0, causation_id="req-7")
    seq1 = await publish_event(js, f"{prefix}.req-7.run_started", ev, msg_id=ev.event_id, provenance=prov)
    seq2 = await publish_event(js, f"{prefix}.req-7.run_started", ev, msg_id=ev.event_id, provenance=prov)
    assert seq1 == seq2  # duplicate suppressed by Nats-Msg-Id
    await ensure_consumer(js, name, ConsumerSpec(durable="reader"))
    sub = await js.pull_subscribe(f"{prefix}.>", durable="reader", stream=name)
    [msg] = await sub.fetch(1, timeout=2)
    assert decode(msg.data, TraceEvent) == ev  # type: ignore[arg-type]
    assert Provenance.from_headers(msg.headers) == prov
    await msg.ack()
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await sub.fetch(1, timeout=0.3)
    await sub.unsubscribe()


async def test_durable_consumer_resumes_where_it_left_off(nc: Client) -> None:
    js = nc.jetstream()
    name = f"DR_{uuid.uuid4().hex[:8]}"
    prefix = f"dr{uuid.uuid4().hex[:6]}"
    await ensure_stream(js, StreamSpec(name=name, subjects=[f"{prefix}.>"]))
    for i in range(5):
        await publish_event(js, f"{prefix}.r.run_started", _event("r", i), msg_id=f"m{i}")
    await ensure_consumer(js, name, ConsumerSpec(durable="d1"))
    sub = await js.pull_subscribe(f"{prefix}.>", durable="d1", stream=name)
    first = await sub.fetch(2, timeout=2)
    for m in first:
        await m.ack()
    await sub.unsubscribe()
    sub2 = await js.pull_subscribe(f"{prefix}.>", durable="d1", stream=name)
    rest = await sub2.fetch(10, timeout=1)
    assert [decode(m.data, RunStarted).ts for m in rest] == [2.0, 3.0, 4.0]
    await sub2.unsubscribe()


async def test_work_queue_delivers_each_job_once_across_consumers(nc: Client) -> None:
    js = nc.jetstream()
    spec = jobs_stream_spec()
    spec = StreamSpec(name=f"J_{uuid.uuid4().hex[:8]}", subjects=[f"jobs{uuid.uuid4().hex[:6]}"],
                      retention=spec.retention)
    await ensure_stream(js, spec)
    for i in range(40):
        await js.publish(spec.subjects[0], str(i).encode())
    await ensure_consumer(js, spec.name, ConsumerSpec(durable="workers"))
    subs = [await js.pull_subscribe(spec.subjects[0], durable="workers", stream=spec.name) for _ in range(2)]
    got: list[int] = []

    async def worker(sub: object) -> None:
        while True:
            try:
                msgs = await sub.fetch(5, timeout=0.5)  # type: ignore[attr-defined]
            except (TimeoutError, nats.errors.TimeoutError):
                return
            for m in msgs:
                got.append(int(m.data))
                await m.ack()

    await asyncio.gather(*(worker(s) for s in subs))
    for s in subs:
        await s.unsubscribe()
    assert sorted(got) == list(range(40))
    assert (await js.stream_info(spec.name)).state.messages == 0


async def test_cluster_replicated_stream_survives_a_node_kill(nats_cluster: NatsCluster) -> None:
    client = await nats.connect(servers=nats_cluster.urls, name="cluster-test", reconnect_time_wait=0.2)
    js = client.jetstream()
    name = f"CL_{uuid.uuid4().hex[:8]}"
    prefix = f"cl{uuid.uuid4().hex[:6]}"
    await wait_for_jetstream(js, timeout=60)
    await ensure_stream(js, StreamSpec(name=name, subjects=[f"{prefix}.>"], replicas=3))
    info = await js.stream_info(name)
    assert info.config.num_replicas == 3
    for i in range(10):
        await publish_event(js, f"{prefix}.r.run_started", _event("r", i), msg_id=f"c{i}")
    leader = info.cluster.leader if info.cluster else None
    # kill the stream's leader (the client fails over to another server if it was connected there)
    by_name = {n.config_path.parent.name: n for n in nats_cluster.nodes}
    victim = next((n for name, n in by_name.items() if leader is not None and leader.endswith(name)),
                  nats_cluster.nodes[0])
    victim.kill()
    transient = (nats.errors.TimeoutError, asyncio.TimeoutError, nats.js.errors.APIError,
                 nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
    try:
        for i in range(10, 20):  # publishes retry while the stream elects a new leader (bounded: 150 x 0.2 s)
            for _ in range(150):
                try:
                    await publish_event(js, f"{prefix}.r.run_started", _event("r", i), msg_id=f"c{i}")
                    break
                except transient:
                    await asyncio.sleep(0.2)
        messages = -1
        for _ in range(150):
            try:
                messages = (await js.stream_info(name)).state.messages
                if messages == 20:
                    break
            except transient:
                pass
            await asyncio.sleep(0.2)
        assert messages == 20
    finally:
        victim.restart()
        await client.close()
    assert subjects.TRACE_STREAM == "TRINITY_TRACE"
