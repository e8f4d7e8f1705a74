"""Episodes run the coordinator's loop with the real tool agents; replies and hidden states are memoized."""

from __future__ import annotations

import numpy as np
import pytest

from actors.model_runtime.engine import RouterEngine
from config.model_runtime import ModelRuntimeSettings
from crucible.training.episodes import HiddenMemo
from crucible.world.tasks import build_suite
from schemas.common import Message
from schemas.routing import RouteRequest
from tests.training.helpers import tool_runner


def _head(agent: int, role: int, hidden: int = 6) -> np.ndarray:
    """A head that always picks ``agent`` in ``role`` (on the bias feature)."""
    w = np.zeros((10, hidden))
    w[agent, 0] = 1.0
    w[7 + role, 0] = 1.0
    return w.ravel()


async def test_a_fixed_head_routes_every_task_to_one_agent() -> None:
    runner, pool = await tool_runner()
    tasks = [t for t in build_suite(0).split("test") if t.family in ("arithmetic", "geography")][:60]
    try:
        ev = await runner.evaluate(_head(1, 0), tasks)  # arithmetic tool as Worker, every turn
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    arith = [e for e in ev.episodes if e.family == "arithmetic"]
    geo = [e for e in ev.episodes if e.family == "geography"]
    assert arith and geo and all(e.correct for e in arith) and not any(e.correct for e in geo)
    assert all(e.agents == (1, 1, 1, 1, 1) and e.stop_reason == "max_turns" for e in ev.episodes)
    assert arith[0].fitness == pytest.approx(1 - (4 / 5) / 4 * 0.1)


async def test_worker_then_verifier_ends_the_episode_on_accept() -> None:
    runner, pool = await tool_runner()
    task = next(t for t in build_suite(0).split("test") if t.family == "arithmetic")
    # bias picks the arithmetic tool as Worker; once a reply exists (feature 5) the lenient verifier 5 as Verifier
    w = np.zeros((10, 6))
    w[1, 0], w[7, 0] = 1.0, 1.0
    w[5, 5], w[9, 5] = 5.0, 5.0
    try:
        ev = await runner.evaluate(w.ravel(), [task])
        calls = runner.replies.calls
        again = await runner.evaluate(w.ravel(), [task])
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    e = ev.episodes[0]
    assert (e.correct, e.agents, e.roles, e.stop_reason) == (True, (1, 5), (0, 2), "accepted")
    assert again.episodes == ev.episodes and runner.replies.calls == calls  # replayed from the memo
    assert runner.replies.hits == 2


def test_hidden_memo_gives_the_engines_own_logits() -> None:
    engine = RouterEngine.load(ModelRuntimeSettings(checkpoint_preset="qwen3-tiny-synthetic"))
    memo = HiddenMemo(engine, batch=4)
    transcripts = [[Message(role="user", content=q)] for q in ("What is 2 + 3?", "Capital of Peru?", "Reverse 'ab'")]
    transcripts.append([*transcripts[0], Message(role="assistant", content="2 + 3 = 5")])
    texts = [memo.text(m) for m in transcripts]
    states = memo.states(texts)
    head = engine.head.weight.double().numpy()
    for m, h in zip(transcripts, states, strict=True):
        got = engine.route(RouteRequest(request_id="r", turn=0, messages=m))
        np.testing.assert_allclose(head[:7] @ h, got.agent_logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(head[7:] @ h, got.role_logits, rtol=1e-4, atol=1e-4)
    assert (memo.misses, memo.hits) == (4, 0)
    memo.states(texts[:2])
    assert (memo.misses, memo.hits) == (4, 2)


async def test_a_sakana_runner_prompts_agents_as_the_served_coordinator_does() -> None:
    """What is trained is what is served: under ``sakana`` the episodes ask for the profile's role pack."""
    runner, pool = await tool_runner(routing_profile="sakana", route_rule="argmax")
    task = next(t for t in build_suite(0).split("test") if t.family == "arithmetic")
    sent: list[object] = []
    call = runner.replies.call

    async def spy(intent):  # type: ignore[no-untyped-def]
        sent.append(intent)
        return await call(intent)

    runner.replies.call = spy  # type: ignore[method-assign]
    try:
        ev = await runner.evaluate(_head(1, 0), [task])
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    assert runner.policy.role_pack == "sakana-fugu/1" and ev.episodes[0].agents[0] == 1
    first = sent[0].messages  # type: ignore[attr-defined]
    assert first[0].content.startswith("You are a helpful assistant.")
    assert first[1].content.startswith(f"{task.question}\nYou may see other agents' reference thought")
    assert ev.episodes[0].correct  # the arithmetic tool still reads the question from fugu's prompt
