"""The provider agents actor over a real NATS server, with providers on a loopback HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client

from actors.provider_agents.actor import ProviderAgentsActor
from bus import subjects
from bus.errors import NoResponders, RemoteError
from bus.rpc import request
from config.provider_agents import (
    AgentSpec,
    ProviderAgentsSettings,
    ProviderKind,
    ProviderSettings,
    RetrySettings,
    Secret,
)
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent, AgentCallReceipt
from schemas.wire import ErrorCode
from tests.provider_agents.loopback import LoopbackServer, Reply

KEY = "sk-ant-actor-test-0123456789"


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as s:
        yield s


@pytest.fixture
async def actor(nc: Client, srv: LoopbackServer) -> AsyncIterator[ProviderAgentsActor]:
    settings = ProviderAgentsSettings(
        providers=[ProviderSettings(name="anthropic", kind=ProviderKind.ANTHROPIC, base_url=srv.url + "/v1",
                                    api_key=Secret(KEY), retry=RetrySettings(max_attempts=2, backoff_base_s=0.01))],
        agents=[AgentSpec(agent_id=1, name="claude", provider="anthropic", model="claude-sonnet-4-20250514",
                          price_in_per_mtok=3.0, price_out_per_mtok=15.0),
                AgentSpec(agent_id=2, name="claude-b", provider="anthropic", model="claude-x")],
        queue_group=f"agents-{id(srv)}")
    a = ProviderAgentsActor(nc, settings)
    await a.start()
    yield a
    await a.drain(timeout=2.0)


def intent(agent_id: int = 1) -> AgentCallIntent:
    return AgentCallIntent(request_id="req-7", turn=1, agent_id=agent_id, role=Role.VERIFIER,
                           messages=[Message(role="user", content="Is 42 right?")], max_tokens=50)


async def test_call_returns_receipt(nc: Client, srv: LoopbackServer, actor: ProviderAgentsActor) -> None:
    srv.script(Reply(200, {"content": [{"type": "text", "text": "ACCEPT"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 1000, "output_tokens": 100}}))
    receipt = await request(nc, subjects.agent_call(1), intent(), AgentCallReceipt, timeout=10.0)
    assert (receipt.request_id, receipt.turn, receipt.agent_id, receipt.content) == ("req-7", 1, 1, "ACCEPT")
    assert receipt.cost_usd == pytest.approx(1000 * 3e-6 + 100 * 15e-6)
    assert receipt.provider == "anthropic" and receipt.model == "claude-sonnet-4-20250514"
    assert srv.requests[0].json()["max_tokens"] == 50
    assert actor.stats()["agents"][1]["ok"] == 1


async def test_provider_failure_is_typed_error_reply(nc: Client, srv: LoopbackServer,
                                                     actor: ProviderAgentsActor) -> None:
    srv.script(Reply(500, {"error": f"upstream broke; key was {KEY}"}))
    with pytest.raises(RemoteError) as ei:
        await request(nc, subjects.agent_call(1), intent(), AgentCallReceipt, timeout=10.0)
    assert ei.value.code is ErrorCode.UPSTREAM and ei.value.retryable
    assert ei.value.reply.details["attempts"] == "2"
    assert ei.value.reply.details["kind"] == "ProviderServerError"
    assert KEY not in ei.value.message
    srv.script(Reply(401, {"error": "bad key"}))
    with pytest.raises(RemoteError) as ei:
        await request(nc, subjects.agent_call(2), intent(2), AgentCallReceipt, timeout=10.0)
    assert ei.value.code is ErrorCode.UPSTREAM and not ei.value.retryable
    assert ei.value.reply.details["kind"] == "ProviderAuthError"


async def test_unknown_and_mismatched_agents(nc: Client, actor: ProviderAgentsActor) -> None:
    with pytest.raises(RemoteError) as ei:
        await request(nc, subjects.agent_call(1), intent(6), AgentCallReceipt, timeout=5.0)
    assert ei.value.code is ErrorCode.UNKNOWN_AGENT
    with pytest.raises(RemoteError) as ei:
        await request(nc, subjects.agent_call(1), intent(2), AgentCallReceipt, timeout=5.0)
    assert ei.value.code is ErrorCode.INVALID
    with pytest.raises(NoResponders):
        await request(nc, subjects.agent_call(5), intent(5), AgentCallReceipt, timeout=5.0)


async def test_malformed_intent_gets_typed_reply_and_actor_keeps_serving(
        nc: Client, srv: LoopbackServer, actor: ProviderAgentsActor) -> None:
    msg = await nc.request(subjects.agent_call(1), b'{"request_id": "x"}', timeout=5.0)
    assert msg.headers is not None and msg.headers.get("Trinity-Error") == "malformed"
    srv.script(Reply(200, {"content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn"}))
    receipts = await asyncio.gather(*(request(nc, subjects.agent_call(1), intent(), AgentCallReceipt, timeout=10.0)
                                      for _ in range(4)))
    assert [r.content for r in receipts] == ["fine"] * 4
    assert actor.stats()["endpoints"]["agent-1"]["malformed"] == 1


async def test_micro_service_is_discoverable(nc: Client, actor: ProviderAgentsActor) -> None:
    msg = await nc.request("$SRV.INFO.trinity-provider-agents", b"", timeout=5.0)
    info = msgspec.json.decode(msg.data)
    assert sorted(e["subject"] for e in info["endpoints"]) == ["trinity.agent.1.call", "trinity.agent.2.call"]


async def test_offline_roster_answers_over_the_bus(nc: Client) -> None:
    """The whole offline path: NATS request -> actor -> in-process SmolLM2 -> receipt."""
    actor = ProviderAgentsActor(nc, ProviderAgentsSettings.offline(), name="trinity-provider-agents-offline")
    await actor.start()  # preload: the model is loaded before the first call
    try:
        q = AgentCallIntent(request_id="req-off", turn=0, agent_id=5, role=Role.WORKER, max_tokens=16,
                            messages=[Message(role="user", content="What is the capital of France?")])
        receipt = await request(nc, subjects.agent_call(5), q, AgentCallReceipt, timeout=120.0)
    finally:
        await actor.drain(timeout=5.0)
    assert "Paris" in receipt.content
    assert (receipt.agent_id, receipt.provider, receipt.cost_usd) == (5, "local", 0.0)
    assert receipt.usage.completion_tokens > 0
