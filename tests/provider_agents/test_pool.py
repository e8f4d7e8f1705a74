"""The agent pool: roster merging, usage/cost accounting, concurrency limits, unknown agents, config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from actors.provider_agents.errors import AgentOverloaded, ProviderServerError, UnknownAgent
from actors.provider_agents.pool import AgentPool, call_cost
from actors.provider_agents.types import ChatRequest, ChatResult
from config.provider_agents import (
    AgentSpec,
    ProviderAgentsSettings,
    ProviderKind,
    ProviderSettings,
    RetrySettings,
    Secret,
    provider_agents_settings_from_env,
    secret_dec_hook,
    secret_enc_hook,
)
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent, Usage
from schemas.wire import ErrorCode
from tests.provider_agents.loopback import LoopbackServer, Reply


def intent(agent_id: int = 0, **kw: object) -> AgentCallIntent:
    return AgentCallIntent(request_id="r1", turn=2, agent_id=agent_id, role=Role.WORKER,
                           messages=[Message(role="user", content="q")], **kw)  # type: ignore[arg-type]


class GatedProvider:
    """In-memory provider whose calls wait on a gate; records requests and peak concurrency."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.requests: list[ChatRequest] = []
        self.active = 0
        self.peak = 0

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        return ChatResult(content="ok", usage=Usage(prompt_tokens=10, completion_tokens=5), model="m")

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as s:
        yield s


async def test_receipt_carries_usage_cost_latency_and_roster_options(srv: LoopbackServer) -> None:
    srv.script(Reply(200, {"model": "served-model", "choices": [{"message": {"content": "42"},
                                                                 "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 2_000, "completion_tokens": 500}}))
    settings = ProviderAgentsSettings(
        providers=[ProviderSettings(name="or", kind=ProviderKind.OPENAI, base_url=srv.url, api_key=Secret("k"))],
        agents=[AgentSpec(agent_id=3, name="ds", provider="or", model="deepseek-chat", max_tokens=100,
                          temperature=0.1, price_in_per_mtok=0.27, price_out_per_mtok=1.10,
                          extra_body={"top_k": 20})])
    pool = AgentPool.from_settings(settings)
    try:
        receipt = await pool.call(intent(3, max_tokens=4096, temperature=0.9, seed=5))
    finally:
        await pool.aclose()
    assert (receipt.request_id, receipt.turn, receipt.agent_id) == ("r1", 2, 3)
    assert (receipt.content, receipt.provider, receipt.model, receipt.attempts) == ("42", "or", "served-model", 1)
    assert (receipt.usage.prompt_tokens, receipt.usage.completion_tokens) == (2000, 500)
    assert receipt.cost_usd == pytest.approx(2000 * 0.27e-6 + 500 * 1.10e-6, rel=1e-12)
    assert receipt.latency_ms > 0
    body = srv.requests[0].json()
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"], body["top_k"]) == \
        ("deepseek-chat", 100, 0.1, 5, 20)
    st = pool.stats()[3]
    assert (st["ok"], st["prompt_tokens"], st["completion_tokens"], st["attempts"]) == (1, 2000, 500, 1)
    assert st["cost_usd"] == pytest.approx(receipt.cost_usd)


async def test_failures_are_counted_by_kind(srv: LoopbackServer) -> None:
    srv.script(Reply(502, b"{}"))
    settings = ProviderAgentsSettings(
        providers=[ProviderSettings(name="p", kind=ProviderKind.OPENAI, base_url=srv.url,
                                    retry=RetrySettings(max_attempts=2, backoff_base_s=0.0))],
        agents=[AgentSpec(agent_id=0, name="a", provider="p", model="m")])
    pool = AgentPool.from_settings(settings)
    try:
        with pytest.raises(ProviderServerError):
            await pool.call(intent(0))
    finally:
        await pool.aclose()
    st = pool.stats()[0]
    assert (st["failed"], st["failures"], st["attempts"], st["in_flight"]) == (1, {"ProviderServerError": 1}, 2, 0)


async def test_unknown_agent_is_typed() -> None:
    pool = AgentPool([AgentSpec(agent_id=0, name="a", provider="g", model="m")], {"g": GatedProvider()})
    with pytest.raises(UnknownAgent) as ei:
        await pool.call(intent(6))
    assert ei.value.code is ErrorCode.UNKNOWN_AGENT
    assert "configured: [0]" in str(ei.value)


async def test_per_agent_concurrency_limit_and_overload() -> None:
    prov = GatedProvider()
    pool = AgentPool([AgentSpec(agent_id=0, name="a", provider="g", model="m", max_concurrency=2, max_waiting=3),
                      AgentSpec(agent_id=1, name="b", provider="g", model="m", max_concurrency=1)],
                     {"g": prov})
    tasks = [asyncio.create_task(pool.call(intent(0))) for _ in range(5)]
    other = asyncio.create_task(pool.call(intent(1)))
    for _ in range(20):
        await asyncio.sleep(0)
    st = pool.stats()[0]
    assert (st["in_flight"], st["waiting"]) == (2, 3)
    assert prov.peak == 3  # 2 for agent 0 + 1 for agent 1: the limits are per agent
    with pytest.raises(AgentOverloaded) as ei:
        await pool.call(intent(0))
    assert ei.value.code is ErrorCode.OVERLOADED and ei.value.retryable
    prov.gate.set()
    receipts = await asyncio.gather(*tasks, other)
    assert [r.content for r in receipts] == ["ok"] * 6
    assert pool.stats()[0]["rejected_overload"] == 1
    assert pool.stats()[0]["ok"] == 5
    assert prov.peak == 3


def test_call_cost() -> None:
    spec = AgentSpec(agent_id=0, name="a", provider="p", model="m", price_in_per_mtok=1.25, price_out_per_mtok=10.0)
    assert call_cost(Usage(prompt_tokens=1_000_000, completion_tokens=100_000), spec) == pytest.approx(2.25)
    assert call_cost(Usage(), spec) == 0.0


def test_deadline_from_intent() -> None:
    pool = AgentPool([AgentSpec(agent_id=0, name="a", provider="g", model="m")], {"g": GatedProvider()},
                     clock=lambda: 100.0)
    req = pool.chat_request(intent(0, deadline_ms=2500, stop=["x"]), pool.spec(0))
    assert (req.deadline, req.stop, req.max_tokens, req.temperature) == (102.5, ["x"], 1024, 0.0)


def test_settings_presets_and_env() -> None:
    offline = provider_agents_settings_from_env({})
    assert [a.agent_id for a in offline.agents] == list(range(7))
    assert {a.provider for a in offline.agents} == {"local"}
    env = {"TRINITY_AGENTS_PRESET": "paper", "OPENAI_API_KEY": "sk-proj-abcdefghijklmnopqrstuv",
           "ANTHROPIC_API_KEY": "sk-ant-api03-abcdefghijklmnop",
           "GOOGLE_API_KEY": "AIzaSyA-0123456789abcdefghijklmnopqrstu",
           "TRINITY_VLLM_BASE_URL": "http://10.0.0.5:8000/v1", "TRINITY_LOCAL_MODEL_CACHE": "/tmp/x"}
    paper = provider_agents_settings_from_env(env)
    assert paper.provider("openai").api_key == Secret(env["OPENAI_API_KEY"])
    assert paper.provider("gemini").api_key == Secret(env["GOOGLE_API_KEY"])
    assert paper.provider("vllm").base_url == "http://10.0.0.5:8000/v1"
    assert paper.local.cache_dir == "/tmp/x"
    assert sorted(paper.secrets()) == sorted(v for k, v in env.items() if k.endswith("_KEY"))
    for v in paper.secrets():
        assert v not in repr(paper)
        assert v.encode() not in msgspec.json.encode(paper, enc_hook=secret_enc_hook)
    assert [a.provider for a in paper.agents] == ["openai", "anthropic", "gemini", "vllm", "vllm", "vllm", "vllm"]
    doc = msgspec.json.encode({"providers": [{"name": "x", "kind": "openai", "base_url": "http://h",
                                              "api_key": "sk-json-key-123456789012"}],
                               "agents": [{"agent_id": 0, "name": "a", "provider": "x", "model": "m"}]})
    custom = provider_agents_settings_from_env({"TRINITY_AGENTS_JSON": doc.decode()})
    assert custom.provider("x").api_key == Secret("sk-json-key-123456789012")
    assert msgspec.json.decode(doc, type=ProviderAgentsSettings, dec_hook=secret_dec_hook) == custom
    with pytest.raises(ValueError, match="TRINITY_AGENTS_PRESET"):
        provider_agents_settings_from_env({"TRINITY_AGENTS_PRESET": "cloud"})


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="not a configured provider"):
        ProviderAgentsSettings(agents=[AgentSpec(agent_id=0, name="a", provider="nope", model="m")])
    with pytest.raises(ValueError, match="unique"):
        ProviderAgentsSettings(agents=[AgentSpec(agent_id=0, name="a", provider="local", model="m")] * 2)
    with pytest.raises(ValueError, match="base_url"):
        ProviderSettings(name="p", kind=ProviderKind.OPENAI)
