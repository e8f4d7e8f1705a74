"""The provider agents actor: serves ``trinity.agent.<id>.call`` for every configured agent (queue group).

A thin bus-facing shell over :class:`~actors.provider_agents.pool.AgentPool`: an
:class:`~schemas.coordination.AgentCallIntent` comes in, an :class:`~schemas.coordination.AgentCallReceipt`
goes back; every provider failure is a :class:`~bus.errors.ContractError` that the service layer sends as a typed
error reply (the failure's :class:`~schemas.wire.ErrorCode`, ``retryable`` flag and safe details). Replicas
share the queue group, so agents scale by starting more actors; a repeated intent is answered once across them
(:mod:`.idempotency`, with the receipts shared through JetStream by :mod:`.shared_receipts` when
``call_cache_shared`` is on).

Example:
    >>> actor = ProviderAgentsActor(nc, ProviderAgentsSettings.offline())   # doctest: +SKIP
    >>> await actor.start()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.client import Client

from actors.provider_agents.errors import ProviderError
from actors.provider_agents.idempotency import CallCache
from actors.provider_agents.pool import AgentPool
from actors.provider_agents.shared_receipts import SharedReceipts
from bus import subjects
from bus.errors import ContractError, Rejected
from bus.service import ActorService, Endpoint, RequestContext
from bus.spans import set_error, span
from config.provider_agents import ProviderAgentsSettings, ProviderKind
from schemas.coordination import AgentCallIntent, AgentCallReceipt
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

SERVICE_NAME = "trinity-provider-agents"


class ProviderAgentsActor:
    """Owns the agent pool and the micro service exposing it."""

    def __init__(self, nc: Client, settings: ProviderAgentsSettings, *, pool: AgentPool | None = None,
                 name: str = SERVICE_NAME) -> None:
        self.nc = nc
        self.settings = settings
        self.pool = pool if pool is not None else AgentPool.from_settings(settings)
        self.name = name
        self._service: ActorService | None = None
        self.receipts: SharedReceipts | None = None
        if settings.call_cache_shared and settings.call_cache_ttl_s > 0 and nc is not None:
            self.receipts = SharedReceipts(nc.jetstream(), ttl_s=settings.call_cache_ttl_s,
                                           max_bytes=settings.call_cache_max_bytes, group=settings.queue_group)
        self.calls = CallCache(ttl_s=settings.call_cache_ttl_s, max_bytes=settings.call_cache_max_bytes,
                               shared=self.receipts)

    @property
    def service(self) -> ActorService:
        """The micro service (after :meth:`start`)."""
        if self._service is None:
            raise RuntimeError("provider agents actor is not started; await start() first")
        return self._service

    async def start(self) -> None:
        """Optionally warm the local model, then subscribe one endpoint per agent."""
        if self.settings.local.preload:
            try:
                await self.pool.start()
            except BaseException:  # a failed or cancelled start must not leave threads or children behind
                await self.pool.aclose()
                raise
        endpoints: list[Endpoint[Any]] = []
        for agent_id in self.pool.agent_ids:
            spec = self.pool.spec(agent_id)
            endpoints.append(Endpoint(
                name=f"agent-{agent_id}",
                subject=subjects.agent_call(agent_id),
                request_type=AgentCallIntent,
                handler=self.handle,
                queue_group=self.settings.queue_group,
                max_payload_bytes=self.settings.max_payload_bytes,
                max_concurrency=spec.max_concurrency + spec.max_waiting,
                metadata={"agent_id": str(agent_id), "provider": spec.provider, "model": spec.model},
            ))
        if self.receipts is not None:
            await self.receipts.start()
        self._service = ActorService(self.nc, name=self.name, endpoints=endpoints,
                                     description="TRINITY provider agents: LLM calls per agent id",
                                     metadata={"agents": ",".join(str(a) for a in self.pool.agent_ids)})
        await self._service.start()
        log.info("provider agents serving agents %s", self.pool.agent_ids)

    async def handle(self, intent: AgentCallIntent, ctx: RequestContext) -> AgentCallReceipt:
        """Serve one intent in a ``trinity.agent.call`` span (child of the caller's ``traceparent``; the
        provider's HTTP calls are its children); provider failures become typed error replies."""
        with span("trinity.agent.call", ctx.provenance, attributes={"trinity.agent_id": intent.agent_id,
                                                                    "trinity.role": intent.role.label}) as sp:
            try:
                receipt = await self._handle(intent, ctx)
            except ContractError as e:  # the service layer sends it as the typed error reply
                set_error(sp, e.code.value, e.message)
                raise
            if sp.is_recording():
                sp.set_attributes({"trinity.provider": receipt.provider, "trinity.model": receipt.model,
                                   "trinity.prompt_tokens": receipt.usage.prompt_tokens,
                                   "trinity.completion_tokens": receipt.usage.completion_tokens,
                                   "trinity.cost_usd": receipt.cost_usd, "trinity.attempts": receipt.attempts,
                                   "trinity.latency_ms": receipt.latency_ms})
            return receipt

    async def _handle(self, intent: AgentCallIntent, ctx: RequestContext) -> AgentCallReceipt:
        subject_agent = _agent_of(ctx.subject)
        self.pool.spec(intent.agent_id)  # raises UnknownAgent (a ContractError: sent as it is)
        if subject_agent is not None and subject_agent != intent.agent_id:
            raise Rejected(ErrorCode.INVALID, f"intent for agent {intent.agent_id} was sent to {ctx.subject}; send it "
                                              f"to {subjects.agent_call(intent.agent_id)}")
        try:  # a repeated intent (a resumed job) joins the running call or gets its receipt: one provider call
            return await self.calls.call(intent, lambda: self.pool.call(intent))
        except ProviderError as err:
            log.info("agent %d call for %s turn %d failed: %s", intent.agent_id, intent.request_id, intent.turn,
                     type(err).__name__)
            raise

    def stats(self) -> dict[str, Any]:
        """Endpoint counters and per-agent usage/cost/failure counters."""
        return {"endpoints": self._service.stats() if self._service else {}, "agents": self.pool.stats(),
                "calls": dict(self.calls.stats.__dict__), "kept_receipt_bytes": self.calls.kept_bytes,
                "shared_receipts": dict(self.receipts.stats.__dict__) if self.receipts is not None else None}

    def watches(self) -> list[LoopWatch]:
        """The inner loops the node watches: the shared receipt store's storage keeper (when on)."""
        return [self.receipts.keeper.watch] if self.receipts is not None else []

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking calls, let in-flight calls finish, close providers, all within ``timeout`` seconds.

        When a local model serves an agent, part of ``timeout`` (at most ``local.close_timeout_s``, at most
        half) is kept for closing it: its queued calls are failed, the running one stops at its next token
        and its worker thread is joined, so nothing keeps generating after the node stops.
        """
        reserve = 0.0
        if any(p.kind is ProviderKind.LOCAL for p in self.settings.providers if p.name in self.pool.providers):
            reserve = min(self.settings.local.close_timeout_s, timeout / 2)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            if self._service is not None:
                await self._service.drain(timeout=max(timeout - reserve, 0.0))
        finally:
            if self.receipts is not None:
                await self.receipts.stop()
            try:
                await asyncio.wait_for(self.pool.aclose(), max(end - loop.time(), 0.1))
            except TimeoutError:
                log.warning("provider agents: closing the providers took longer than the %.1fs drain; "
                            "abandoned threads are daemons and do not keep the process alive", timeout)


def _agent_of(subject: str) -> int | None:
    parts = subject.split(".")
    if len(parts) == 4 and parts[1] == "agent" and parts[2].isdigit():
        return int(parts[2])
    return None
