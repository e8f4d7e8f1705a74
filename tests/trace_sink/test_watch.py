"""The trace sink never stalls silently, against a real JetStream server.

* Root cause of the stall seen in full nodes: with the event loop busy for about ``fetch_timeout_s`` while a
  fetch is in flight, nats-py's ``fetch`` raises a plain ``TimeoutError`` (not ``nats.errors.TimeoutError``);
  the fetch loop caught only the latter and ended silently. It now keeps consuming.
* A fetch loop that dies anyway, or hangs while events are pending, crashes the actor in a real node
  (one log line saying why); the restarted sink consumes every pending event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec
import nats
import pytest

from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.jsonl import read_jsonl
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.jetstream import ensure_stream, publish_event, trace_stream_spec
from config.settings import load_settings
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, TraceSinkSettings
from ops.node import Node
from tests.trace_sink.events import run_events
from tests.waiting import until as wait_until

GUARD_S = 60.0  # hang guard only


def settings_for(tmp_path: Path, **kw: object) -> TraceSinkSettings:
    return TraceSinkSettings(durable="watch-test", fetch_timeout_s=0.3,
                             jsonl=JsonlSettings(path=str(tmp_path / "t.jsonl")),
                             otel=OtelSettings(exporter=OtelExporterKind.NONE), **kw)  # type: ignore[arg-type]


async def publish_run(js: nats.js.JetStreamContext, rid: str) -> int:
    events = run_events(rid)
    for ev in events:
        await publish_event(js, subjects.trace(ev.request_id, ev.kind), ev, msg_id=ev.event_id)
    return len(events)


async def until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pred, what, guard_s=GUARD_S)


async def test_fetch_loop_survives_a_busy_event_loop(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    await ensure_stream(js, trace_stream_spec())
    actor = TraceSinkActor(nc, settings_for(tmp_path))
    await actor.start()
    assert actor._sub is not None
    inner = actor._sub._sub  # the subscription the pull requests are answered on
    real_next = inner.next_msg
    blocks: list[str] = []

    async def next_msg(timeout: float | None = 1.0) -> object:
        msg = await real_next(timeout)
        if msg.headers and msg.headers.get("Status") and len(blocks) < 3:
            # the server's "no messages" (408, at the fetch's expiry, 0.1 ms before the client's own timer) came
            # in, and then the loop was busy (a model load holding the GIL) before fetch computed what is left
            blocks.append(msg.headers["Status"])
            time.sleep(0.35)
        return msg

    inner.next_msg = next_msg  # type: ignore[method-assign]
    try:
        await until(lambda: len(blocks) == 3 or (actor._task is not None and actor._task.done()),
                    "three idle fetch rounds with a busy loop")
        inner.next_msg = real_next  # type: ignore[method-assign]
        assert actor._task is not None and not actor._task.done(), actor._task  # the loop outlived them
        await asyncio.sleep(0.5)
        assert actor._task is not None and not actor._task.done(), actor._task
        n = await publish_run(js, "after-stalls")
        await until(lambda: actor.consumed >= n, "events consumed after the stalls")
        await actor.watch.check()  # alive and keeping up
    finally:
        await actor.drain(timeout=2.0)
        await nc.close()


@pytest.mark.parametrize("failure", ["killed", "hung"])
async def test_dead_or_hung_fetch_loop_restarts_the_sink_which_then_consumes(
        fresh_nats_server: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture, failure: str) -> None:
    caplog.set_level(logging.INFO)
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    await ensure_stream(js, trace_stream_spec())
    sink_settings = settings_for(tmp_path, stall_after_s=1.0)
    base = load_settings(overrides=[f'nats.servers=["{fresh_nats_server.url}"]', 'node.actors=["trace_sink"]',
                                    'node.node_id="watch"'])
    settings = msgspec.structs.replace(base, trace_sink=sink_settings)
    actors: list[TraceSinkActor] = []

    def factory(c, s):  # type: ignore[no-untyped-def]
        actors.append(TraceSinkActor(c, s.trace_sink))
        return actors[-1]

    node = Node(settings, factories={"trace_sink": factory})
    await node.start()
    try:
        await asyncio.wait_for(node.wait_ready(), GUARD_S)
        first = actors[0]
        if failure == "killed":  # the next fetch raises what the loop does not handle: the loop dies
            # (cancelling the task is no way to kill it: nats-py's fetch may swallow the cancellation, and the
            # loop then goes on consuming until its next idle round)
            async def boom(*_: object, **__: object) -> list[object]:
                raise RuntimeError("boom")
            assert first._sub is not None
            first._sub.fetch = boom  # type: ignore[method-assign]
            await until(lambda: first._task is None or first._task.done(), "the loop died")
        else:  # the next fetch never returns (a pull request nobody answers)
            async def hang(*_: object, **__: object) -> list[object]:
                await asyncio.Event().wait()
                return []
            assert first._sub is not None
            first._sub.fetch = hang  # type: ignore[method-assign]
            await asyncio.sleep(0.5)  # the fetch in flight ends; the loop then hangs in the next one
        n = await publish_run(js, f"pending-{failure}")
        await until(lambda: len(actors) == 2 and node.ready, "the sink restarted and serving again")
        await until(lambda: actors[1].consumed >= n, "the restarted sink consumed the pending events")
        await until(lambda: len(list(read_jsonl(tmp_path / "t.jsonl"))) >= n, "events exported")
    finally:
        await node.stop()
        await nc.close()
    crashed = [r.getMessage() for r in caplog.records if "child node-watch/trace_sink crashed" in r.getMessage()]
    want = "LoopDied" if failure == "killed" else "LoopStalled"
    assert len(crashed) == 1 and want in crashed[0] and "trace sink fetch loop" in crashed[0], crashed
    assert node.status().restarts == {"trace_sink": 1}


class _FetchThatTurnsCancelIntoTimeout:
    """A pull subscription whose ``fetch`` behaves as nats-py's can: cancelled mid-wait, it raises a plain
    ``TimeoutError`` instead of ``CancelledError``."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, batch: int, timeout: float) -> list[object]:
        self.fetches += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise TimeoutError() from None
        return []

    async def unsubscribe(self) -> None:
        return None


async def test_drain_ends_the_fetch_loop_even_when_fetch_turns_the_cancel_into_a_timeout(tmp_path: Path) -> None:
    # before the fix the loop took that TimeoutError for "nothing to fetch", went on, and drain waited forever
    actor = TraceSinkActor(None, settings_for(tmp_path))  # type: ignore[arg-type]
    sub = _FetchThatTurnsCancelIntoTimeout()
    actor._sub = sub  # type: ignore[assignment]
    await actor.sink.start()
    actor._task = asyncio.create_task(actor._loop())
    while sub.fetches == 0:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(actor.drain(timeout=1.0), GUARD_S)
    assert sub.fetches == 2  # the loop's one, then the drain's catch-up (bounded by the drain budget)
