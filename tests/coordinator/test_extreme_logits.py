"""coordinate() with finite but huge routing logits: the run completes (it used to raise
``decimal.InvalidOperation`` out of route_hash), and its result survives the bus codec."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from actors.coordinator.state_machine import CallContext, coordinate
from bus.codec import decode, encode
from schemas import CoordinationRequest, CoordinationResult, Role, RunStatus, StopReason
from schemas.routing import RouteLogits, RouteRequest
from tests.coordinator.fakes import ZERO_HASH, FakeWorld, plan_of, reply_by_role

MAX = sys.float_info.max


@dataclass
class HugeLogitsWorld(FakeWorld):
    """Routes Worker on agent 2 at turn 0 and Verifier on agent 4 after, with logits of 1e22 and beyond."""

    async def route(self, req: RouteRequest, ctx: CallContext) -> RouteLogits:
        self.routes.append(req)
        agent, role = (2, Role.WORKER) if req.turn == 0 else (4, Role.VERIFIER)
        agent_logits = [-MAX, 1e22, 1e22, -1e22, 1e22, 5e-324, 0.0]
        agent_logits[agent] = MAX
        role_logits = [1e22, 1e22, 1e22]
        role_logits[int(role)] = 1e23
        return RouteLogits(request_id=req.request_id, turn=req.turn, agent_logits=agent_logits,
                           role_logits=role_logits, token_count=5, transcript_hash=ZERO_HASH)


async def test_a_run_with_huge_logits_completes_and_its_result_round_trips() -> None:
    world = HugeLogitsWorld(plan_of([(0, Role.WORKER)]), reply_by_role(worker="42", verifier="ACCEPT"))
    res = await coordinate(CoordinationRequest(request_id="huge-1", query="2+2?"), world.ports())
    assert (res.status, res.stop_reason, res.answer) == (RunStatus.OK, StopReason.ACCEPTED, "42")
    assert [(t.decision.agent_id, t.decision.role) for t in res.turns] == [(2, Role.WORKER), (4, Role.VERIFIER)]
    assert all(len(t.decision.route_hash) == 64 for t in res.turns)
    assert res.turns[0].decision.agent_margin == MAX  # MAX - (-MAX) overflowed to inf before
    assert decode(encode(res), CoordinationResult) == res
