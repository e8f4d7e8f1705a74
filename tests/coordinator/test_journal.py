"""The run journal on a real JetStream KV bucket: one owner per running id, turns kept across claims, a taken-over
owner stopped at its next write, leases, hand-back; and the agents' idempotent call cache on the bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from actors.coordinator.journal import LeaseHeld, Superseded, claim, open_bucket
from actors.provider_agents.actor import ProviderAgentsActor
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from config.provider_agents import ProviderAgentsSettings
from schemas import AgentCallIntent, AgentCallReceipt, Message, Role, RoleAssignment, TurnRecord
from schemas.routing import decide
from schemas.sakana import RuntimeProfile
from tests.coordinator.fakes import make_logits
from tests.coordinator.test_resume import _world


def _turn(rid: str, turn: int) -> TurnRecord:
    decision = decide(make_logits(rid, turn, 1, Role.WORKER), RuntimeProfile())
    receipt = _world().receipt(AgentCallIntent(request_id=rid, turn=turn, agent_id=1, role=Role.WORKER,
                                               messages=[Message(role="user", content="q")]))
    return TurnRecord(turn=turn, decision=decision, receipt=receipt,
                      assignment=RoleAssignment(request_id=rid, turn=turn, agent_id=1, role=Role.WORKER))


@pytest.fixture
async def client(fresh_nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    nc = await nats.connect(fresh_nats_server.url)
    yield nc
    await nc.close()


async def test_a_second_claim_resumes_the_turns_and_stops_the_first_owner(client: Client) -> None:
    kv = await open_bucket(client.jetstream())
    assert (await open_bucket(client.jetstream())).__class__ is kv.__class__  # idempotent
    rid = f"j-{uuid.uuid4().hex[:8]}"
    a = await claim(kv, request_id=rid, fingerprint="fp", owner="A", now=1000.0, lease_s=5.0, deadline_at=1100.0)
    assert a.durable and a.state.term == 1 and a.state.turns == []
    await a.record_turn(_turn(rid, 0), rng_state=None, cause="ev-7")
    await a.renew(1010.0)
    # B while A's lease is live: refused
    with pytest.raises(LeaseHeld) as held:
        await claim(kv, request_id=rid, fingerprint="fp", owner="B", now=1001.0, lease_s=5.0, deadline_at=9999.0)
    assert held.value.owner == "A" and held.value.left_s == pytest.approx(9.0)
    # B once it ran out (A paused or dead): term 2, A's turn and the first deadline kept
    b = await claim(kv, request_id=rid, fingerprint="fp", owner="B", now=1011.0, lease_s=5.0, deadline_at=9999.0)
    assert (b.state.term, b.state.owner, b.state.deadline_at, b.state.cause) == (2, "B", 1100.0, "ev-7")
    assert [t.turn for t in b.state.turns] == [0]
    # A wakes up: every write of A is refused, B's go on
    for write in (a.record_turn(_turn(rid, 1), rng_state=None, cause="x"), a.renew(2000.0), a.confirm()):
        with pytest.raises(Superseded):
            await write
    await b.record_turn(_turn(rid, 1), rng_state=None, cause="ev-9")
    entry = await kv.get(rid)
    assert b"\"owner\":\"B\"" in entry.value and entry.revision == b.revision
    # B hands it back (drain): the lease ends at once, the next claim takes it without waiting, B is stopped
    await b.hand_back()
    with pytest.raises(Superseded):
        await b.record_turn(_turn(rid, 2), rng_state=None, cause="y")
    c = await claim(kv, request_id=rid, fingerprint="fp", owner="C", now=1012.0, lease_s=5.0, deadline_at=None)
    assert c.state.term == 3 and [t.turn for t in c.state.turns] == [0, 1]
    await c.release()
    fresh = await claim(kv, request_id=rid, fingerprint="fp", owner="D", now=1013.0, lease_s=5.0, deadline_at=None)
    assert fresh.state.turns == [] and fresh.state.term == 1  # released: a new run


async def test_another_payload_under_the_id_does_not_inherit_the_turns(client: Client) -> None:
    kv = await open_bucket(client.jetstream())
    rid = f"j-{uuid.uuid4().hex[:8]}"
    a = await claim(kv, request_id=rid, fingerprint="one", owner="A", now=0.0, lease_s=1.0, deadline_at=None)
    await a.record_turn(_turn(rid, 0), rng_state=None, cause="e")
    b = await claim(kv, request_id=rid, fingerprint="two", owner="B", now=5.0, lease_s=1.0, deadline_at=None)
    assert b.state.turns == [] and b.state.term == 2


async def test_without_a_bucket_the_run_goes_on_without_resume_points() -> None:
    h = await claim(None, request_id="x", fingerprint="f", owner="A", now=0.0, lease_s=1.0, deadline_at=None)
    assert not h.durable
    await h.record_turn(_turn("x", 0), rng_state=None, cause="e")
    assert len(h.state.turns) == 1


async def test_provider_agents_answer_a_repeated_intent_with_one_provider_call(client: Client) -> None:
    settings = ProviderAgentsSettings.offline()
    actor = ProviderAgentsActor(client, settings)
    made: list[AgentCallIntent] = []

    async def slow_call(intent: AgentCallIntent) -> AgentCallReceipt:
        made.append(intent)
        await asyncio.sleep(0.3)
        return AgentCallReceipt(request_id=intent.request_id, turn=intent.turn, agent_id=intent.agent_id,
                                content=f"reply {len(made)}")

    actor.pool.call = slow_call  # type: ignore[method-assign]  # the provider behind the pool, counted
    await actor.start()
    try:
        agent = actor.pool.agent_ids[0]
        intent = AgentCallIntent(request_id="idem-1", turn=0, agent_id=agent, role=Role.WORKER,
                                 messages=[Message(role="user", content="q")], deadline_ms=5000)
        later = AgentCallIntent(request_id="idem-1", turn=0, agent_id=agent, role=Role.WORKER,
                                messages=[Message(role="user", content="q")], deadline_ms=1200)
        other = AgentCallIntent(request_id="idem-1", turn=1, agent_id=agent, role=Role.WORKER,
                                messages=[Message(role="user", content="q")])
        subject = subjects.agent_call(agent)
        first, joined = await asyncio.gather(rpc.request(client, subject, intent, AgentCallReceipt, timeout=5.0),
                                             rpc.request(client, subject, later, AgentCallReceipt, timeout=5.0))
        kept = await rpc.request(client, subject, intent, AgentCallReceipt, timeout=5.0)
        assert first.content == joined.content == kept.content == "reply 1" and len(made) == 1
        assert (await rpc.request(client, subject, other, AgentCallReceipt, timeout=5.0)).content == "reply 2"
        assert actor.stats()["calls"] == {"calls": 2, "joined": 1, "cached": 1, "shared": 0, "evicted": 0}
    finally:
        await actor.drain(timeout=2.0)


class _Flaky:
    """The real bucket, but the next update fails with a timeout, either before or after it lands."""

    def __init__(self, kv: object, *, lands: bool) -> None:
        self.kv, self.lands, self.fail_next = kv, lands, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.kv, name)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if self.fail_next:
            self.fail_next = False
            if self.lands:
                await self.kv.update(key, value, last=last)  # type: ignore[attr-defined]
            raise nats.errors.TimeoutError
        return await self.kv.update(key, value, last=last)  # type: ignore[attr-defined]


@pytest.mark.parametrize("lands", [False, True], ids=["lost-write", "unacknowledged-write"])
async def test_a_failed_journal_write_is_carried_by_the_next_or_stops_the_run(client: Client, lands: bool) -> None:
    kv = _Flaky(await open_bucket(client.jetstream()), lands=lands)
    rid = f"j-{uuid.uuid4().hex[:8]}"
    h = await claim(kv, request_id=rid, fingerprint="fp", owner="A", now=0.0, lease_s=5.0,  # type: ignore[arg-type]
                    deadline_at=None)
    kv.fail_next = True
    await h.record_turn(_turn(rid, 0), rng_state=None, cause="a")  # logged, the run goes on
    assert h.failed_writes == 1 and h.durable
    if lands:  # it did land: our revision is stale, so the next write cannot pass for the owner's
        with pytest.raises(Superseded):
            await h.record_turn(_turn(rid, 1), rng_state=None, cause="b")
    else:
        await h.record_turn(_turn(rid, 1), rng_state=None, cause="b")
        resumed = await claim(kv, request_id=rid, fingerprint="fp", owner="B", now=10.0, lease_s=5.0,  # type: ignore[arg-type]
                              deadline_at=None)
        assert [t.turn for t in resumed.state.turns] == [0, 1]  # the lost turn came with the next write
