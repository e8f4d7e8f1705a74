"""Property tests of the pure state machine: runs terminate within budgets, nothing is called after an
ACCEPT, and the answer is the latest Worker reply whenever one exists."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.coordinator.state_machine import Policy, coordinate
from schemas import Budget, CoordinationRequest, Role, RunStatus, StopReason, Verdict
from schemas.coordination import AgentCallIntent
from tests.coordinator.fakes import FakeWorld

ROLES = st.sampled_from([Role.WORKER, Role.THINKER, Role.VERIFIER])
VERIFIER_TEXTS = st.sampled_from(["ACCEPT", "accept: fine", "REVISE: no", "**Accept**", "hmm", "", "ACCEPTED"])
THINKER_TEXTS = st.sampled_from(["plan", "<suggested_role>worker</suggested_role>",
                                 "<suggested_role>Verifier</suggested_role>", "<suggested_role>x</suggested_role>",
                                 "<SUGGESTED_ROLE> thinker </SUGGESTED_ROLE>"])


@dataclass
class Scenario:
    budget: Budget
    plan: list[tuple[int, Role]]
    verifier_texts: list[str]
    thinker_texts: list[str]
    failing: set[int]
    mask: list[int] | None
    tokens: tuple[int, int]
    cost: float
    call_seconds: float
    policy: Policy


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    budget = Budget(
        max_turns=draw(st.integers(1, 8)),
        max_agent_calls=draw(st.none() | st.integers(1, 20)),
        max_tokens=draw(st.none() | st.integers(1, 600)),
        max_cost_usd=draw(st.none() | st.floats(0.0, 1.0)),
        deadline_ms=draw(st.none() | st.integers(1, 30_000)),
    )
    n = 9
    return Scenario(
        budget=budget,
        plan=draw(st.lists(st.tuples(st.integers(0, 6), ROLES), min_size=n, max_size=n)),
        verifier_texts=draw(st.lists(VERIFIER_TEXTS, min_size=n, max_size=n)),
        thinker_texts=draw(st.lists(THINKER_TEXTS, min_size=n, max_size=n)),
        failing=draw(st.sets(st.integers(0, 6), max_size=7)),
        mask=draw(st.none() | st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True)),
        tokens=(draw(st.integers(0, 80)), draw(st.integers(0, 80))),
        cost=draw(st.sampled_from([0.0, 0.01, 0.2])),
        call_seconds=draw(st.sampled_from([0.0, 0.5, 3.0])),
        policy=Policy(verifier_before_worker=draw(st.sampled_from(["worker", "allow"])),
                      max_fallbacks=draw(st.none() | st.integers(0, 3))),
    )


def run_scenario(sc: Scenario) -> tuple[FakeWorld, object]:
    def reply(i: AgentCallIntent) -> str:
        if i.role is Role.VERIFIER:
            return sc.verifier_texts[i.turn]
        if i.role is Role.THINKER:
            return sc.thinker_texts[i.turn]
        return f"w{i.turn}-{i.agent_id}"

    world = FakeWorld(lambda t: sc.plan[t], reply, failing_agents=sc.failing, tokens_per_call=sc.tokens,
                      cost_per_call=sc.cost, call_seconds=sc.call_seconds)
    request = CoordinationRequest(request_id="prop", query="q?", budget=sc.budget, agent_mask=sc.mask)
    return world, asyncio.run(coordinate(request, world.ports(), sc.policy))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_runs_respect_budgets_accept_and_answer(sc: Scenario) -> None:
    world, res_obj = run_scenario(sc)
    from schemas import CoordinationResult
    assert isinstance(res_obj, CoordinationResult)
    res = res_obj
    b = sc.budget
    # terminates within budgets
    assert len(res.turns) <= b.max_turns and res.budget.turns <= b.max_turns
    assert res.budget.agent_calls == len(world.calls)
    if b.max_agent_calls is not None:
        assert len(world.calls) <= b.max_agent_calls
    # no call starts once tokens or cost are spent, or after the deadline
    spent_tokens, spent_cost, t = 0, 0.0, 0.0
    for call in world.calls:
        if b.max_tokens is not None:
            assert spent_tokens < b.max_tokens
        if b.max_cost_usd is not None:
            assert spent_cost < b.max_cost_usd
        if b.deadline_ms is not None:
            assert t * 1000 < b.deadline_ms
        t += sc.call_seconds
        if call.agent_id not in sc.failing:
            spent_tokens += sum(sc.tokens)
            spent_cost += sc.cost
    # masked agents are never called
    if sc.mask is not None:
        assert {c.agent_id for c in world.calls} <= set(sc.mask)
    # nothing is called after an ACCEPT, which ends the run
    accepted = [t for t in res.turns if t.verdict is not None and t.verdict.verdict is Verdict.ACCEPT]
    if accepted:
        assert accepted[0] is res.turns[-1] and res.stop_reason is StopReason.ACCEPTED
        assert world.calls[-1] == accepted[0].intent
    else:
        assert res.stop_reason is not StopReason.ACCEPTED
    # the answer is the latest Worker reply whenever one exists
    worker = [t for t in res.turns if t.assignment.role is Role.WORKER and t.receipt is not None]
    if worker:
        assert worker[-1].receipt is not None
        assert res.answer == worker[-1].receipt.content and res.answer_turn == worker[-1].turn
        assert res.status is RunStatus.OK
    else:
        assert res.answer is None and res.status is RunStatus.FAILED
    # with the default policy a Verifier never runs before a Worker reply
    if sc.policy.verifier_before_worker == "worker":
        seen_worker = False
        for tr in res.turns:
            if tr.assignment.role is Role.VERIFIER:
                assert seen_worker
            if tr.assignment.role is Role.WORKER and tr.receipt is not None:
                seen_worker = True
    # the trace is one causal chain ending in a terminal event
    assert world.events[0].causation_id == "prop"
    for prev, ev in itertools.pairwise(world.events):
        assert ev.causation_id == prev.event_id
    assert world.events[-1].kind in ("run_finished", "run_failed")
    assert sum(e.kind in ("run_finished", "run_failed") for e in world.events) == 1
