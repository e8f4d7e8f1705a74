"""The model runtime on a real (hermetic) NATS server: replies, typed errors, batching, queue groups."""

from __future__ import annotations

import asyncio
import json
import random

import msgspec
import pytest
from nats.aio.client import Client

from actors.model_runtime.actor import ModelRuntimeActor, RouteRequestBody
from bus import subjects
from bus.errors import RemoteError
from bus.rpc import request
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteLogits, RouteRequest
from schemas.wire import ErrorCode
from tests.model_runtime.support import EngineFactory
from tests.model_runtime.transcripts import random_transcript

SUBJECT = subjects.route("torch", "base")


def test_wire_body_mirrors_route_request() -> None:
    body = {f.name: (f.type, f.default) for f in msgspec.structs.fields(RouteRequestBody)}
    contract = {f.name: (f.type, f.default) for f in msgspec.structs.fields(RouteRequest)}
    assert body.keys() == contract.keys()
    assert {k: v[1] for k, v in body.items()} == {k: v[1] for k, v in contract.items()}


async def _actor(nc: Client, tiny_engine: EngineFactory, **overrides: object) -> ModelRuntimeActor:
    settings = ModelRuntimeSettings(runtime_id="rt-test", **overrides)  # type: ignore[arg-type]
    actor = ModelRuntimeActor(nc, settings, engine=tiny_engine(**overrides))
    await actor.start()
    return actor


async def test_route_over_the_bus(nc: Client, tiny_engine: EngineFactory) -> None:
    actor = await _actor(nc, tiny_engine)
    try:
        req = RouteRequest("req-1", 0, [Message("user", "What is 17 + 25? Answer briefly.")], run_id="run-a")
        out = await request(nc, SUBJECT, req, RouteLogits, timeout=10)
        assert out.request_id == "req-1" and out.token_count == 15 and out.runtime_id == "rt-test"
        assert out.transcript_hash.startswith("05485d3e")  # the anchor's hash for this transcript
        assert "hidden" not in json.loads(msgspec.json.encode(out))  # only logits cross the bus
        nxt = RouteRequest("req-1", 1, [*req.messages, Message("assistant", "42")], run_id="run-a")
        again = await request(nc, SUBJECT, nxt, RouteLogits, timeout=10)
        assert again.cached_tokens == 14
        info = await nc.request("$SRV.INFO.trinity-model-runtime", b"", timeout=5)
        endpoints = json.loads(info.data)["endpoints"]
        assert endpoints[0]["subject"] == SUBJECT and endpoints[0]["queue_group"] == subjects.QUEUE_RUNTIMES
    finally:
        await actor.drain()


@pytest.mark.parametrize(("payload", "code"), [
    ({"request_id": "r", "turn": 0, "messages": []}, ErrorCode.INVALID),
    ({"request_id": "r", "turn": 0, "messages": [{"role": "user", "content": "x " * 300}]}, ErrorCode.TOO_LARGE),
    ({"request_id": "r", "turn": 0, "messages": [{"role": "user", "content": "hi"}], "adapter": "other"},
     ErrorCode.NOT_FOUND),
    ({"request_id": "r", "turn": "zero", "messages": []}, ErrorCode.MALFORMED),
])
async def test_bad_requests_get_typed_errors_and_service_keeps_serving(
        nc: Client, tiny_engine: EngineFactory, payload: dict[str, object], code: ErrorCode) -> None:
    actor = await _actor(nc, tiny_engine, max_context_tokens=64)
    try:
        reply = await nc.request(SUBJECT, json.dumps(payload).encode(), timeout=10)
        assert reply.headers is not None
        err = msgspec.json.decode(reply.data)
        assert err["code"] == code.value and err["message"]
        ok = await request(nc, SUBJECT, RouteRequest("r2", 0, [Message("user", "still there?")]), RouteLogits,
                           timeout=10)
        assert ok.request_id == "r2"
    finally:
        await actor.drain()


async def test_too_large_payload_is_rejected(nc: Client, tiny_engine: EngineFactory) -> None:
    actor = await _actor(nc, tiny_engine, max_payload_bytes=1024)
    try:
        with pytest.raises(RemoteError) as err:
            await request(nc, SUBJECT, RouteRequest("r", 0, [Message("user", "y" * 4096)]), RouteLogits, timeout=10)
        assert err.value.code is ErrorCode.TOO_LARGE
    finally:
        await actor.drain()


async def test_concurrent_bus_requests_are_batched(nc: Client, tiny_engine: EngineFactory) -> None:
    actor = await _actor(nc, tiny_engine, batch_window_ms=200.0, max_batch=16)
    try:
        rng = random.Random(3)
        reqs = [RouteRequest(f"c{i}", 0, random_transcript(rng, (1, 10))) for i in range(12)]
        outs = await asyncio.gather(*(request(nc, SUBJECT, r, RouteLogits, timeout=20) for r in reqs))
        assert [o.request_id for o in outs] == [r.request_id for r in reqs]
        stats = actor.stats()
        assert stats is not None and stats.batcher.largest_batch >= 6  # arrivals within the window share a batch
        hb = actor.heartbeat()
        assert hb.runtime_id == "rt-test" and hb.warm_adapters == ["base"] and hb.rss_mb > 0
    finally:
        await actor.drain()


async def test_heartbeat_and_batcher_loops_are_watched(nc: Client, tiny_engine: EngineFactory) -> None:
    from supervisors.watch import LoopDied

    actor = await _actor(nc, tiny_engine)
    try:
        watches = actor.watches()
        assert [w.name for w in watches] == ["runtime heartbeat loop (rt-test)", "model runtime batcher"]
        for w in watches:
            await w.check()  # both running
        assert actor._heartbeat_task is not None
        actor._heartbeat_task.cancel()
        await asyncio.sleep(0.05)
        with pytest.raises(LoopDied, match=r"runtime heartbeat loop \(rt-test\) was cancelled"):
            await watches[0].check()
        await watches[1].check()  # the batcher is fine
    finally:
        await actor.drain()
