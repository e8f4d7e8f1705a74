"""Durable execution in the state machine: a run resumed after k completed turns equals the uninterrupted run
and calls no agent of those turns again; overloaded routes back off with jitter; the deadline is absolute."""

from __future__ import annotations

import msgspec
import pytest

from actors.coordinator.state_machine import Policy, Resume, RunDeferred, coordinate
from schemas import Budget, CoordinationRequest, Role, RunStatus, StopReason, TurnRecord
from tests.coordinator.fakes import FakeWorld, plan_of, reply_by_role

PLAN = [(1, Role.WORKER), (3, Role.THINKER), (4, Role.WORKER), (2, Role.VERIFIER)]


def _world() -> FakeWorld:
    return FakeWorld(route_plan=plan_of(PLAN),
                     reply_plan=reply_by_role(worker="answer {turn}", thinker="<suggested_role>worker</suggested_role>",
                                              verifier="ACCEPT"),
                     tokens_per_call=(3, 4), cost_per_call=0.01)


def _request(rid: str = "r-1", deadline_ms: int | None = 120_000) -> CoordinationRequest:
    return CoordinationRequest(request_id=rid, query="what?", budget=Budget(max_turns=5, deadline_ms=deadline_ms))


def _comparable(res: object) -> bytes:
    """The result without the elapsed times (they depend on the fake clock)."""
    data = msgspec.to_builtins(res)
    data["budget"].pop("elapsed_ms")
    for t in data["turns"]:
        t["budget"].pop("elapsed_ms")
        t["intent"].pop("deadline_ms")
    return msgspec.json.encode(data)


@pytest.mark.parametrize("policy", [Policy(), Policy(routing_profile="elixir-port", route_rule="sample", route_seed=3)],
                         ids=["argmax", "sample"])
async def test_a_run_resumed_after_k_turns_equals_the_whole_run_and_calls_no_agent_twice(policy: Policy) -> None:
    recorded: list[tuple[TurnRecord, list[int] | None, str]] = []

    async def record(turn: TurnRecord, rng: list[int] | None, cause: str) -> None:
        recorded.append((turn, rng, cause))

    whole_world = _world()
    whole = await coordinate(_request(), whole_world.ports(), policy, Resume(record=record))
    n = len(whole.turns)
    assert whole.status is RunStatus.OK and n >= 2 and len(recorded) == n
    assert [t.turn for t, _, _ in recorded] == list(range(n))
    for k in range(1, n + 1):
        w = _world()
        turns, rng, cause = [t for t, _, _ in recorded[:k]], recorded[k - 1][1], recorded[k - 1][2]
        resumed = await coordinate(_request(), w.ports(), policy, Resume(turns=turns, rng_state=rng, cause=cause))
        assert _comparable(resumed) == _comparable(whole), k
        assert [c.turn for c in w.calls] == list(range(k, n))  # only the turns not completed before
        assert [r.turn for r in w.routes] == list(range(k, n))
        started = w.events[0]
        assert started.kind == "run_started" and started.attrs["resumed_at_turn"] == str(k)  # type: ignore[union-attr]
        assert started.causation_id == cause  # the trace chain goes on from the last recorded event
        assert resumed.budget.agent_calls == whole.budget.agent_calls == n
        assert resumed.budget.tokens == whole.budget.tokens == 7 * n


async def test_the_deadline_is_absolute_a_resumed_run_keeps_what_is_left() -> None:
    w = _world()
    wall_now = 1_700_000_000.0 + w.now
    res = await coordinate(_request(deadline_ms=120_000), w.ports(), Policy(), Resume(deadline_at=wall_now - 1.0))
    assert (res.status, res.stop_reason) == (RunStatus.FAILED, StopReason.DEADLINE)
    assert w.calls == [] and res.budget.elapsed_ms >= 120_000
    w = _world()
    res = await coordinate(_request(deadline_ms=120_000), w.ports(), Policy(), Resume(deadline_at=wall_now + 3.5))
    assert res.status is RunStatus.OK
    assert 0 < w.contexts[0].timeout_s <= 3.5  # every call is capped by what is left of the absolute deadline


async def test_overloaded_routes_back_off_with_jitter_and_the_run_succeeds() -> None:
    w = _world()
    w.route_failures, w.route_failure_code = 12, "overloaded"
    policy = Policy(overload_backoff_s=0.1, overload_backoff_max_s=1.0, route_attempts=1)
    res = await coordinate(_request(), w.ports(), policy)
    assert res.status is RunStatus.OK and len(res.turns) == 4
    assert len(w.slept) == 12 and all(0 < s <= 1.0 for s in w.slept)
    assert max(w.slept[:1]) <= 0.1  # the first backoff is below the base, later ones grow up to the cap
    assert len(set(w.slept)) > 1  # jittered (random), not a fixed period
    deferred = [e for e in w.events if e.kind == "route_deferred"]
    assert deferred and deferred[0].attrs == {"waiting_for": "runtime_capacity"}  # type: ignore[union-attr]


async def test_overload_past_the_wait_fails_the_route_or_hands_the_job_back() -> None:
    w = _world()
    w.route_failures, w.route_failure_code = 10_000, "overloaded"
    res = await coordinate(_request(), w.ports(), Policy(overload_wait_s=5.0))
    assert (res.status, res.stop_reason) == (RunStatus.FAILED, StopReason.ROUTE_FAILED)
    assert res.error and "overloaded for" in res.error
    w = _world()
    w.route_failures, w.route_failure_code = 10_000, "overloaded"
    res = await coordinate(_request(), w.ports(), Policy(overload_wait_s=0.0, route_attempts=2))
    assert len(w.routes) == 2 and w.slept == []  # the old behaviour: two tries, then failed
    assert (res.status, res.stop_reason) == (RunStatus.FAILED, StopReason.ROUTE_FAILED)
    assert res.error == "routing turn 0 failed: overloaded: runtime down"
    w = _world()
    w.route_failures, w.route_failure_code = 10_000, "overloaded"
    with pytest.raises(RunDeferred):  # a queued job goes back to the queue instead of ending failed
        await coordinate(_request(), w.ports(), Policy(overload_wait_s=600.0), Resume(requeue_after_s=3.0))
    assert w.calls == [] and sum(w.slept) >= 3.0 - 1.0


async def test_a_guard_that_raises_stops_the_run_before_any_agent_is_called() -> None:
    class Taken(Exception):
        pass

    calls = [0]

    async def guard() -> None:
        calls[0] += 1
        if calls[0] > 2:  # ownership lost after the first route and agent call
            raise Taken

    w = _world()
    with pytest.raises(Taken):
        await coordinate(_request(), w.ports(), Policy(), Resume(guard=guard))
    assert [c.turn for c in w.calls] == [0]
