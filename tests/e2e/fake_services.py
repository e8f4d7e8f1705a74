"""Fast fake runtime and agents in a process of their own, for the kill tests (``python -m tests.e2e.fake_services``).

Scripted like :mod:`tests.coordinator.fakes`: turn 0 routes to agent 1 as Worker (answers ``42``), turn 1 to
agent 2 as Verifier (answers ``ACCEPT``), so every run ends accepted after two turns. ``--route-delay`` and
``--agent-delay`` keep runs alive long enough to kill something mid-run. ``--calls-log FILE`` appends one line per
agent request (``request <call id>``) and per provider call made (``call <call id>``), where the call id is
``request_id:turn:agent``; ``--idempotent`` answers repeated intents as the provider agents actor does
(:class:`~actors.provider_agents.idempotency.CallCache`); ``--runtime-capacity N`` answers ``overloaded`` beyond
N routes at once. Prints ``ready`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import msgspec
from nats.aio.client import Client

from actors.coordinator.errors import AgentCallFailed
from actors.provider_agents.idempotency import CallCache
from bus import subjects
from bus.connection import connect
from bus.errors import Rejected
from bus.service import ActorService, Endpoint, RequestContext
from config.nats import NatsSettings
from schemas import AgentCallIntent, AgentCallReceipt, ErrorCode, Role, RouteLogits, RouteRequest
from tests.coordinator.fakes import FakeWorld, make_logits, plan_of, reply_by_role


def world() -> FakeWorld:
    """The scripted routing and replies every fake process shares."""
    return FakeWorld(route_plan=plan_of([(1, Role.WORKER), (2, Role.VERIFIER)]),
                     reply_plan=reply_by_role(worker="42", verifier="ACCEPT"))


def fake_services(runtime_nc: Client | None, agents_nc: Client | None, *, route_delay: float = 0.0,
                  agent_delay: float = 0.0, runtime_id: str = "fake-runtime", calls_log: str | None = None,
                  idempotent: bool = False, runtime_capacity: int = 0) -> list[ActorService]:
    """The scripted fake runtime (on ``runtime_nc``) and the 7 fake agents (on ``agents_nc``), not started;
    ``None`` leaves one out."""
    w = world()
    cache = CallCache(ttl_s=600.0 if idempotent else 0.0)
    log = open(calls_log, "a", buffering=1) if calls_log else None  # kept open for the process
    busy = [0]

    async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
        if runtime_capacity and busy[0] >= runtime_capacity:
            raise Rejected(ErrorCode.OVERLOADED, f"{runtime_id} is at capacity ({runtime_capacity})", retryable=True)
        busy[0] += 1
        try:
            await asyncio.sleep(route_delay)
        finally:
            busy[0] -= 1
        agent, role = w.route_plan(req.turn)
        return msgspec.structs.replace(make_logits(req.request_id, req.turn, agent, role), runtime_id=runtime_id)

    async def call(intent: AgentCallIntent, ctx: RequestContext) -> AgentCallReceipt:
        call_id = f"{intent.request_id}:{intent.turn}:{intent.agent_id}"
        if log is not None:
            log.write(f"request {call_id}\n")

        async def work() -> AgentCallReceipt:
            if log is not None:
                log.write(f"call {call_id}\n")
            await asyncio.sleep(agent_delay)
            try:
                return w.receipt(intent)
            except AgentCallFailed as e:
                raise Rejected(ErrorCode.UPSTREAM, e.message, retryable=True) from None

        if not idempotent:
            return await work()
        return await cache.call(intent, work)

    services = []
    if runtime_nc is not None:
        services.append(ActorService(runtime_nc, name="fake-runtime", endpoints=[
            Endpoint("route", subjects.route("torch", "base"), RouteRequest, route,
                     queue_group=subjects.QUEUE_RUNTIMES)]))
    if agents_nc is not None:
        services.append(ActorService(agents_nc, name="fake-agents", endpoints=[
            Endpoint(f"agent{i}", subjects.agent_call(i), AgentCallIntent, call, queue_group=subjects.QUEUE_AGENTS)
            for i in range(7)]))
    return services


async def serve(urls: list[str], serve_what: set[str], route_delay: float, agent_delay: float, name: str,
                user: str | None = None, password: str | None = None, calls_log: str | None = None,
                idempotent: bool = False, runtime_capacity: int = 0) -> None:
    nc = await connect(NatsSettings(servers=urls, reconnect_wait_s=0.2, user=user, password=password), name=name)
    services = fake_services(nc if "runtime" in serve_what else None, nc if "agents" in serve_what else None,
                             route_delay=route_delay, agent_delay=agent_delay, runtime_id=name, calls_log=calls_log,
                             idempotent=idempotent, runtime_capacity=runtime_capacity)
    for s in services:
        await s.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in services:
        await s.drain(timeout=2.0)
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nats", required=True, help="comma-separated server URLs")
    p.add_argument("--serve", default="runtime,agents", help="runtime, agents or both")
    p.add_argument("--route-delay", type=float, default=0.0)
    p.add_argument("--agent-delay", type=float, default=0.0)
    p.add_argument("--name", default="fake-services")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--calls-log")
    p.add_argument("--idempotent", action="store_true")
    p.add_argument("--runtime-capacity", type=int, default=0)
    a = p.parse_args()
    asyncio.run(serve(a.nats.split(","), set(a.serve.split(",")), a.route_delay, a.agent_delay, a.name,
                      a.user, a.password, a.calls_log, a.idempotent, a.runtime_capacity))


if __name__ == "__main__":
    main()
