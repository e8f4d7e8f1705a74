"""Receipts shared by an agent's replicas through JetStream: a repeated call reaching another replica (another
host) is answered from the first replica's receipt, not by calling the provider again. Real nats-server, two
actors on their own connections, providers on a loopback HTTP server that counts every call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest
from nats.aio.client import Client

from actors.provider_agents.actor import ProviderAgentsActor
from actors.provider_agents.idempotency import call_key
from actors.provider_agents.shared_receipts import BUCKET, receipt_key
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.rpc import request
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind, ProviderSettings, Secret
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent, AgentCallReceipt
from tests.provider_agents.loopback import LoopbackServer, Reply

ANSWER = {"content": [{"type": "text", "text": "ACCEPT"}], "stop_reason": "end_turn",
          "usage": {"input_tokens": 10, "output_tokens": 2}}


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as s:
        s.script(Reply(200, ANSWER))
        yield s


def settings(srv: LoopbackServer, group: str, *, shared: bool = True) -> ProviderAgentsSettings:
    return ProviderAgentsSettings(
        providers=[ProviderSettings(name="anthropic", kind=ProviderKind.ANTHROPIC, base_url=srv.url + "/v1",
                                    api_key=Secret("sk-ant-shared-0123456789"))],
        agents=[AgentSpec(agent_id=1, name="claude", provider="anthropic", model="claude-x")],
        queue_group=group, call_cache_shared=shared)


def intent(request_id: str) -> AgentCallIntent:
    return AgentCallIntent(request_id=request_id, turn=2, agent_id=1, role=Role.VERIFIER,
                           messages=[Message(role="user", content="Is 42 right?")], max_tokens=20)


async def replica(url: str, s: ProviderAgentsSettings) -> tuple[Client, ProviderAgentsActor]:
    nc = await nats.connect(url)
    actor = ProviderAgentsActor(nc, s)
    await actor.start()
    assert actor.receipts is not None or not s.call_cache_shared
    if actor.receipts is not None:
        await asyncio.wait_for(actor.receipts.keeper.ready.wait(), 30.0)  # hang guard: the bucket exists
    return nc, actor


async def stop(nc: Client, actor: ProviderAgentsActor) -> None:
    await actor.drain(timeout=2.0)
    await nc.close()


@pytest.mark.parametrize("shared", [True, False])
async def test_a_repeat_on_another_replica_is_answered_from_the_shared_receipt(
        fresh_nats_server: NatsServerProcess, srv: LoopbackServer, shared: bool) -> None:
    group = f"agents-{uuid.uuid4().hex[:6]}"
    client = await nats.connect(fresh_nats_server.url)
    first = await replica(fresh_nats_server.url, settings(srv, group, shared=shared))
    q = intent(f"req-{uuid.uuid4().hex[:8]}")
    try:
        receipt = await request(client, subjects.agent_call(1), q, AgentCallReceipt, timeout=10.0)
        await stop(*first)  # the host that made the call is gone; the coordinator asks again
        second = await replica(fresh_nats_server.url, settings(srv, group, shared=shared))
        try:
            again = await request(client, subjects.agent_call(1), q, AgentCallReceipt, timeout=10.0)
            stats = second[1].stats()
        finally:
            await stop(*second)
    finally:
        await client.close()
    assert again.content == receipt.content == "ACCEPT"
    if shared:  # one provider call for the two intents
        assert len(srv.requests) == 1
        assert stats["calls"]["shared"] == 1 and stats["calls"]["calls"] == 0
        assert msgspec.structs.asdict(again) == msgspec.structs.asdict(receipt)
    else:  # the control: without the shared store the second replica calls the provider again
        assert len(srv.requests) == 2 and stats["shared_receipts"] is None


async def test_a_receipt_that_does_not_match_its_intent_is_ignored(
        fresh_nats_server: NatsServerProcess, srv: LoopbackServer) -> None:
    group = f"agents-{uuid.uuid4().hex[:6]}"
    client = await nats.connect(fresh_nats_server.url)
    nc, actor = await replica(fresh_nats_server.url, settings(srv, group))
    q = intent(f"req-{uuid.uuid4().hex[:8]}")
    try:
        # a stored entry under the call's key that is another call's receipt (or garbage) never answers it
        kv = await client.jetstream().key_value(BUCKET)
        forged = AgentCallReceipt(request_id="someone-else", turn=2, agent_id=1, content="FORGED")
        await kv.put(receipt_key(group, 1, call_key(q)), msgspec.json.encode(forged))
        receipt = await request(client, subjects.agent_call(1), q, AgentCallReceipt, timeout=10.0)
        assert receipt.content == "ACCEPT" and len(srv.requests) == 1
        assert actor.stats()["shared_receipts"]["mismatched"] == 1
        # the real receipt replaced it: a repeat on a fresh replica is answered from it
        stored = msgspec.json.decode((await kv.get(receipt_key(group, 1, call_key(q)))).value or b"",
                                     type=AgentCallReceipt)
        assert (stored.request_id, stored.content) == (q.request_id, "ACCEPT")
    finally:
        await stop(nc, actor)
        await client.close()


async def test_agents_answer_when_the_store_cannot_hold_the_bucket(srv: LoopbackServer) -> None:
    # a JetStream store too small for the bucket (64 MiB asked, 1 MB there): the shared store stays unavailable,
    # and every call still gets its receipt
    server = NatsServerProcess.start(name="trinity-test-small-store", max_file_store="1MB")
    try:
        client = await nats.connect(server.url)
        nc, actor = await _replica_without_waiting(server.url, settings(srv, "agents"))
        try:
            q = intent("req-no-js")
            first = await request(client, subjects.agent_call(1), q, AgentCallReceipt, timeout=10.0)
            again = await request(client, subjects.agent_call(1), q, AgentCallReceipt, timeout=10.0)
            stats = actor.stats()
        finally:
            await stop(nc, actor)
            await client.close()
    finally:
        server.close()
    assert first.content == again.content == "ACCEPT"
    assert len(srv.requests) == 1  # the per-process cache still answers the repeat
    assert stats["shared_receipts"]["unavailable"] >= 1 and stats["shared_receipts"]["written"] == 0


async def _replica_without_waiting(url: str, s: ProviderAgentsSettings) -> tuple[Client, ProviderAgentsActor]:
    nc = await nats.connect(url)
    actor = ProviderAgentsActor(nc, s)
    await actor.start()
    return nc, actor
