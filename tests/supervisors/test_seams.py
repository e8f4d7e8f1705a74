"""Seams: every long-lived loop inside an actor is watched. A loop that dies, or stalls while work waits,
restarts its actor in a real node (one log line naming the loop); an idle loop is not a stall."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import msgspec
import nats
import pytest

from actors.fleet_registry.actor import FleetRegistryActor
from actors.model_runtime.batcher import DynamicBatcher
from actors.trace_sink.actor import TraceSinkActor
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.jetstream import ensure_stream, publish_event, trace_stream_spec
from config.settings import load_settings
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, TraceSinkSettings
from ops.node import Node
from supervisors.watch import LoopDied, LoopStalled
from tests.trace_sink.events import run_events
from tests.waiting import until as wait_until

GUARD_S = 60.0  # hang guard only


async def until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pred, what, guard_s=GUARD_S)


async def test_batcher_loop_death_and_stall_are_seen() -> None:
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        release.wait(GUARD_S)
        return [i * 2 for i in items]

    b: DynamicBatcher[int, int] = DynamicBatcher(run, window_ms=1.0, max_batch=4, max_queue=16, stall_after_s=0.3)
    await b.start()
    await asyncio.sleep(0.4)
    await b.watch.check()  # idle for longer than stall_after_s: not a stall
    pending = [asyncio.create_task(b.submit(i)) for i in range(3)]
    await asyncio.sleep(0.5)
    with pytest.raises(LoopStalled, match=r"model runtime batcher: no progress .* while 3 messages are pending"):
        await b.watch.check()
    release.set()
    assert await asyncio.gather(*pending) == [0, 2, 4]
    await b.watch.check()  # it made progress again
    assert b._task is not None
    b._task.cancel()
    await asyncio.sleep(0.05)
    with pytest.raises(LoopDied, match="model runtime batcher was cancelled"):
        await b.watch.check()
    await b.close()


def node_settings(url: str, actors: list[str], node_id: str):  # type: ignore[no-untyped-def]
    return load_settings(overrides=[f'nats.servers=["{url}"]', f"node.actors={actors!r}".replace("'", '"'),
                                    f'node.node_id="{node_id}"'])


async def test_killed_fleet_registry_sweep_restarts_the_registry(fresh_nats_server: NatsServerProcess,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = node_settings(fresh_nats_server.url, ["fleet_registry"], "seam")
    actors: list[FleetRegistryActor] = []

    def factory(c, s):  # type: ignore[no-untyped-def]
        actors.append(FleetRegistryActor(c, s.fleet))
        return actors[-1]

    node = Node(settings, factories={"fleet_registry": factory})
    await node.start()
    try:
        await asyncio.wait_for(node.wait_ready(), GUARD_S)
        assert actors[0]._sweeper is not None
        actors[0]._sweeper.cancel()
        await until(lambda: len(actors) == 2 and node.ready, "the registry restarted and serving again")
        assert actors[1]._sweeper is not None and not actors[1]._sweeper.done()
    finally:
        await node.stop()
    crashed = [r.getMessage() for r in caplog.records if "child node-seam/fleet_registry crashed" in r.getMessage()]
    assert len(crashed) == 1 and "LoopDied" in crashed[0] and "fleet registry expiry sweep" in crashed[0], crashed
    assert node.status().restarts == {"fleet_registry": 1}


async def test_hung_trace_exporter_restarts_the_sink(fresh_nats_server: NatsServerProcess, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    await ensure_stream(js, trace_stream_spec())
    sink_settings = TraceSinkSettings(durable="seam-test", fetch_timeout_s=0.3, stall_after_s=1.0,
                                      jsonl=JsonlSettings(path=str(tmp_path / "t.jsonl")),
                                      otel=OtelSettings(exporter=OtelExporterKind.NONE))
    settings = msgspec.structs.replace(node_settings(fresh_nats_server.url, ["trace_sink"], "seam"),
                                       trace_sink=sink_settings)
    actors: list[TraceSinkActor] = []

    def factory(c, s):  # type: ignore[no-untyped-def]
        actors.append(TraceSinkActor(c, s.trace_sink))
        return actors[-1]

    node = Node(settings, factories={"trace_sink": factory})
    await node.start()
    try:
        await asyncio.wait_for(node.wait_ready(), GUARD_S)
        lane = actors[0].sink._lanes[0]

        async def hang(_batch: object) -> None:  # a disk or collector that never answers
            await asyncio.Event().wait()

        lane.exporter.export = hang  # type: ignore[method-assign]
        for ev in run_events("hung-exporter"):
            await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id)
        await until(lambda: len(actors) == 2 and node.ready, "the sink restarted and serving again")
    finally:
        await node.stop()
        await nc.close()
    crashed = [r.getMessage() for r in caplog.records if "child node-seam/trace_sink crashed" in r.getMessage()]
    assert len(crashed) == 1 and "LoopStalled" in crashed[0] and "jsonl exporter loop" in crashed[0], crashed
