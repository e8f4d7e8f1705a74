"""ActorService over a real nats-server: typed replies, bad input, queue groups, discovery, drain."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from bus import rpc
from bus.codec import encode
from bus.errors import NoResponders, Rejected, RemoteError, RequestTimeout
from bus.provenance import Provenance
from bus.service import ActorService, Endpoint, RequestContext
from schemas import ErrorCode, ErrorReply, Message


class Echo(msgspec.Struct, frozen=True):
    text: str
    request_id: str = ""
    turn: int = -1
    causation_id: str = ""
    served_by: str = ""


def echo_service(nc: Client, name: str = "echo", subject: str = "t.echo", served_by: str = "a",
                 max_concurrency: int = 64, gate: asyncio.Event | None = None) -> ActorService:
    async def handle(req: Message, ctx: RequestContext) -> Echo:
        if req.content == "reject":
            raise Rejected(ErrorCode.INVALID, "content 'reject' is not accepted; send anything else")
        if req.content == "crash":
            raise ZeroDivisionError("boom")
        if req.content == "slow" and gate is not None:
            await gate.wait()
        p = ctx.provenance
        return Echo(text=req.content, request_id=p.request_id, turn=p.turn, causation_id=p.causation_id,
                    served_by=served_by)

    return ActorService(nc, name=name, endpoints=[
        Endpoint("echo", subject, Message, handle, queue_group="echoers", max_payload_bytes=1024,
                 max_concurrency=max_concurrency)])


async def test_round_trip_carries_provenance(nc: Client) -> None:
    svc = echo_service(nc)
    await svc.start()
    prov = Provenance(request_id="req-1", turn=3, causation_id="evt-9")
    out = await rpc.request(nc, "t.echo", Message(role="user", content="hi"), Echo, timeout=2, provenance=prov)
    assert out == Echo(text="hi", request_id="req-1", turn=3, causation_id="evt-9", served_by="a")
    await svc.drain()


@pytest.mark.parametrize(
    ("payload", "code", "counter"),
    [
        (b"{not json", ErrorCode.MALFORMED, "malformed"),
        (b'{"role": "robot", "content": "x"}', ErrorCode.MALFORMED, "malformed"),
        (b'{"role": "user"}', ErrorCode.MALFORMED, "malformed"),
        (b'{"role": "user", "content": "' + b"x" * 2000 + b'"}', ErrorCode.TOO_LARGE, "too_large"),
        (encode(Message(role="user", content="reject")), ErrorCode.INVALID, "rejected"),
        (encode(Message(role="user", content="crash")), ErrorCode.INTERNAL, "crashed"),
        # invalid UTF-8 inside a JSON string (msgspec raises UnicodeDecodeError, which used to escape: no reply)
        (b'{"role": "user", "content": "\xff\xfe"}', ErrorCode.MALFORMED, "malformed"),
        (b'{"role": "user", "content": "ok\xed\xa0\x80"}', ErrorCode.MALFORMED, "malformed"),  # a UTF-8 surrogate
        (b'{"role": "us\xc3", "content": "x"}', ErrorCode.MALFORMED, "malformed"),  # truncated sequence
        (b'{"role": "user", "content": "\\ud800"}', ErrorCode.MALFORMED, "malformed"),  # lone escaped surrogate
        (b"\xff\xfe\x00", ErrorCode.MALFORMED, "malformed"),
    ],
)
async def test_bad_input_gets_typed_error_and_service_keeps_serving(
        nc: Client, payload: bytes, code: ErrorCode, counter: str) -> None:
    svc = echo_service(nc, name="echo-bad", subject="t.bad")
    await svc.start()
    msg = await nc.request("t.bad", payload, timeout=2)
    assert msg.headers is not None and msg.headers["Trinity-Error"] == code.value
    assert msg.headers["Nats-Service-Error-Code"] == str(code.status)
    reply = msgspec.json.decode(msg.data, type=ErrorReply)
    assert reply.code == code and reply.message
    assert svc.stats()["echo"][counter] == 1
    ok = await rpc.request(nc, "t.bad", Message(role="user", content="still here"), Echo, timeout=2)
    assert ok.text == "still here"
    await svc.drain()


async def test_field_is_named_in_malformed_reply(nc: Client) -> None:
    svc = echo_service(nc, name="echo-field", subject="t.field")
    await svc.start()
    msg = await nc.request("t.field", b'{"role": 5, "content": "x"}', timeout=2)
    err = rpc.error_from_msg(msg)
    assert err is not None and err.code == ErrorCode.MALFORMED
    assert "$.role" in err.message and "Message" in err.message
    await svc.drain()


async def test_message_without_reply_subject_is_counted_as_dropped(nc: Client) -> None:
    svc = echo_service(nc, name="echo-drop", subject="t.drop")
    await svc.start()
    await nc.publish("t.drop", b"\x00garbage")
    await nc.flush()
    ok = await rpc.request(nc, "t.drop", Message(role="user", content="after"), Echo, timeout=2)
    assert ok.text == "after"
    stats = svc.stats()["echo"]
    assert stats["malformed"] == 1 and stats["dropped"] == 1 and stats["ok"] == 1
    await svc.drain()


async def test_queue_group_spreads_load_and_each_request_is_served_once(nc: Client) -> None:
    a = echo_service(nc, served_by="a", subject="t.q", max_concurrency=1000)
    b = echo_service(nc, served_by="b", subject="t.q", max_concurrency=1000)
    await a.start()
    await b.start()
    results = await asyncio.gather(*(rpc.request(nc, "t.q", Message(role="user", content=str(i)), Echo, timeout=5)
                                     for i in range(200)))
    assert sorted(int(r.text) for r in results) == list(range(200))
    served = {r.served_by for r in results}
    assert served == {"a", "b"}
    assert a.stats()["echo"]["ok"] + b.stats()["echo"]["ok"] == 200
    await a.drain()
    await b.drain()


async def test_micro_discovery_reports_endpoints_and_counters(nc: Client) -> None:
    svc = echo_service(nc, name="echo-disc", subject="t.disc")
    await svc.start()
    await nc.request("t.disc", b"junk", timeout=2)
    info = json.loads((await nc.request("$SRV.INFO.echo-disc", b"", timeout=2)).data)
    assert info["name"] == "echo-disc" and info["endpoints"][0]["subject"] == "t.disc"
    assert info["endpoints"][0]["queue_group"] == "echoers"
    stats = json.loads((await nc.request("$SRV.STATS.echo-disc", b"", timeout=2)).data)
    assert stats["endpoints"][0]["data"]["malformed"] == 1
    ping = json.loads((await nc.request("$SRV.PING.echo-disc", b"", timeout=2)).data)
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    await svc.drain()


async def test_over_concurrency_limit_answers_overloaded_at_once(nc: Client) -> None:
    gate = asyncio.Event()
    svc = echo_service(nc, name="echo-load", subject="t.load", max_concurrency=2, gate=gate)
    await svc.start()
    slow = [asyncio.create_task(rpc.request(nc, "t.load", Message(role="user", content="slow"), Echo, timeout=5))
            for _ in range(2)]
    await asyncio.sleep(0.2)
    with pytest.raises(RemoteError) as ei:
        await rpc.request(nc, "t.load", Message(role="user", content="x"), Echo, timeout=2)
    assert ei.value.code == ErrorCode.OVERLOADED and ei.value.retryable
    gate.set()
    assert [r.text for r in await asyncio.gather(*slow)] == ["slow", "slow"]
    await svc.drain()


async def test_drain_finishes_in_flight_then_stops_taking_work(nc: Client) -> None:
    gate = asyncio.Event()
    svc = echo_service(nc, name="echo-drain", subject="t.drain", gate=gate)
    await svc.start()
    inflight = asyncio.create_task(rpc.request(nc, "t.drain", Message(role="user", content="slow"), Echo, timeout=5))
    await asyncio.sleep(0.2)
    drain = asyncio.create_task(svc.drain(timeout=5))
    await asyncio.sleep(0.1)
    assert not drain.done()
    gate.set()
    assert (await inflight).text == "slow"
    await drain
    with pytest.raises(NoResponders):
        await rpc.request(nc, "t.drain", Message(role="user", content="late"), Echo, timeout=1)


async def test_request_timeout_is_typed(nc: Client) -> None:
    sub = await nc.subscribe("t.silent")  # a subscriber that never answers
    with pytest.raises(RequestTimeout) as ei:
        await rpc.request(nc, "t.silent", Message(role="user", content="x"), Echo, timeout=0.2)
    assert "t.silent" in str(ei.value)
    await sub.unsubscribe()


class Loose(msgspec.Struct, frozen=True):
    """A contract with an untyped field (nesting is only bounded by the decoder) and an invariant that raises
    something other than ValueError."""

    data: Any = None
    divisor: int = 1

    def __post_init__(self) -> None:
        _ = 1 // self.divisor  # ZeroDivisionError for divisor 0


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"divisor": 0}', "ZeroDivisionError"),
        (b'{"data": "\xc0\xaf"}', "not valid UTF-8"),
    ],
)
async def test_every_decode_failure_is_a_typed_malformed_reply(nc: Client, payload: bytes, detail: str) -> None:
    async def handle(req: Loose, ctx: RequestContext) -> Loose:
        return req

    svc = ActorService(nc, name="loose", endpoints=[Endpoint("loose", "t.loose", Loose, handle,
                                                             max_payload_bytes=1_048_576)])
    await svc.start()
    try:
        msg = await nc.request("t.loose", payload, timeout=5)
        reply = msgspec.json.decode(msg.data, type=ErrorReply)
        assert reply.code == ErrorCode.MALFORMED and detail in reply.message, reply
        assert svc.stats()["loose"]["malformed"] == 1 and svc.stats()["loose"]["crashed"] == 0
        assert (await rpc.request(nc, "t.loose", Loose(data=[1]), Loose, timeout=2)).data == [1]
    finally:
        await svc.drain()


async def test_a_reply_over_the_servers_max_payload_is_answered_too_large(nc: Client) -> None:
    async def handle(req: Message, ctx: RequestContext) -> Message:
        return Message(role="assistant", content="x" * (9 * 1024 * 1024))  # the test server allows 8 MB

    svc = ActorService(nc, name="big", endpoints=[Endpoint("big", "t.big", Message, handle)])
    await svc.start()
    try:
        with pytest.raises(RemoteError) as ei:
            await rpc.request(nc, "t.big", Message(role="user", content="hi"), Message, timeout=5)
        assert ei.value.code == ErrorCode.TOO_LARGE and "max_payload" in ei.value.message
        assert svc.stats()["big"]["too_large"] == 1
    finally:
        await svc.drain()
