"""The trace sink actor against a real JetStream server: durable consumption, redaction, exports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg

from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.jsonl import read_jsonl
from actors.trace_sink.sink import OtelExporter
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.jetstream import ensure_stream, publish_event, trace_stream_spec
from bus.provenance import Provenance
from config.provider_agents import Secret
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, RedactionSettings, TraceSinkSettings
from tests.trace_sink.events import run_events

SECRET = "org-secret-7f3a9c2e"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def sink_settings(tmp_path: Path) -> TraceSinkSettings:
    return TraceSinkSettings(durable="sink-test", fetch_timeout_s=0.2,
                             redaction=RedactionSettings(secrets=[Secret(SECRET)]),
                             jsonl=JsonlSettings(path=str(tmp_path / "trace.jsonl")),
                             otel=OtelSettings(exporter=OtelExporterKind.MEMORY))


async def wait_consumed(actor: TraceSinkActor, n: int) -> None:
    for _ in range(1000):
        if actor.consumed >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"consumed {actor.consumed} of {n}")


async def test_sink_consumes_redacts_and_exports(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, trace_stream_spec())
        events = run_events("req-a", reply=f"my key is {SECRET} and sk-proj-ABCDEFGHIJKLMNOPQRSTUV",
                            error_message=f"401 Incorrect API key provided: {SECRET}")
        prov = Provenance(request_id="req-a", traceparent=TRACEPARENT)
        for ev in events:
            await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id,
                                provenance=prov.caused_by(ev.causation_id, ev.turn))
        await js.publish("trinity.trace.req-a.run_started", b'{"kind": "run_started", "oops": 1}')

        actor = TraceSinkActor(nc, sink_settings(tmp_path))
        await actor.start()
        await wait_consumed(actor, len(events) + 1)
        await actor.drain()
        st = actor.stats()
        assert (st["consumed"], st["malformed"], st["accepted"]) == (len(events) + 1, 1, len(events))
        assert st["exporters"]["jsonl"]["exported"] == len(events)
        raw = (tmp_path / "trace.jsonl").read_bytes()
        assert SECRET.encode() not in raw and b"sk-proj-ABCDEFGH" not in raw
        records = list(read_jsonl(tmp_path / "trace.jsonl"))
        assert [r.event.event_id for r in records] == [e.event_id for e in events]
        assert [r.stream_seq for r in records] == list(range(1, len(events) + 1))
        assert all(r.traceparent == TRACEPARENT for r in records)
        failed = next(r.event for r in records if r.event.kind == "agent_call_failed")
        assert failed.message == "401 Incorrect API key provided: [REDACTED]"  # type: ignore[union-attr]
        otel = actor.sink.exporters[1]
        assert isinstance(otel, OtelExporter) and otel.spans.memory is not None
        spans = otel.spans.memory.get_finished_spans()
        run = next(s for s in spans if s.name == "trinity.run")
        assert run.context is not None and format(run.context.trace_id, "032x") == TRACE_ID
        assert sorted(s.name for s in spans) == ["trinity.run", "trinity.turn 0", "trinity.turn 1"]

        # durable: a restarted sink resumes after the last acked event
        more = run_events("req-b")
        for ev in more:
            await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id)
        again = TraceSinkActor(nc, sink_settings(tmp_path))
        await again.start()
        await wait_consumed(again, len(more))
        await asyncio.sleep(0.3)  # a further fetch round finds nothing old
        await again.drain()
        assert again.consumed == len(more)
        ids = [r.event.request_id for r in read_jsonl(tmp_path / "trace.jsonl")]
        assert ids == ["req-a"] * len(events) + ["req-b"] * len(more)
    finally:
        await nc.close()


async def test_drain_exports_what_is_still_pending(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """Events published just before a stop reach the JSONL file: the drain fetches what the consumer holds."""
    nc = await nats.connect(fresh_nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, trace_stream_spec())
        events = [ev for i in range(20) for ev in run_events(f"req-{i}")]
        for ev in events:
            await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id)
        settings = msgspec.structs.replace(sink_settings(tmp_path), fetch_batch=5)
        actor = TraceSinkActor(nc, settings)
        await actor.start()  # returns after the first round trip: at most a batch or two consumed
        assert actor.consumed < len(events)
        await actor.drain(timeout=10.0)
        assert actor.consumed == len(events) and actor.stats()["caught_up"] > 0
        records = list(read_jsonl(tmp_path / "trace.jsonl"))
        assert [r.event.event_id for r in records] == [e.event_id for e in events]
        info = await js.consumer_info(subjects.TRACE_STREAM, "sink-test")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await nc.close()


async def test_drain_exports_the_batch_being_consumed(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """A fetched batch is in the loop's own hands (delivered, not yet acked): a drain that cancelled the loop
    mid-batch lost the rest of it for this run (the server hands such events out again only after the ack wait,
    at the next start), so a run's last events could miss the JSONL file. The drain lets the round finish."""
    nc = await nats.connect(fresh_nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, trace_stream_spec())
        settings = msgspec.structs.replace(sink_settings(tmp_path), fetch_batch=50)
        actor = TraceSinkActor(nc, settings)
        consume = actor._consume

        async def slow_consume(msg: Msg) -> None:  # a loaded machine: each event takes a while
            await asyncio.sleep(0.02)
            await consume(msg)

        actor._consume = slow_consume  # type: ignore[method-assign]
        await actor.start()
        events = run_events("req-end")
        for ev in events:
            await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id)
        await wait_consumed(actor, 1)
        assert actor.consumed < len(events), "the batch was consumed before the drain: nothing was tested"
        await actor.drain(timeout=10.0)
        assert actor.consumed == len(events)
        assert [r.event.event_id for r in read_jsonl(tmp_path / "trace.jsonl")] == [e.event_id for e in events]
        info = await js.consumer_info(subjects.TRACE_STREAM, "sink-test")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await nc.close()


async def test_sink_creates_the_stream_when_missing(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    try:
        actor = TraceSinkActor(nc, sink_settings(tmp_path))
        await actor.start()
        info = await nc.jetstream().stream_info(subjects.TRACE_STREAM)
        assert info.config.subjects == ["trinity.trace.>"]
        await actor.drain()
    finally:
        await nc.close()


async def test_stats_shape(tmp_path: Path) -> None:
    actor = TraceSinkActor(None, sink_settings(tmp_path))  # type: ignore[arg-type]
    st = actor.stats()
    assert set(st) >= {"consumed", "malformed", "fetch_errors", "caught_up", "received", "accepted",
                       "unsafe_dropped", "exporters"}
    assert set(st["exporters"]) == {"jsonl", "otel"}
    await actor.drain()
