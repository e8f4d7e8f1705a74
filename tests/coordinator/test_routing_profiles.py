"""Routing profiles in the coordinator: Sakana's verdict and suggestion rules, the observation, the decision rule,
the Verifier-before-Worker stop, profile recording, and the profile mismatch guard."""

from __future__ import annotations

import random

import pytest

from actors.coordinator.actor import policy_from_settings
from actors.coordinator.profiles import (
    choose,
    observation,
    read_suggestion,
    read_verdict,
    sakana_accepts,
    softmax_draw,
)
from actors.coordinator.state_machine import Policy, coordinate
from config.coordinator import CoordinatorSettings
from schemas import Budget, CoordinationRequest, Role, RoleSource, RunStatus, StopReason, Verdict
from schemas.roles import TranscriptEntry
from schemas.routing import RouteLogits
from schemas.sakana import RuntimeProfile
from tests.coordinator.fakes import FakeWorld, ProfiledWorld, plan_of, reply_by_role

W, T, V = Role.WORKER, Role.THINKER, Role.VERIFIER

# The probes: replies that end a Sakana run but not an elixir-port one, and the other way round.
SAKANA_ONLY_ACCEPT = ["I ACCEPT", "Verdict: ACCEPT", "ACCEPTED", "acceptable", "The answer is fine, I accept it.",
                      "  Accept - correct", "Looks right. ACCEPT"]


@pytest.mark.parametrize("text", SAKANA_ONLY_ACCEPT)
def test_sakana_verdict_accepts_what_sakana_accepts(text: str) -> None:
    assert sakana_accepts(text)
    assert read_verdict("sakana", text).verdict is Verdict.ACCEPT


@pytest.mark.parametrize("text,accepted", [
    ("REJECT: wrong", False), ("reject, though I'd accept a fix", False), ("I accept. No, reject.", False),
    ("accept, not reject", True),  # starts with "accept": Sakana's first test wins
    ("Looks wrong", False), ("", False), ("**ACCEPT**", True), ("REVISE", False),
])
def test_sakana_verdict_rule(text: str, accepted: bool) -> None:
    assert sakana_accepts(text) is accepted
    assert (read_verdict("sakana", text).verdict is Verdict.ACCEPT) is accepted


def test_elixir_port_verdict_is_unchanged() -> None:
    assert read_verdict("elixir-port", "I ACCEPT").verdict is Verdict.REVISE
    assert read_verdict("elixir-port", "Verdict: ACCEPT").verdict is Verdict.ACCEPT
    assert read_verdict("elixir-port", "REVISE").parsed


def test_sakana_suggestion_rule() -> None:
    both = "<suggestion>check units</suggestion>\n<suggested_role>verifier</suggested_role>"
    assert read_suggestion("sakana", both) == (read_suggestion("sakana", both)[0], V)
    # first tag counts, Sakana's names only, exact after strip
    s = read_suggestion("sakana", "<suggestion>x</suggestion><suggested_role> solver </suggested_role>"
                                  "<suggested_role>verifier</suggested_role>")
    assert s is not None and s.role is W
    assert read_suggestion("sakana", "<suggestion>x</suggestion><suggested_role>worker</suggested_role>").role is None
    assert read_suggestion("sakana", "<suggestion>x</suggestion><suggested_role>Solver</suggested_role>").role is None
    # no <suggestion> tag: nothing applies
    lone = read_suggestion("sakana", "<suggested_role>solver</suggested_role>")
    assert lone is not None and lone.role is None
    assert read_suggestion("sakana", "no tags") is None
    # elixir-port: last tag, our names; "solver" is unknown there
    assert read_suggestion("elixir-port", "<suggested_role>solver</suggested_role>").role is None
    e = read_suggestion("elixir-port",
                        "<suggested_role>worker</suggested_role><suggested_role>verifier</suggested_role>")
    assert e is not None and e.role is V


def test_observation_per_profile() -> None:
    hist = [TranscriptEntry(turn=0, agent_id=1, role=T, content="plan"),
            TranscriptEntry(turn=1, agent_id=2, role=W, content="42"),
            TranscriptEntry(turn=2, agent_id=3, role=V, content="REJECT")]
    assert [m.content for m in observation("elixir-port", "q", hist)] == ["q", "plan", "42", "REJECT"]
    assert [(m.role, m.content) for m in observation("sakana", "q", hist)] == [("user", "q"), ("assistant", "42")]


def test_softmax_draw_is_inverse_cdf() -> None:
    vals = [0.0, 0.0, 0.0, 0.0]
    assert [softmax_draw(vals, [0, 1, 2, 3], 1.0, u) for u in (0.0, 0.24, 0.26, 0.99)] == [0, 0, 1, 3]
    assert softmax_draw([0.0, 50.0], [0, 1], 1.0, 0.5) == 1
    assert softmax_draw([0.0, 50.0], [0], 1.0, 0.99) == 0  # masked agents are never drawn


def test_choose_sample_is_seeded_and_recorded() -> None:
    logits = RouteLogits(request_id="r", turn=0, agent_logits=[0.1, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0],
                         role_logits=[0.2, 0.1, 0.0], token_count=5, transcript_hash="0" * 64,
                         routing_profile="sakana")
    picks = [choose(logits, RuntimeProfile(), None, profile="sakana", rule="sample", rng=random.Random(7))
             for _ in range(3)]
    assert len({(p.agent_id, p.role) for p in picks}) == 1  # same seed, same draw
    many = {choose(logits, RuntimeProfile(), None, profile="sakana", rule="sample", rng=random.Random(s)).agent_id
            for s in range(60)}
    assert len(many) > 3  # it does sample
    d = picks[0]
    assert (d.rule, d.temperature, d.routing_profile) == ("sample", 1.0, "sakana")
    assert d.agent_ranking[0] == d.agent_id and sorted(d.agent_ranking) == list(range(7))
    a = choose(logits, RuntimeProfile(), None, profile="sakana")
    assert (a.agent_id, a.role, a.rule) == (1, W, "argmax")


SAKANA = Policy(verifier_before_worker="end", routing_profile="sakana")


def req(rid: str = "q1") -> CoordinationRequest:
    return CoordinationRequest(request_id=rid, query="What is 17 + 25?", budget=Budget())


async def test_sakana_verifier_before_worker_ends_with_no_call() -> None:
    world = ProfiledWorld(plan_of([(3, V)]))
    res = await coordinate(req(), world.ports(), SAKANA)
    assert res.stop_reason is StopReason.VERIFIER_BEFORE_WORKER
    assert res.status is RunStatus.FAILED and res.answer is None and world.calls == []
    assert res.routing_profile == "sakana" and "before any Worker reply" in (res.error or "")
    assert world.kinds() == ["run_started", "route_decided", "run_failed"]
    assert world.events[1].routing_profile == "sakana"  # type: ignore[attr-defined]


async def test_sakana_thinker_suggests_verifier_before_worker_ends() -> None:
    world = ProfiledWorld(plan_of([(1, T), (2, W)]),
                          reply_by_role(thinker="<suggestion>check</suggestion><suggested_role>verifier</suggested_role>"))
    res = await coordinate(req(), world.ports(), SAKANA)
    assert res.stop_reason is StopReason.VERIFIER_BEFORE_WORKER and len(world.calls) == 1


async def test_sakana_run_routes_on_worker_replies_and_accepts_sakana_verdicts() -> None:
    world = ProfiledWorld(plan_of([(1, T), (2, W), (4, V)]),
                          reply_by_role(thinker="<suggestion>go</suggestion><suggested_role>solver</suggested_role>",
                                        worker="42", verifier="I ACCEPT this"))
    res = await coordinate(req(), world.ports(), SAKANA)
    assert res.stop_reason is StopReason.ACCEPTED and res.answer == "42"
    assert [t.assignment.role for t in res.turns] == [T, W, V]
    assert res.turns[1].assignment.source is RoleSource.THINKER_SUGGESTION
    # the router never sees the Thinker's reply
    assert [[m.content for m in r.messages] for r in world.routes] == [
        ["What is 17 + 25?"], ["What is 17 + 25?"], ["What is 17 + 25?", "42"]]
    assert all(t.decision.routing_profile == "sakana" for t in res.turns)


async def test_elixir_port_keeps_worker_fallback_and_records_profile() -> None:
    world = FakeWorld(plan_of([(3, V), (2, W), (4, V)]), reply_by_role(worker="42", verifier="ACCEPT"))
    res = await coordinate(req(), world.ports())
    assert res.turns[0].assignment.source is RoleSource.VERIFIER_BEFORE_WORKER
    assert res.routing_profile == "elixir-port" and res.route_seed is None


async def test_profile_mismatch_fails_the_route() -> None:
    world = ProfiledWorld(plan_of([(2, W)]))
    res = await coordinate(req(), world.ports(), Policy())
    assert res.stop_reason is StopReason.ROUTE_FAILED and "'sakana'" in (res.error or "") and world.calls == []


async def test_sampled_run_records_its_seed_and_replays() -> None:
    pol = Policy(verifier_before_worker="end", routing_profile="sakana", route_rule="sample")
    a = await coordinate(req("same"), ProfiledWorld(plan_of([(2, W), (3, V)])).ports(), pol)
    b = await coordinate(req("same"), ProfiledWorld(plan_of([(2, W), (3, V)])).ports(), pol)
    assert a.route_seed is not None and a.route_seed == b.route_seed
    assert [(t.decision.agent_id, t.decision.role) for t in a.turns] == \
           [(t.decision.agent_id, t.decision.role) for t in b.turns]
    assert all(t.decision.rule == "sample" for t in a.turns)


def test_policy_from_settings_takes_profile_defaults() -> None:
    p = policy_from_settings(CoordinatorSettings(routing_profile="sakana"))
    assert (p.routing_profile, p.verifier_before_worker, p.route_rule) == ("sakana", "end", "sample")
    e = policy_from_settings(CoordinatorSettings())
    assert (e.routing_profile, e.verifier_before_worker, e.route_rule) == ("elixir-port", "worker", "argmax")
    o = policy_from_settings(CoordinatorSettings(routing_profile="sakana", route_rule="argmax",
                                                 verifier_before_worker="worker", route_seed=5))
    assert (o.route_rule, o.verifier_before_worker, o.route_seed) == ("argmax", "worker", 5)
    with pytest.raises(ValueError, match="routing_profile"):
        CoordinatorSettings(routing_profile="fugu")
