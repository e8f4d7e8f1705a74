"""The agent pool: TRINITY's agent ids mapped to providers, with per-agent concurrency, usage and cost.

:meth:`AgentPool.call` turns an :class:`~schemas.coordination.AgentCallIntent` into an
:class:`~schemas.coordination.AgentCallReceipt` or raises a typed
:class:`~actors.provider_agents.errors.ProviderError`. It knows nothing about NATS.

Example:
    >>> # pool = AgentPool.from_settings(ProviderAgentsSettings.offline())
    >>> # receipt = await pool.call(intent)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.provider_agents.errors import AgentOverloaded, ProviderError, UnknownAgent
from actors.provider_agents.types import ChatRequest, Provider
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind
from schemas.coordination import AgentCallIntent, AgentCallReceipt, Usage


def call_cost(usage: Usage, spec: AgentSpec) -> float:
    """USD cost of ``usage`` at the agent's per-1M-token prices.

    Example:
        >>> spec = AgentSpec(agent_id=0, name="a", provider="p", model="m", price_in_per_mtok=3.0,
        ...                  price_out_per_mtok=15.0)
        >>> round(call_cost(Usage(prompt_tokens=1000, completion_tokens=200), spec), 6)
        0.006
    """
    return (usage.prompt_tokens * spec.price_in_per_mtok + usage.completion_tokens * spec.price_out_per_mtok) / 1e6


@dataclass
class AgentStats:
    """Counters of one agent: calls, failures by kind, tokens, cost, latency, in-flight and waiting calls."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms_total: float = 0.0
    in_flight: int = 0
    waiting: int = 0
    rejected_overload: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for stats endpoints and logs."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class _Agent:
    def __init__(self, spec: AgentSpec, provider: Provider) -> None:
        self.spec = spec
        self.provider = provider
        self.semaphore = asyncio.Semaphore(spec.max_concurrency)
        self.stats = AgentStats()


class AgentPool:
    """Agents by id over shared providers. ``clock`` is injectable (monotonic seconds)."""

    def __init__(self, agents: list[AgentSpec], providers: Mapping[str, Provider], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        missing = sorted({a.provider for a in agents} - set(providers))
        if missing:
            raise ValueError(f"agents reference providers that were not built: {missing}")
        self._agents = {a.agent_id: _Agent(a, providers[a.provider]) for a in agents}
        self._providers = dict(providers)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ProviderAgentsSettings, **http_kwargs: Any) -> AgentPool:
        """Build providers for the settings (only those some agent uses) and the pool over them.

        ``http_kwargs`` (``sleep``, ``rng``, ``clock``, ``transport``) go to every HTTP provider (tests).
        The local model provider is imported only when an agent uses it (it pulls in torch); tool providers
        (``tool-*`` kinds, :mod:`actors.provider_agents.tools`) likewise.
        """
        used = {a.provider for a in settings.agents}
        providers: dict[str, Provider] = {}
        for ps in settings.providers:
            if ps.name not in used:
                continue
            if ps.kind is ProviderKind.LOCAL:
                from actors.provider_agents.local_model import LocalModelProvider

                providers[ps.name] = LocalModelProvider(settings.local, name=ps.name, timeout_s=ps.timeout_s)
            elif ps.kind.is_tool:
                from actors.provider_agents.tools import tool_provider

                providers[ps.name] = tool_provider(ps)
            else:
                from actors.provider_agents.wire import http_provider

                providers[ps.name] = http_provider(ps, **http_kwargs)
        return cls(list(settings.agents), providers)

    @property
    def agent_ids(self) -> list[int]:
        """Configured agent ids, ascending."""
        return sorted(self._agents)

    @property
    def providers(self) -> dict[str, Provider]:
        """Providers by name."""
        return dict(self._providers)

    def spec(self, agent_id: int) -> AgentSpec:
        """The roster entry of ``agent_id`` (:class:`UnknownAgent` if none)."""
        return self._get(agent_id).spec

    def _get(self, agent_id: int) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            raise UnknownAgent(f"agent {agent_id} is not configured here (configured: {self.agent_ids}); add it to "
                               f"the provider agents roster")
        return agent

    def chat_request(self, intent: AgentCallIntent, spec: AgentSpec, *, now: float | None = None) -> ChatRequest:
        """The provider request for ``intent``: roster model/options merged with the intent's."""
        max_tokens = intent.max_tokens if spec.max_tokens is None else min(intent.max_tokens, spec.max_tokens)
        temperature = intent.temperature if spec.temperature is None else spec.temperature
        deadline = None
        if intent.deadline_ms is not None:
            deadline = (self._clock() if now is None else now) + intent.deadline_ms / 1000.0
        return ChatRequest(model=spec.model, messages=list(intent.messages), max_tokens=max_tokens,
                           temperature=temperature, seed=intent.seed, stop=list(intent.stop),
                           extra_body=dict(spec.extra_body), deadline=deadline)

    async def call(self, intent: AgentCallIntent) -> AgentCallReceipt:
        """Make the call under the agent's concurrency limit; account usage, cost and latency."""
        agent = self._get(intent.agent_id)
        st = agent.stats
        spec = agent.spec
        start = self._clock()
        request = self.chat_request(intent, spec, now=start)
        st.calls += 1
        if agent.semaphore.locked() and st.waiting >= spec.max_waiting:
            st.rejected_overload += 1
            st.failed += 1
            st.failures["AgentOverloaded"] = st.failures.get("AgentOverloaded", 0) + 1
            raise AgentOverloaded(f"agent {intent.agent_id}: {st.in_flight} calls in flight and {st.waiting} waiting "
                                  f"(max_waiting={spec.max_waiting}); retry later", provider=spec.provider)
        st.waiting += 1
        try:
            await agent.semaphore.acquire()
        finally:
            st.waiting -= 1
        st.in_flight += 1
        try:
            result = await agent.provider.complete(request)
        except ProviderError as err:
            st.failed += 1
            st.attempts += err.attempts
            kind = type(err).__name__
            st.failures[kind] = st.failures.get(kind, 0) + 1
            raise
        finally:
            st.in_flight -= 1
            agent.semaphore.release()
        latency_ms = (self._clock() - start) * 1000.0
        cost = call_cost(result.usage, spec)
        st.ok += 1
        st.attempts += result.attempts
        st.prompt_tokens += result.usage.prompt_tokens
        st.completion_tokens += result.usage.completion_tokens
        st.cost_usd += cost
        st.latency_ms_total += latency_ms
        return AgentCallReceipt(
            request_id=intent.request_id, turn=intent.turn, agent_id=intent.agent_id, content=result.content,
            provider=spec.provider, model=result.model or spec.model, usage=result.usage, cost_usd=cost,
            latency_ms=max(latency_ms, 0.0), finish_reason=result.finish_reason, attempts=result.attempts)

    def stats(self) -> dict[int, dict[str, Any]]:
        """Per-agent counters."""
        return {aid: a.stats.as_dict() for aid, a in sorted(self._agents.items())}

    async def start(self) -> None:
        """Warm providers that have a ``start`` (the local model loads here, off the event loop)."""
        for p in self._providers.values():
            start = getattr(p, "start", None)
            if start is not None:
                await start()

    async def aclose(self) -> None:
        """Close every provider (each is closed even when an earlier one fails)."""
        errors: list[BaseException] = []
        for p in self._providers.values():
            try:
                await p.aclose()
            except Exception as exc:  # noqa: BLE001 - close the others, then re-raise the first
                errors.append(exc)
        if errors:
            raise errors[0]
