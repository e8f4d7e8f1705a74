"""Tool agents (arithmetic, knowledge, text) through the agent pool and over NATS, on the task suite's questions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client

from actors.coordinator.verdict import parse_verdict
from actors.provider_agents.actor import ProviderAgentsActor
from actors.provider_agents.pool import AgentPool
from actors.provider_agents.tools import ArithmeticSkill, KnowledgeSkill, TextSkill, read_request, reply_for
from actors.role_injector.builder import build_messages
from actors.role_injector.packs import DEFAULT_PACK, DEFAULT_PACK_V1
from bus import subjects
from bus.rpc import request
from config.provider_agents import (
    AgentSpec,
    ProviderAgentsSettings,
    ProviderKind,
    ProviderSettings,
    provider_agents_settings_from_env,
)
from config.settings import load_settings
from crucible.world.tasks import Task, build_suite, grade
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent, AgentCallReceipt, Verdict
from schemas.roles import RoleInjectRequest, TranscriptEntry

SUITE = build_suite(seed=0)
#: agent id -> (provider kind, the family it solves)
TOOLS = {1: (ProviderKind.TOOL_ARITHMETIC, "arithmetic"), 2: (ProviderKind.TOOL_KNOWLEDGE, "geography"),
         3: (ProviderKind.TOOL_TEXT, "text")}
V1_INLINE = msgspec.structs.replace(DEFAULT_PACK_V1, name="v1-inline", history_style="inline")


def tool_settings(**extra: AgentSpec) -> ProviderAgentsSettings:
    providers = [ProviderSettings(name=kind.value, kind=kind) for kind, _ in TOOLS.values()]
    agents = [AgentSpec(agent_id=i, name=kind.value, provider=kind.value, model=kind.value)
              for i, (kind, _) in TOOLS.items()]
    agents.append(AgentSpec(agent_id=5, name="arith-lenient", provider="tool-arithmetic", model="m",
                            extra_body={"abstain_verdict": "accept"}))
    return ProviderAgentsSettings(providers=providers, agents=agents, queue_group="agents-tools")


@pytest.fixture
async def pool() -> AsyncIterator[AgentPool]:
    p = AgentPool.from_settings(tool_settings())
    await p.start()
    yield p
    await p.aclose()


def intent(agent_id: int, task: Task, role: Role = Role.WORKER, *, pack=DEFAULT_PACK, answer: str | None = None,
           turn: int = 0) -> AgentCallIntent:
    history = [TranscriptEntry(turn=0, role=Role.WORKER, agent_id=0, content=answer)] if answer is not None else []
    turn = max(turn, len(history))
    req = RoleInjectRequest(request_id="req-1", turn=turn, agent_id=agent_id, role=role, query=task.question,
                            history=history)
    return AgentCallIntent(request_id="req-1", turn=turn, agent_id=agent_id, role=role,
                           messages=build_messages(pack, req), max_tokens=64)


@pytest.mark.parametrize("agent_id", sorted(TOOLS))
async def test_tool_answers_every_task_of_its_family_exactly_and_no_other(pool: AgentPool, agent_id: int) -> None:
    _, family = TOOLS[agent_id]
    right = {f: 0 for f in ("arithmetic", "geography", "text", "general")}
    for task in SUITE.tasks:
        receipt = await pool.call(intent(agent_id, task))
        assert receipt.agent_id == agent_id and receipt.finish_reason == "stop"
        ok = grade(task, receipt.content)
        right[task.family] += ok
        if task.family != family:
            assert receipt.content.startswith("I cannot help with this:"), (task.question, receipt.content)
    n = {f: len(ts) for f, ts in SUITE.families().items()}
    assert right == {f: (n[f] if f == family else 0) for f in right}
    assert pool.stats()[agent_id]["ok"] == len(SUITE.tasks)
    assert pool.stats()[agent_id]["cost_usd"] == 0.0


async def test_worker_replies_are_short_exact_answers(pool: AgentPool) -> None:
    t = Task(id="a", family="arithmetic", kind="mul", question="What is 347 * 29?", answer="10063", grading="number")
    assert (await pool.call(intent(1, t))).content == "347 * 29 = 10063"
    t = Task(id="g", family="geography", kind="capital_of", question="What is the capital of Guinea-Bissau?",
             answer="Bissau", grading="text")
    assert (await pool.call(intent(2, t))).content == "The capital of Guinea-Bissau is Bissau."
    t = Task(id="t", family="text", kind="reverse", question="Spell the word 'planet' backwards.", answer="tenalp",
             grading="text")
    assert (await pool.call(intent(3, t))).content == "tenalp"


@pytest.mark.parametrize(("question", "expected"), [
    ("What is 1,234 plus 66 minus 300?", "1234 + 66 - 300 = 1000"),
    ("Evaluate 868 divided by 14.", "868 / 14 = 62"),
    ("Compute (45 + 17) * 3 - 12.", "(45 + 17) * 3 - 12 = 174"),
    ("What is 7 x 6?", "7 * 6 = 42"),
    ("What is 10 / 4?", "10 / 4 = 2.5"),
    ("What is 12 - 30?", "12 - 30 = -18"),
])
def test_arithmetic_expression_forms(question: str, expected: str) -> None:
    solution = ArithmeticSkill().solve(question)
    assert solution is not None and solution.reply == expected


@pytest.mark.parametrize("question", ["What year did 1969 end?", "What is 5 / 0?", "What is 9 ** 9 ** 9?",
                                      "What is the opposite of hot?", ""])
def test_arithmetic_declines_what_it_cannot_evaluate(question: str) -> None:
    assert ArithmeticSkill().solve(question) is None


@pytest.mark.parametrize(("question", "answer"), [
    ("What is the capital of Niger?", "Niamey"), ("What is the capital of Nigeria?", "Abuja"),
    ("Which country has Mexico City as its capital?", "Mexico"), ("What is the capital of Mexico?", "Mexico City"),
    ("Which continent is Brazil in?", "South America"), ("What is the ISO currency code of Japan?", "JPY"),
    ("São Tomé is the capital of which country?", "Sao Tome and Principe"),
])
def test_knowledge_lookups(question: str, answer: str) -> None:
    solution = KnowledgeSkill().solve(question)
    assert solution is not None and solution.answer == answer


@pytest.mark.parametrize(("question", "answer"), [
    ("How many times does the letter 'a' appear in 'banana'?", "3"), ("Count the letters in 'mississippi'.", "11"),
    ("Sort these words alphabetically: pear, Apple, fig.", "Apple, fig, pear"),
    ("Write 'hello world' in uppercase.", "HELLO WORLD"), ("Write “stressed” reversed.", "desserts"),
])
def test_text_operations(question: str, answer: str) -> None:
    solution = TextSkill().solve(question)
    assert solution is not None and solution.answer == answer


@pytest.mark.parametrize("pack", [DEFAULT_PACK, DEFAULT_PACK_V1, V1_INLINE], ids=lambda p: p.pack_id)
def test_question_role_and_answer_are_read_from_every_pack_layout(pack) -> None:
    task = SUITE.families()["geography"][0]
    for role in Role:
        messages = build_messages(pack, RoleInjectRequest(
            request_id="r", turn=1, agent_id=2, role=role, query=task.question,
            history=[TranscriptEntry(turn=0, role=Role.WORKER, agent_id=0, content="It is Atlantis.")]))
        read = read_request(messages)
        assert read.role == role.name.lower() and read.question == task.question
        shown = role is not Role.WORKER or not pack.prompt(role).template  # /2's Worker template omits the answer
        assert read.candidate == ("It is Atlantis." if shown else None)
    bare = read_request([Message(role="user", content="What is 2 + 2?")])
    assert (bare.role, bare.question, bare.candidate) == ("worker", "What is 2 + 2?", None)


@pytest.mark.parametrize("pack", [DEFAULT_PACK, DEFAULT_PACK_V1, V1_INLINE], ids=lambda p: p.pack_id)
@pytest.mark.parametrize("agent_id", sorted(TOOLS))
async def test_verifier_checks_answers_of_its_family(pool: AgentPool, agent_id: int, pack) -> None:
    _, family = TOOLS[agent_id]
    for task in SUITE.families()[family][:15]:
        good = await pool.call(intent(agent_id, task, Role.VERIFIER, pack=pack, answer=f"I think: {task.answer}"))
        assert parse_verdict(good.content).verdict is Verdict.ACCEPT, (task.question, good.content)
        wrong = "The answer is 123456789." if task.grading == "text" else f"It is {float(task.answer) + 1:g}."
        bad = await pool.call(intent(agent_id, task, Role.VERIFIER, pack=pack, answer=wrong))
        verdict = parse_verdict(bad.content)
        assert verdict.verdict is Verdict.REVISE and verdict.parsed and grade(task, bad.content), bad.content
        first = await pool.call(intent(agent_id, task, Role.VERIFIER, pack=pack))
        assert first.content.startswith("REVISE. There is no answer yet.")


async def test_verifier_abstains_outside_its_family_and_the_lenient_one_accepts(pool: AgentPool) -> None:
    task = SUITE.families()["general"][0]
    strict = await pool.call(intent(1, task, Role.VERIFIER, answer=task.answer))
    parsed = parse_verdict(strict.content)
    assert strict.content.startswith("ABSTAIN.") and parsed.verdict is Verdict.REVISE and not parsed.parsed
    lenient = await pool.call(intent(5, task, Role.VERIFIER, answer=task.answer))
    assert lenient.content.startswith("ACCEPT (unchecked).")
    assert parse_verdict(lenient.content).verdict is Verdict.ACCEPT


async def test_thinker_gives_its_result_and_suggests_the_next_role(pool: AgentPool) -> None:
    task = SUITE.families()["arithmetic"][0]
    advice = await pool.call(intent(1, task, Role.THINKER))
    assert advice.content.endswith("<suggested_role>Worker</suggested_role>")
    assert grade(task, advice.content.split("<")[0])
    checked = await pool.call(intent(1, task, Role.THINKER, answer=f"= {task.answer}"))
    assert checked.content.endswith("<suggested_role>Verifier</suggested_role>")
    other = await pool.call(intent(1, SUITE.families()["text"][0], Role.THINKER))
    assert other.content == ("I cannot help with this: I only evaluate arithmetic expressions. "
                             "<suggested_role>Worker</suggested_role>")


async def test_tools_are_deterministic(pool: AgentPool) -> None:
    for task in SUITE.split("test")[:40]:
        for agent_id in TOOLS:
            a = await pool.call(intent(agent_id, task))
            b = await pool.call(intent(agent_id, task, turn=3))
            assert a.content == b.content


def test_reply_for_plain_messages() -> None:
    assert reply_for(TextSkill(), [Message(role="user", content="Reverse the word 'abc'.")]) == "cba"


async def test_tool_agents_over_nats(nc: Client) -> None:
    actor = ProviderAgentsActor(nc, tool_settings())
    await actor.start()
    try:
        for agent_id, (_, family) in TOOLS.items():
            for task in SUITE.families()[family][:3] + SUITE.families()["general"][:1]:
                receipt = await request(nc, subjects.agent_call(agent_id), intent(agent_id, task), AgentCallReceipt,
                                        timeout=10.0)
                assert receipt.agent_id == agent_id and receipt.request_id == "req-1"
                assert grade(task, receipt.content) is (task.family == family), (task.question, receipt.content)
                assert receipt.provider == TOOLS[agent_id][0].value and receipt.cost_usd == 0.0
        verdict = await request(nc, subjects.agent_call(2), intent(2, SUITE.families()["geography"][0],
                                                                    Role.VERIFIER, answer="Atlantis"),
                                AgentCallReceipt, timeout=10.0)
        assert parse_verdict(verdict.content).verdict is Verdict.REVISE
        assert actor.stats()["agents"][1]["ok"] == 4
    finally:
        await actor.drain(timeout=2.0)


def test_offline_world_preset_and_default_unchanged() -> None:
    world = provider_agents_settings_from_env({"TRINITY_AGENTS_PRESET": "offline-world"})
    assert world == ProviderAgentsSettings.offline_world()
    kinds = {p.name: p.kind for p in world.providers}
    assert [kinds[a.provider].value for a in world.agents] == [
        "local", "tool-arithmetic", "tool-knowledge", "tool-text", "local", "tool-arithmetic", "tool-knowledge"]
    assert world.agent(4).temperature == 0.7 and world.agent(5).extra_body == {"abstain_verdict": "accept"}
    assert ProviderAgentsSettings() == ProviderAgentsSettings.offline()
    assert load_settings(environ={"TRINITY_AGENTS_PRESET": "offline-world"}).provider_agents == world
    assert load_settings(environ={}).provider_agents == ProviderAgentsSettings.offline()
    assert [a.provider for a in provider_agents_settings_from_env({}).agents] == ["local"] * 7
    with pytest.raises(ValueError, match="offline-world"):
        provider_agents_settings_from_env({"TRINITY_AGENTS_PRESET": "world"})
    assert ProviderSettings(name="t", kind=ProviderKind.TOOL_TEXT).base_url == ""
    with pytest.raises(ValueError, match="base_url"):
        ProviderSettings(name="o", kind=ProviderKind.OPENAI)
