"""Connecting with credentials, the reconnect policy, and W3C trace context in provenance headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from bus import rpc
from bus.connection import connect, connect_options
from bus.embedded import NatsServerProcess
from bus.errors import ConnectFailed, NoResponders
from bus.provenance import Provenance
from bus.service import ActorService, Endpoint, RequestContext
from config.nats import NatsSettings
from schemas import Message

AUTH = 'authorization {\n  users = [ { user: "coord", password: "s3cret-pw" } ]\n}\n'


@pytest.fixture
def auth_server() -> Iterator[NatsServerProcess]:
    srv = NatsServerProcess.start(config_text=AUTH, name="trinity-auth")
    yield srv
    srv.close()


async def test_connects_with_user_password_and_refuses_bad_credentials(auth_server: NatsServerProcess) -> None:
    good = NatsSettings(servers=[auth_server.url], user="coord", password="s3cret-pw")
    nc = await connect(good, name="t-auth")
    assert nc.is_connected
    await nc.close()
    bad = NatsSettings(servers=[auth_server.url], user="coord", password="wrong", max_reconnect_attempts=0)
    with pytest.raises(ConnectFailed) as ei:
        await connect(bad, name="t-auth-bad")
    assert auth_server.url in str(ei.value)
    assert "wrong" not in str(ei.value)  # the secret never appears in the error


def test_settings_redact_secrets_and_map_to_client_options() -> None:
    s = NatsSettings(servers=["nats://h:1"], user="u", password="pw", token=None)
    assert s.redacted()["password"] == "***"
    opts = connect_options(s)
    assert opts["user"] == "u" and opts["password"] == "pw" and opts["servers"] == ["nats://h:1"]
    with pytest.raises(ValueError, match="user/password"):
        NatsSettings(user="u")


async def test_inbox_prefix_reaches_every_reply_inbox(nats_server: NatsServerProcess) -> None:
    """Request replies and JetStream API replies use the configured prefix (what per-user permissions allow)."""
    with pytest.raises(ValueError, match="inbox_prefix"):
        NatsSettings(inbox_prefix="_INBOX.x")
    assert "inbox_prefix" not in connect_options(NatsSettings())
    nc = await connect(NatsSettings(servers=[nats_server.url], inbox_prefix="_INBOX_tester"), name="t-inbox")
    seen: list[str] = []

    async def echo(msg: object) -> None:
        seen.append(msg.reply)  # type: ignore[attr-defined]
        await msg.respond(b"ok")  # type: ignore[attr-defined]

    await nc.subscribe("t.inbox.echo", cb=echo)
    assert (await nc.request("t.inbox.echo", b"", timeout=5.0)).data == b"ok"
    assert nc.new_inbox().startswith("_INBOX_tester.") and seen[0].startswith("_INBOX_tester.")
    await nc.jetstream().account_info()  # a JetStream API request answered on the prefixed inbox
    await nc.close()


async def test_client_reconnects_after_server_restart(fresh_nats_server: NatsServerProcess) -> None:
    nc = await connect(NatsSettings(servers=[fresh_nats_server.url], reconnect_wait_s=0.1))

    async def echo(req: Message, ctx: RequestContext) -> Message:
        return req

    svc = ActorService(nc, name="echo-rc", endpoints=[Endpoint("echo", "t.rc", Message, echo)])
    await svc.start()
    fresh_nats_server.kill()
    await asyncio.sleep(0.3)
    fresh_nats_server.restart()
    for _ in range(100):
        if nc.is_connected:
            break
        await asyncio.sleep(0.05)
    assert nc.is_connected
    out: Message | None = None
    for _ in range(40):  # subscriptions are replayed on reconnect; allow the server a moment
        try:
            out = await rpc.request(nc, "t.rc", Message(role="user", content="back"), Message, timeout=0.5)
            break
        except NoResponders:
            await asyncio.sleep(0.05)
    assert out == Message(role="user", content="back")
    await svc.drain()
    await nc.close()


def test_provenance_carries_the_active_otel_span() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("run") as span:
        p = Provenance(request_id="q1").with_current_trace()
    ctx = span.get_span_context()
    assert p.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    back = Provenance.from_headers(p.to_headers())
    parent = trace.get_current_span(back.otel_context()).get_span_context()
    assert parent.trace_id == ctx.trace_id and parent.span_id == ctx.span_id
    assert Provenance(request_id="q1").with_current_trace().traceparent is None


def test_provenance_tolerates_bad_headers() -> None:
    p = Provenance.from_headers({"Trinity-Turn": "not-a-number", "Trinity-Request-Id": "r"})
    assert p == Provenance(request_id="r", turn=-1)
    assert Provenance.from_headers(None) == Provenance()
