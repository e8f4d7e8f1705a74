"""Local generation that can be stopped: the model's own worker thread, its bounded queue, the per-token
stopping criterion (deadline / caller gone / closing), and closing that leaves no thread behind.

Real SmolLM2-135M (the cached checkpoint; converted on first use). Progress is observed through the worker's
events (``queued``/``started``/``token``/``finished``), never through wall-clock limits.
"""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest
from nats.aio.client import Client

from actors.provider_agents.actor import ProviderAgentsActor
from actors.provider_agents.errors import AgentOverloaded, LocalModelError, ProviderTimeout
from actors.provider_agents.local_model import GenerationCall, LocalModel, LocalModelProvider
from actors.provider_agents.pool import AgentPool
from actors.provider_agents.types import ChatRequest
from bus import subjects
from bus.errors import RemoteError
from bus.rpc import request
from config.provider_agents import OFFLINE_MAX_TOKENS, LocalModelSettings, ProviderAgentsSettings
from schemas.common import Message, Role
from schemas.coordination import AgentCallIntent, AgentCallReceipt
from schemas.wire import ErrorCode

STORY = [Message(role="user", content="Write a very long story about a dragon who learns to sing.")]
FRANCE = [Message(role="user", content="What is the capital of France?")]
HANG_GUARD_S = 120.0


@pytest.fixture(scope="module")
def model() -> LocalModel:
    m = LocalModel(LocalModelSettings())
    m.load()
    return m


class Events:
    """The worker's events, delivered onto the event loop (the worker calls observers on its thread)."""

    def __init__(self, provider: LocalModelProvider) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, GenerationCall]] = asyncio.Queue()
        self.tokens_after_cancel: dict[int, int] = {}
        provider.worker.observers.append(self._observe)

    def _observe(self, event: str, call: GenerationCall) -> None:
        if event == "token" and call.cancelled.is_set():  # counted on the worker thread, at the token itself
            self.tokens_after_cancel[call.id] = self.tokens_after_cancel.get(call.id, 0) + 1
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, call))

    async def wait_for(self, event: str, *, call: GenerationCall | None = None, min_tokens: int = 0) -> GenerationCall:
        """The next ``event`` (of ``call`` if given; for ``token``, once the call has ``min_tokens``)."""
        async with asyncio.timeout(HANG_GUARD_S):
            while True:
                ev, c = await self.queue.get()
                if ev == event and (call is None or c is call) and c.tokens >= min_tokens:
                    return c


def provider_of(model: LocalModel, **settings: object) -> LocalModelProvider:
    return LocalModelProvider(msgspec.structs.replace(LocalModelSettings(), **settings), model=model)


def story(max_tokens: int = 400, **kw: object) -> ChatRequest:
    return ChatRequest(model="m", messages=STORY, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trinity-") and t.name.endswith("-generate")]


async def test_cancelling_the_caller_stops_generation_at_the_next_token(model: LocalModel) -> None:
    provider = provider_of(model)
    events = Events(provider)
    task = asyncio.create_task(provider.complete(story()))
    call = await events.wait_for("token", min_tokens=3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled.is_set() and call.cancel_reason == "caller cancelled"
    done = await events.wait_for("finished", call=call)
    assert done.outcome == "cancelled"
    # the criterion runs after every token: at most the token being decoded when the flag was set follows
    assert events.tokens_after_cancel.get(call.id, 0) <= 1
    assert 3 <= done.tokens < 400
    assert provider.worker.idle() and provider.worker.counters["cancelled"] == 1
    res = await provider.complete(ChatRequest(model="m", messages=FRANCE, max_tokens=24))  # the model is free
    assert "Paris" in res.content
    await provider.aclose()


async def test_call_cancelled_while_queued_never_starts(model: LocalModel) -> None:
    provider = provider_of(model)
    events = Events(provider)
    running = asyncio.create_task(provider.complete(story()))
    first = await events.wait_for("started")
    waiting = asyncio.create_task(provider.complete(story(max_tokens=300)))
    second = await events.wait_for("queued")
    assert second is not first and provider.worker.queued() == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await events.wait_for("finished", call=first)
    skipped = await events.wait_for("finished", call=second)
    assert skipped.outcome == "skipped" and skipped.started is False and skipped.tokens == 0
    assert provider.worker.counters["skipped"] == 1 and provider.worker.idle()
    await provider.aclose()


async def test_deadline_stops_decoding_per_token(model: LocalModel) -> None:
    provider = provider_of(model)
    events = Events(provider)
    with pytest.raises(ProviderTimeout, match="deadline"):
        await provider.complete(story(max_tokens=500, deadline=time.monotonic() + 1.0))
    call = await events.wait_for("finished")
    assert call.outcome == "deadline" and call.tokens < 500
    assert provider.worker.idle()
    await provider.aclose()


async def test_full_queue_answers_overloaded_at_once(model: LocalModel) -> None:
    provider = provider_of(model, max_queue=1)
    events = Events(provider)
    running = asyncio.create_task(provider.complete(story()))
    await events.wait_for("started")
    waiting = asyncio.create_task(provider.complete(story()))
    await events.wait_for("queued")
    with pytest.raises(AgentOverloaded, match=r"local\.max_queue=1") as err:
        await provider.complete(story())
    assert err.value.code is ErrorCode.OVERLOADED and err.value.retryable
    assert provider.stats()["rejected"] == 1 and provider.stats()["queued"] == 1
    # a cancelled call frees its place at once
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    again = asyncio.create_task(provider.complete(story(max_tokens=4)))
    await events.wait_for("queued")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert (await again).usage.completion_tokens == 4
    await provider.aclose()


async def test_aclose_stops_the_running_call_fails_queued_ones_and_joins_the_thread(model: LocalModel) -> None:
    before = generation_threads()
    provider = provider_of(model)
    events = Events(provider)
    running = asyncio.create_task(provider.complete(story()))
    call = await events.wait_for("token", min_tokens=2)
    queued = asyncio.create_task(provider.complete(story()))
    await events.wait_for("queued")
    thread = provider.worker.thread
    assert thread is not None and thread.is_alive() and thread in generation_threads()
    await provider.aclose()
    assert not thread.is_alive()
    assert generation_threads() == before
    with pytest.raises(LocalModelError, match="shut down"):
        await running
    with pytest.raises(LocalModelError, match="shut down before this call started"):
        await queued
    assert call.outcome == "cancelled" and call.cancel_reason == "closing" and call.tokens < 400
    with pytest.raises(LocalModelError, match="shutting down"):
        await provider.complete(story())


async def test_pool_maps_a_full_local_queue_to_overloaded(model: LocalModel) -> None:
    settings = ProviderAgentsSettings(local=LocalModelSettings(max_queue=0))
    pool = AgentPool.from_settings(settings)
    local = pool.providers["local"]
    assert isinstance(local, LocalModelProvider)
    local.model = model
    events = Events(local)
    q = AgentCallIntent(request_id="r", turn=0, agent_id=1, role=Role.WORKER, messages=STORY, max_tokens=200)
    first = asyncio.create_task(pool.call(q))
    await events.wait_for("started")
    with pytest.raises(AgentOverloaded):  # another agent, same model: refused at once, not queued behind
        await pool.call(msgspec.structs.replace(q, agent_id=2))
    assert pool.stats()[2]["failures"] == {"AgentOverloaded": 1}
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await pool.aclose()


async def test_bus_overloaded_reply_and_drain_stops_generation(nc: Client, model: LocalModel) -> None:
    """Over NATS: a second agent's call for the busy model gets a typed ``overloaded`` reply at once, and
    draining the actor cuts the running generation at its next token and joins the worker thread."""
    settings = ProviderAgentsSettings(local=LocalModelSettings(max_queue=0), queue_group="agents-localgen")
    actor = ProviderAgentsActor(nc, settings, name="trinity-provider-agents-localgen")
    local = actor.pool.providers["local"]
    assert isinstance(local, LocalModelProvider)
    local.model = model
    await actor.start()
    events = Events(local)
    q = AgentCallIntent(request_id="r-bus", turn=0, agent_id=3, role=Role.WORKER, messages=STORY, max_tokens=400)
    first = asyncio.create_task(request(nc, subjects.agent_call(3), q, AgentCallReceipt, timeout=HANG_GUARD_S))
    try:
        call = await events.wait_for("started")
        with pytest.raises(RemoteError) as err:
            await request(nc, subjects.agent_call(4), msgspec.structs.replace(q, agent_id=4), AgentCallReceipt,
                          timeout=HANG_GUARD_S)
        assert err.value.code is ErrorCode.OVERLOADED and err.value.retryable
        thread = local.worker.thread
        assert thread is not None and thread.is_alive()
    finally:
        # 2 s for the in-flight call, then it is cancelled and cut at its next token; 2 s to join the thread
        await actor.drain(timeout=4.0)
        first.cancel()
    await events.wait_for("finished", call=call)
    thread.join(HANG_GUARD_S)
    assert call.outcome == "cancelled" and call.tokens < OFFLINE_MAX_TOKENS  # the agent cap: it did not run out
    assert thread not in generation_threads()
