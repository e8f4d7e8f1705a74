"""The pure coordination state machine, driven through scripted fake ports (no NATS)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from actors.coordinator.errors import AgentCallFailed as AgentCallFailedError
from actors.coordinator.errors import RoleInjectFailed
from actors.coordinator.state_machine import CallContext, Policy, coordinate, effective_mask, resolve_role
from actors.coordinator.suggestions import Suggestion
from schemas import (
    Budget,
    CoordinationRequest,
    Role,
    RoleSource,
    RunStatus,
    StopReason,
    Verdict,
)
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.trace import (
    AgentCallFailed,
    AgentCallFinished,
    RoleAssigned,
    RouteDeferred,
    RunFailed,
    RunFinished,
    RunStarted,
)
from tests.coordinator.fakes import FakeWorld, plan_of, reply_by_role

W, T, V = Role.WORKER, Role.THINKER, Role.VERIFIER


def req(rid: str = "q1", budget: Budget | None = None, mask: list[int] | None = None) -> CoordinationRequest:
    return CoordinationRequest(request_id=rid, query="What is 17 + 25?", budget=budget or Budget(),
                               agent_mask=mask)


async def test_worker_then_verifier_accept() -> None:
    world = FakeWorld(plan_of([(2, W), (4, V)]), reply_by_role(worker="42", verifier="ACCEPT: correct"))
    res = await coordinate(req(), world.ports())
    assert res.status is RunStatus.OK
    assert res.stop_reason is StopReason.ACCEPTED
    assert res.answer == "42" and res.answer_turn == 0
    assert [t.assignment.role for t in res.turns] == [W, V]
    assert [t.assignment.agent_id for t in res.turns] == [2, 4]
    assert res.turns[1].verdict is not None and res.turns[1].verdict.verdict is Verdict.ACCEPT
    assert res.turns[0].verdict is None
    assert res.error is None
    # transcript grows: the second route sees the user query plus the first reply as assistant
    assert [(m.role, m.content) for m in world.routes[1].messages] == [("user", "What is 17 + 25?"),
                                                                       ("assistant", "42")]
    assert world.routes[1].run_id == "q1"
    # the verifier's injected history holds the worker reply with its role
    assert [(h.turn, h.role, h.content) for h in world.injects[1].history] == [(0, W, "42")]
    d = res.turns[0].decision
    assert (d.agent_id, d.role, d.agent_margin, d.role_margin) == (2, W, 3.0, 2.0)
    assert d.agent_ranking == [2, 0, 1, 3, 4, 5, 6]
    assert len(d.route_hash) == 64
    assert res.turns[1].budget is not None and res.turns[1].budget.agent_calls == 2
    assert res.budget.turns == 2


async def test_event_chain_and_causation() -> None:
    world = FakeWorld(plan_of([(1, T), (2, W), (3, V)]),
                      reply_by_role(thinker="plan", worker="42", verifier="accept."))
    res = await coordinate(req(), world.ports())
    assert res.stop_reason is StopReason.ACCEPTED
    assert world.kinds() == [
        "run_started",
        "route_decided", "role_assigned", "agent_call_started", "agent_call_finished", "budget_recorded",
        "route_decided", "role_assigned", "agent_call_started", "agent_call_finished", "budget_recorded",
        "route_decided", "role_assigned", "agent_call_started", "agent_call_finished", "verdict_recorded",
        "budget_recorded",
        "run_finished",
    ]
    assert world.events[0].causation_id == "q1"
    for prev, ev in itertools.pairwise(world.events):
        assert ev.causation_id == prev.event_id
    assert len({e.event_id for e in world.events}) == len(world.events)
    assert all(e.request_id == "q1" for e in world.events)
    assert [e.turn for e in world.events if e.kind == "route_decided"] == [0, 1, 2]
    # turn events carry that turn's route hash
    for e in world.events:
        if e.kind == "role_assigned":
            assert e.route_hash == res.turns[e.turn].decision.route_hash
    # port calls are caused by the event just before them
    assert world.contexts[0].causation_id == world.events[3].event_id  # agent_call_started of turn 0
    fin = world.events[-1]
    assert isinstance(fin, RunFinished) and fin.answer_turn == 1 and fin.turns == 3
    assert fin.answer_sha256 == hashlib.sha256(b"42").hexdigest() and fin.answer_text is None


async def test_contents_hashed_unless_configured() -> None:
    world = FakeWorld(plan_of([(0, W), (0, V)]), reply_by_role(worker="secret answer"))
    await coordinate(req(), world.ports())
    finished = [e for e in world.events if isinstance(e, AgentCallFinished)]
    assert finished[0].receipt.content == "sha256:" + hashlib.sha256(b"secret answer").hexdigest()
    started = world.events[0]
    assert isinstance(started, RunStarted) and started.query_text is None
    world2 = FakeWorld(plan_of([(0, W), (0, V)]), reply_by_role(worker="secret answer"))
    await coordinate(req(), world2.ports(), Policy(trace_content=True))
    finished = [e for e in world2.events if isinstance(e, AgentCallFinished)]
    assert finished[0].receipt.content == "secret answer"
    assert isinstance(world2.events[0], RunStarted) and world2.events[0].query_text == "What is 17 + 25?"


async def test_max_turns_answer_is_latest_worker_reply() -> None:
    world = FakeWorld(plan_of([(0, W), (1, T), (2, W), (3, V), (4, T)]),
                      reply_by_role(worker="answer {turn}", verifier="REVISE: wrong"))
    res = await coordinate(req(), world.ports())
    assert res.stop_reason is StopReason.MAX_TURNS
    assert len(res.turns) == 5 and len(world.calls) == 5
    assert res.answer == "answer 2" and res.answer_turn == 2
    assert res.turns[3].verdict is not None and res.turns[3].verdict.verdict is Verdict.REVISE
    assert res.turns[3].verdict.parsed


async def test_custom_turn_limit() -> None:
    world = FakeWorld(plan_of([(0, W)]))
    res = await coordinate(req(budget=Budget(max_turns=2)), world.ports())
    assert res.stop_reason is StopReason.MAX_TURNS and len(res.turns) == 2


async def test_unparseable_verifier_reply_is_revise() -> None:
    world = FakeWorld(plan_of([(0, W), (1, V), (0, W), (1, V)]),
                      reply_by_role(verifier="Looks fine to me, ACCEPT"))
    res = await coordinate(req(budget=Budget(max_turns=4)), world.ports())
    v = res.turns[1].verdict
    assert v is not None and v.verdict is Verdict.REVISE and not v.parsed
    assert v.excerpt == "Looks fine to me, ACCEPT"
    assert res.stop_reason is StopReason.MAX_TURNS


async def test_thinker_suggestion_overrides_next_role_only() -> None:
    world = FakeWorld(plan_of([(0, W), (1, T), (2, W), (3, W)]),
                      reply_by_role(thinker="check it\n<Suggested_Role>  VERIFIER </suggested_role>",
                                    verifier="REVISE"))
    res = await coordinate(req(budget=Budget(max_turns=4)), world.ports())
    a = res.turns[2].assignment
    assert (a.role, a.source, a.routed_role, a.suggestion) == (V, RoleSource.THINKER_SUGGESTION, W, "VERIFIER")
    assert world.calls[2].role is V
    # the suggestion applies to one turn only
    a3 = res.turns[3].assignment
    assert (a3.role, a3.source, a3.suggestion) == (W, RoleSource.ROUTER, None)


async def test_unknown_suggestion_is_ignored_and_recorded() -> None:
    world = FakeWorld(plan_of([(1, T), (2, W), (0, V)]),
                      reply_by_role(thinker="<suggested_role>Critic</suggested_role>"))
    res = await coordinate(req(), world.ports())
    a = res.turns[1].assignment
    assert (a.role, a.source, a.suggestion) == (W, RoleSource.ROUTER, "Critic")
    assert "ignored unknown suggested role 'Critic'" in a.note
    assigned = [e for e in world.events if isinstance(e, RoleAssigned)]
    assert assigned[1].assignment.suggestion == "Critic"


async def test_verifier_before_worker_runs_as_worker_by_default() -> None:
    world = FakeWorld(plan_of([(3, V), (3, V)]), reply_by_role(worker="draft", verifier="ACCEPT"))
    res = await coordinate(req(), world.ports())
    a = res.turns[0].assignment
    assert (a.role, a.source, a.routed_role) == (W, RoleSource.VERIFIER_BEFORE_WORKER, V)
    assert "before any Worker reply" in a.note
    assert world.calls[0].role is W
    # once a Worker reply exists the Verifier runs as routed
    assert res.turns[1].assignment.role is V and res.turns[1].assignment.source is RoleSource.ROUTER
    assert res.stop_reason is StopReason.ACCEPTED and res.answer == "draft"


async def test_thinker_suggesting_verifier_before_worker_also_falls_back() -> None:
    world = FakeWorld(plan_of([(1, T), (1, T)]), reply_by_role(thinker="<suggested_role>verifier</suggested_role>"))
    res = await coordinate(req(budget=Budget(max_turns=2)), world.ports())
    a = res.turns[1].assignment
    assert (a.role, a.source, a.suggestion) == (W, RoleSource.VERIFIER_BEFORE_WORKER, "verifier")


async def test_verifier_before_worker_allowed() -> None:
    world = FakeWorld(plan_of([(3, V)]), reply_by_role(verifier="ACCEPT"))
    res = await coordinate(req(), world.ports(), Policy(verifier_before_worker="allow"))
    assert res.turns[0].assignment.role is V
    assert res.stop_reason is StopReason.ACCEPTED
    assert res.answer is None and res.status is RunStatus.FAILED
    assert res.error == "no Worker reply before the run stopped (accepted)"
    assert isinstance(world.events[-1], RunFailed) and world.events[-1].error_code == "no_answer"


async def test_no_worker_reply_means_failed_status() -> None:
    world = FakeWorld(plan_of([(1, T)]))
    res = await coordinate(req(budget=Budget(max_turns=3)), world.ports())
    assert res.answer is None and res.status is RunStatus.FAILED and res.stop_reason is StopReason.MAX_TURNS


async def test_agent_failure_falls_back_to_next_best_by_logit() -> None:
    world = FakeWorld(plan_of([(3, W), (3, V)]), failing_agents={3})
    res = await coordinate(req(), world.ports())
    t0 = res.turns[0]
    # ranking after 3 is 0 (logits -0.1*i)
    assert [c.agent_id for c in world.calls[:2]] == [3, 0]
    assert [(f.agent_id, f.error_code, f.fallback_agent_id) for f in t0.failures] == [(3, "upstream", 0)]
    assert t0.failures[0].message == "agent 3 is broken"
    assert t0.receipt is not None and t0.receipt.agent_id == 0
    assert t0.assignment.agent_id == 0 and t0.intent is not None and t0.intent.agent_id == 0
    failed = [e for e in world.events if isinstance(e, AgentCallFailed)]
    assert [(e.agent_id, e.fallback_agent_id, e.turn) for e in failed] == [(3, 0, 0), (3, 0, 1)]
    assert res.answer == "answer 0" and res.stop_reason is StopReason.ACCEPTED
    assert res.budget.agent_calls == 4  # failed attempts count


async def test_all_agents_failing_stops_with_no_agent_available() -> None:
    world = FakeWorld(plan_of([(2, W)]), failing_agents={0, 1, 2})
    res = await coordinate(req(mask=[0, 1, 2]), world.ports())
    assert res.stop_reason is StopReason.NO_AGENT_AVAILABLE and res.status is RunStatus.FAILED
    assert [(f.agent_id, f.fallback_agent_id) for f in res.turns[0].failures] == [(2, 0), (0, 1), (1, None)]
    assert res.error == "every candidate agent failed at turn 0 (tried 2, 0, 1)"
    assert len(res.turns) == 1 and res.turns[0].receipt is None


async def test_max_fallbacks_limits_attempts() -> None:
    world = FakeWorld(plan_of([(2, W)]), failing_agents={2, 0})
    res = await coordinate(req(), world.ports(), Policy(max_fallbacks=1))
    assert [c.agent_id for c in world.calls] == [2, 0]
    assert res.stop_reason is StopReason.NO_AGENT_AVAILABLE


async def test_masked_agents_never_chosen() -> None:
    # the router prefers agent 5, which the request masks out
    world = FakeWorld(plan_of([(5, W), (5, V)]), failing_agents={2})
    res = await coordinate(req(mask=[2, 4]), world.ports())
    assert {c.agent_id for c in world.calls} <= {2, 4}
    assert res.turns[0].decision.agent_ranking == [2, 4]
    assert res.turns[0].receipt is not None and res.turns[0].receipt.agent_id == 4


async def test_deployment_mask_intersects_request_mask() -> None:
    assert effective_mask(None, None) is None
    assert effective_mask([3, 1, 1], None) == [1, 3]
    assert effective_mask(None, (4, 2)) == [2, 4]
    assert effective_mask([1, 2, 3], (2, 3, 5)) == [2, 3]
    world = FakeWorld(plan_of([(0, W)]))
    res = await coordinate(req(mask=[0, 1]), world.ports(), Policy(agent_mask=(5, 6)))
    assert res.stop_reason is StopReason.NO_AGENT_AVAILABLE and res.turns == [] and world.calls == []
    assert world.kinds() == ["run_started", "run_failed"]


async def test_mask_outside_agent_range_is_route_failure() -> None:
    world = FakeWorld(plan_of([(0, W)]))
    res = await coordinate(req(mask=[9]), world.ports())
    assert res.stop_reason is StopReason.ROUTE_FAILED
    assert res.error is not None and "agent 9 is outside 0..6" in res.error


async def test_route_retry_on_retryable_failure() -> None:
    world = FakeWorld(plan_of([(0, W), (0, V)]), route_failures=1)
    res = await coordinate(req(), world.ports())
    assert res.stop_reason is StopReason.ACCEPTED and len(world.routes) == 3


async def test_route_failure_not_retryable() -> None:
    world = FakeWorld(plan_of([(0, W)]), route_failures=1, route_failure_retryable=False,
                      route_failure_code="invalid")
    res = await coordinate(req(), world.ports())
    assert res.stop_reason is StopReason.ROUTE_FAILED and res.status is RunStatus.FAILED
    assert res.error == "routing turn 0 failed: invalid: runtime down"
    assert isinstance(world.events[-1], RunFailed) and world.events[-1].error_code == "invalid"
    assert len(world.routes) == 1 and world.slept == []


async def test_no_runtime_yet_waits_until_one_joins() -> None:
    # the fleet is starting: three routes find no runtime (unavailable, not retryable), the fourth is served
    world = FakeWorld(plan_of([(0, W), (0, V)]), route_failures=3, route_failure_retryable=False)
    res = await coordinate(req(), world.ports(), Policy(fleet_retry_s=0.5))
    assert res.stop_reason is StopReason.ACCEPTED and res.answer is not None
    assert world.slept == [0.5, 0.5, 0.5]
    deferred = [e for e in world.events if isinstance(e, RouteDeferred)]
    assert [(e.attempt, e.turn, e.error_code) for e in deferred] == [(1, 0, "unavailable")]
    assert world.kinds()[:3] == ["run_started", "route_deferred", "route_decided"]


async def test_no_runtime_within_the_deadline_fails_explicitly() -> None:
    world = FakeWorld(plan_of([(0, W)]), route_failures=10_000, route_failure_retryable=False)
    res = await coordinate(req(budget=Budget(deadline_ms=5_000)), world.ports(), Policy(fleet_retry_s=1.0))
    assert res.status is RunStatus.FAILED and res.stop_reason is StopReason.DEADLINE
    assert res.error == ("routing turn 0: no runtime joined within 5.0s before the deadline: unavailable: "
                         "runtime down")
    assert isinstance(world.events[-1], RunFailed) and world.events[-1].error_code == "unavailable"
    assert sum(world.slept) == pytest.approx(5.0)
    assert [e.attempt for e in world.events if isinstance(e, RouteDeferred)] == [1]


async def test_route_failure_after_answer_keeps_answer_with_error() -> None:
    world = FakeWorld(plan_of([(0, W)]), route_failure_retryable=False, route_failure_code="invalid")
    ports = world.ports()
    real_route = world.route

    async def route(r, ctx):  # type: ignore[no-untyped-def]
        if r.turn == 1:
            world.route_failures = 1
        return await real_route(r, ctx)

    from dataclasses import replace
    res = await coordinate(req(), replace(ports, route=route))
    assert res.status is RunStatus.OK and res.answer == "answer 0"
    assert res.stop_reason is StopReason.ROUTE_FAILED and res.error is not None
    assert isinstance(world.events[-1], RunFinished) and world.events[-1].attrs["error"] == res.error


async def test_role_inject_failure() -> None:
    world = FakeWorld(plan_of([(0, W)]))

    async def inject(r: RoleInjectRequest, ctx: CallContext) -> RoleInjectReply:
        raise RoleInjectFailed("unavailable", "no role injector", retryable=True)

    from dataclasses import replace
    res = await coordinate(req(), replace(world.ports(), inject=inject))
    assert res.stop_reason is StopReason.ROLE_INJECT_FAILED and world.calls == []


async def test_max_agent_calls_budget() -> None:
    world = FakeWorld(plan_of([(2, W)]), failing_agents={2})
    res = await coordinate(req(budget=Budget(max_agent_calls=3)), world.ports())
    assert len(world.calls) == 3
    assert res.stop_reason is StopReason.MAX_AGENT_CALLS
    assert res.budget.agent_calls == 3
    # turn 0: agent 2 fails, agent 0 answers; turn 1: agent 2 fails, the budget trips before the fallback
    assert res.answer == "answer 0"
    assert len(res.turns) == 2 and res.turns[1].receipt is None
    assert [f.agent_id for f in res.turns[1].failures] == [2]


async def test_token_budget_caps_completion_and_stops() -> None:
    world = FakeWorld(plan_of([(0, W)]), tokens_per_call=(100, 50))
    res = await coordinate(req(budget=Budget(max_tokens=400)), world.ports(), Policy(agent_max_tokens=300))
    assert [c.max_tokens for c in world.calls] == [300, 250, 100]
    assert res.stop_reason is StopReason.MAX_TOKENS and res.budget.tokens == 450


async def test_cost_budget() -> None:
    world = FakeWorld(plan_of([(0, W)]), cost_per_call=0.25)
    res = await coordinate(req(budget=Budget(max_cost_usd=0.5)), world.ports())
    assert res.stop_reason is StopReason.MAX_COST and len(world.calls) == 2
    assert res.budget.cost_usd == pytest.approx(0.5)


async def test_deadline_budget_with_injected_clock() -> None:
    world = FakeWorld(plan_of([(0, W)]), call_seconds=4.0)
    res = await coordinate(req(budget=Budget(deadline_ms=10_000)), world.ports(),
                           Policy(agent_timeout_s=30.0, route_timeout_s=1.0))
    assert res.stop_reason is StopReason.DEADLINE and len(world.calls) == 3
    # every call's timeout is capped at the time left
    assert [c.timeout_s for c in world.contexts] == pytest.approx([10.0, 6.0, 2.0])
    assert [c.deadline_ms for c in world.calls] == [10_000, 6_000, 2_000]
    assert res.budget.elapsed_ms == pytest.approx(12_000.0)


def test_resolve_role_table() -> None:
    s_v = Suggestion("verifier", V)
    s_bad = Suggestion("boss", None)
    assert resolve_role(W, None, False, "worker") == (W, RoleSource.ROUTER, "")
    assert resolve_role(T, s_v, True, "worker") == (V, RoleSource.THINKER_SUGGESTION, "")
    assert resolve_role(T, s_v, False, "allow") == (V, RoleSource.THINKER_SUGGESTION, "")
    role, source, note = resolve_role(V, s_bad, False, "worker")
    assert (role, source) == (W, RoleSource.VERIFIER_BEFORE_WORKER)
    assert note.startswith("ignored unknown suggested role 'boss'; Verifier (router)")


async def test_no_agent_yet_waits_until_one_serves() -> None:
    world = FakeWorld(plan_of([(0, W), (0, V)]))
    real_call = world.call_agent
    down = {"calls": 0}

    async def call_agent(intent, ctx):  # type: ignore[no-untyped-def]
        if down["calls"] < 7:  # every agent of the first round is not serving yet
            down["calls"] += 1
            raise AgentCallFailedError("unavailable", f"no actor is serving trinity.agent.{intent.agent_id}.call")
        return await real_call(intent, ctx)

    from dataclasses import replace
    res = await coordinate(req(), replace(world.ports(), call_agent=call_agent), Policy(fleet_retry_s=0.5))
    assert res.stop_reason is StopReason.ACCEPTED and res.answer is not None
    assert world.slept == [2.0]
    deferred = [e for e in world.events if isinstance(e, RouteDeferred)]
    assert len(deferred) == 1 and deferred[0].attrs == {"waiting_for": "agents"}
