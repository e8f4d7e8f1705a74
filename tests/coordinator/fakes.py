"""Scripted fake runtime, role injector and agents for the coordinator's tests (pure and over NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client

from actors.coordinator.errors import AgentCallFailed, RouteFailed
from actors.coordinator.state_machine import CallContext, Ports
from actors.role_injector.builder import build
from actors.role_injector.packs import BUILTIN_PACKS, PackRegistry
from bus import subjects
from bus.errors import Rejected
from bus.provenance import Provenance
from bus.service import ActorService, Endpoint, RequestContext
from schemas.common import Role
from schemas.coordination import AgentCallIntent, AgentCallReceipt, Usage
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.routing import RouteLogits, RouteRequest
from schemas.trace import TraceEvent
from schemas.wire import ErrorCode

ZERO_HASH = "0" * 64


def make_logits(request_id: str, turn: int, agent: int, role: Role, n_agents: int = 7) -> RouteLogits:
    """Logits choosing ``agent`` (margin 3) and ``role`` (margin 2); other agents rank by index."""
    agent_logits = [-0.1 * i for i in range(n_agents)]
    agent_logits[agent] = 3.0
    role_logits = [0.0, 0.0, 0.0]
    role_logits[int(role)] = 2.0
    return RouteLogits(request_id=request_id, turn=turn, agent_logits=agent_logits, role_logits=role_logits,
                       token_count=10 + turn, transcript_hash=ZERO_HASH, runtime_id="fake-runtime")


RoutePlan = Callable[[int], tuple[int, Role]]
ReplyPlan = Callable[[AgentCallIntent], str]


def plan_of(steps: list[tuple[int, Role]]) -> RoutePlan:
    """A route plan from a list (the last step repeats)."""
    return lambda turn: steps[min(turn, len(steps) - 1)]


def reply_by_role(worker: str = "answer {turn}", thinker: str = "plan {turn}",
                  verifier: str = "ACCEPT") -> ReplyPlan:
    """Replies by role; ``{turn}`` and ``{agent}`` are filled in."""
    texts = {Role.WORKER: worker, Role.THINKER: thinker, Role.VERIFIER: verifier}
    return lambda i: texts[i.role].format(turn=i.turn, agent=i.agent_id)


@dataclass
class FakeWorld:
    """Scripted routing and agents. ``failing_agents`` always fail; ``route_failures`` fail the next N
    route calls (retryable when ``route_failure_retryable``); ``call_seconds`` advances the fake clock."""

    route_plan: RoutePlan
    reply_plan: ReplyPlan = field(default_factory=reply_by_role)
    failing_agents: set[int] = field(default_factory=set)
    route_failures: int = 0
    route_failure_retryable: bool = True
    route_failure_code: str = "unavailable"
    call_seconds: float = 0.0
    tokens_per_call: tuple[int, int] = (0, 0)
    cost_per_call: float = 0.0
    n_agents: int = 7
    now: float = 100.0
    calls: list[AgentCallIntent] = field(default_factory=list)
    contexts: list[CallContext] = field(default_factory=list)
    routes: list[RouteRequest] = field(default_factory=list)
    injects: list[RoleInjectRequest] = field(default_factory=list)
    events: list[TraceEvent] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    _ids: int = 0

    async def route(self, req: RouteRequest, ctx: CallContext) -> RouteLogits:
        self.routes.append(req)
        if self.route_failures > 0:
            self.route_failures -= 1
            raise RouteFailed(self.route_failure_code, "runtime down", retryable=self.route_failure_retryable)
        agent, role = self.route_plan(req.turn)
        return make_logits(req.request_id, req.turn, agent, role, self.n_agents)

    async def inject(self, req: RoleInjectRequest, ctx: CallContext) -> RoleInjectReply:
        self.injects.append(req)
        return build(PackRegistry(list(BUILTIN_PACKS)).resolve(req.role_pack), req)

    def receipt(self, intent: AgentCallIntent) -> AgentCallReceipt:
        """The scripted answer to ``intent`` (raises :class:`AgentCallFailed` for failing agents)."""
        if intent.agent_id in self.failing_agents:
            raise AgentCallFailed("upstream", f"agent {intent.agent_id} is broken", retryable=True)
        p, c = self.tokens_per_call
        return AgentCallReceipt(request_id=intent.request_id, turn=intent.turn, agent_id=intent.agent_id,
                                content=self.reply_plan(intent), provider="fake", model="fake-1",
                                usage=Usage(prompt_tokens=p, completion_tokens=c), cost_usd=self.cost_per_call)

    async def call_agent(self, intent: AgentCallIntent, ctx: CallContext) -> AgentCallReceipt:
        self.calls.append(intent)
        self.contexts.append(ctx)
        self.now += self.call_seconds
        return self.receipt(intent)

    async def emit(self, event: TraceEvent) -> None:
        self.events.append(event)

    def new_id(self) -> str:
        self._ids += 1
        return f"ev{self._ids}"

    async def sleep(self, seconds: float) -> None:
        """The fake clock's sleep: time passes at once."""
        self.slept.append(seconds)
        self.now += seconds

    def ports(self) -> Ports:
        return Ports(route=self.route, inject=self.inject, call_agent=self.call_agent, emit=self.emit,
                     clock=lambda: self.now, wall=lambda: 1_700_000_000.0 + self.now, new_id=self.new_id,
                     sleep=self.sleep)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class BusFakes:
    """The fake runtime and agents of a :class:`FakeWorld` as ActorServices on a real NATS server.

    ``served_agents`` get an endpoint each (others have no responders); ``slow_agents`` sleep that many
    seconds before answering; ``world.failing_agents`` answer a typed ``upstream`` error.
    """

    def __init__(self, nc: Client, world: FakeWorld, *, served_agents: Iterable[int] = range(7),
                 slow_agents: dict[int, float] | None = None, backend: str = "torch", adapter: str = "base") -> None:
        self.world = world
        self.slow = slow_agents or {}
        self.route_provenance: list[Provenance] = []
        self.agent_provenance: list[Provenance] = []

        async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
            self.route_provenance.append(ctx.provenance)
            world.routes.append(req)
            agent, role = world.route_plan(req.turn)
            logits = make_logits(req.request_id, req.turn, agent, role, world.n_agents)
            return labelled(logits, world.profile) if isinstance(world, ProfiledWorld) else logits

        async def call(intent: AgentCallIntent, ctx: RequestContext) -> AgentCallReceipt:
            self.agent_provenance.append(ctx.provenance)
            world.calls.append(intent)
            if intent.agent_id in self.slow:
                await asyncio.sleep(self.slow[intent.agent_id])
            try:
                return world.receipt(intent)
            except AgentCallFailed as e:
                raise Rejected(ErrorCode.UPSTREAM, e.message, retryable=True) from None

        self.runtime = ActorService(nc, name="fake-runtime", endpoints=[
            Endpoint("route", subjects.route(backend, adapter), RouteRequest, route, queue_group="runtimes")])
        self.agents = ActorService(nc, name="fake-agents", endpoints=[
            Endpoint(f"agent{i}", subjects.agent_call(i), AgentCallIntent, call, queue_group="agents")
            for i in served_agents])

    async def start(self) -> None:
        await self.runtime.start()
        await self.agents.start()

    async def drain(self) -> None:
        await self.runtime.drain(timeout=1.0)
        await self.agents.drain(timeout=1.0)


class ProfiledWorld(FakeWorld):
    """FakeWorld whose runtime (in-process or :class:`BusFakes`) labels its logits with a routing profile."""

    profile: str = "sakana"

    async def route(self, req: RouteRequest, ctx: CallContext) -> RouteLogits:
        self.routes.append(req)
        agent, role = self.route_plan(req.turn)
        return labelled(make_logits(req.request_id, req.turn, agent, role, self.n_agents), self.profile)


def labelled(logits: RouteLogits, profile: str) -> RouteLogits:
    """``logits`` as a runtime serving ``profile`` labels them."""
    return RouteLogits(**{**{f: getattr(logits, f) for f in logits.__struct_fields__}, "routing_profile": profile})
