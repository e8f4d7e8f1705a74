"""Benchmark: coordination overhead per turn over NATS, and 1,000 concurrent coordinations on one node.

Starts its own nats-server (JetStream on, free port), a coordinator, a role injector, and *instant* fake
runtime and agent actors (each on its own connection, like separate processes would be), then measures:

1. Per-turn overhead of a coordination over the bus (5 Worker turns per run, sequential runs), against
   baselines measured in the same run: one raw request/reply round trip on the same server (each turn
   makes 3: route, role inject, agent call), and the pure state machine with in-memory ports (no bus).
   Also with ``role_inject_mode="local"`` (2 round trips per turn). Goal: p50 < 5 ms per turn.
2. 1,000 coordinations submitted at once to one coordinator: every reply must come back ``ok`` with the
   right answer, and every trace event must reach the JetStream stream (nothing dropped or failed).

Run:  .venv/bin/python scripts/bench_coordination.py [--runs 200] [--concurrent 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import nats
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from actors.coordinator.state_machine import CallContext, Ports, coordinate
from actors.role_injector.actor import RoleInjectorActor, local_injector, registry_from_settings
from actors.role_injector.builder import build
from actors.role_injector.packs import DEFAULT_PACK
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from bus.service import ActorService, Endpoint, RequestContext
from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from schemas import (
    AgentCallIntent,
    AgentCallReceipt,
    Budget,
    CoordinationRequest,
    CoordinationResult,
    Message,
    RouteLogits,
    RouteRequest,
    RunStatus,
)
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.trace import TraceEvent

TURNS = 5
HASH = "0" * 64


def logits(req: RouteRequest) -> RouteLogits:
    """Always agent (turn mod 7) as Worker."""
    agent = [0.0] * 7
    agent[req.turn % 7] = 3.0
    return RouteLogits(request_id=req.request_id, turn=req.turn, agent_logits=agent, role_logits=[2.0, 0.0, 0.0],
                       token_count=8, transcript_hash=HASH)


def receipt(intent: AgentCallIntent) -> AgentCallReceipt:
    return AgentCallReceipt(request_id=intent.request_id, turn=intent.turn, agent_id=intent.agent_id,
                            content=f"{intent.request_id} answer {intent.turn}")


async def start_fakes(url: str) -> tuple[list[Client], list[ActorService]]:
    nc_rt, nc_ag = await nats.connect(url, name="bench-runtime"), await nats.connect(url, name="bench-agents")

    async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
        return logits(req)

    async def call(intent: AgentCallIntent, ctx: RequestContext) -> AgentCallReceipt:
        return receipt(intent)

    runtime = ActorService(nc_rt, name="bench-runtime", endpoints=[
        Endpoint("route", subjects.route("torch", "base"), RouteRequest, route, queue_group="runtimes",
                 max_concurrency=4096)])
    agents = ActorService(nc_ag, name="bench-agents", endpoints=[
        Endpoint(f"agent{i}", subjects.agent_call(i), AgentCallIntent, call, queue_group="agents",
                 max_concurrency=4096) for i in range(7)])
    echo = ActorService(nc_rt, name="bench-echo", endpoints=[
        Endpoint("echo", "bench.echo", Message, lambda m, ctx: _echo(m), max_concurrency=4096)])
    for s in (runtime, agents, echo):
        await s.start()
    return [nc_rt, nc_ag], [runtime, agents, echo]


async def _echo(m: Message) -> Message:
    return m


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def summary(name: str, per_turn_ms: list[float]) -> float:
    p50 = statistics.median(per_turn_ms)
    print(f"  {name:<44} p50 {p50:7.3f} ms   p95 {pct(per_turn_ms, 95):7.3f} ms   "
          f"p99 {pct(per_turn_ms, 99):7.3f} ms   (n={len(per_turn_ms)})")
    return p50


async def bench_raw_rtt(nc: Client, n: int) -> list[float]:
    out = []
    msg = Message(role="user", content="x" * 200)
    for _ in range(n):
        t0 = time.perf_counter()
        await rpc.request(nc, "bench.echo", msg, Message, timeout=5.0)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def bench_pure(n: int) -> list[float]:
    async def route(req: RouteRequest, ctx: CallContext) -> RouteLogits:
        return logits(req)

    async def inject(req: RoleInjectRequest, ctx: CallContext) -> RoleInjectReply:
        return build(DEFAULT_PACK, req)

    async def call(intent: AgentCallIntent, ctx: CallContext) -> AgentCallReceipt:
        return receipt(intent)

    async def emit(ev: TraceEvent) -> None:
        return None

    ports = Ports(route=route, inject=inject, call_agent=call, emit=emit, clock=time.monotonic, wall=time.time)
    out = []
    for i in range(n):
        req = CoordinationRequest(request_id=f"pure-{i}", query="What is 17 + 25?", budget=Budget(max_turns=TURNS))
        t0 = time.perf_counter()
        res = await coordinate(req, ports)
        out.append((time.perf_counter() - t0) * 1000 / len(res.turns))
    return out


async def bench_bus(nc: Client, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        req = CoordinationRequest(request_id=f"{tag}-{i}", query="What is 17 + 25?", budget=Budget(max_turns=TURNS))
        t0 = time.perf_counter()
        res = await rpc.request(nc, subjects.coord_request(), req, CoordinationResult, timeout=30.0)
        dt = (time.perf_counter() - t0) * 1000
        if res.status is not RunStatus.OK or len(res.turns) != TURNS:
            raise SystemExit(f"bad result for {req.request_id}: {res.status} {res.stop_reason} {res.error}")
        out.append(dt / TURNS)
    return out


async def start_coordinator(url: str, settings: CoordinatorSettings, local: bool) -> tuple[Client, CoordinatorActor]:
    nc = await nats.connect(url, name="bench-coordinator", pending_size=256 * 1024 * 1024)
    injector = local_injector(registry_from_settings(RoleInjectorSettings())) if local else None
    actor = CoordinatorActor(nc, settings, local_injector=injector)
    await actor.start()
    return nc, actor


async def trace_count(nc: Client) -> int:
    info = await nc.jetstream().stream_info(subjects.TRACE_STREAM)
    return int(info.state.messages)


async def main(runs: int, concurrent: int) -> int:
    srv = NatsServerProcess.start(name="bench-coordination")
    print(f"nats-server {srv.url} (own process, JetStream on)")
    try:
        fake_conns, services = await start_fakes(srv.url)
        nc_inj = await nats.connect(srv.url, name="bench-injector")
        injector = RoleInjectorActor(nc_inj, RoleInjectorSettings())
        await injector.start()
        client = await nats.connect(srv.url, name="bench-client", pending_size=256 * 1024 * 1024)
        settings = CoordinatorSettings(max_concurrency=4096, trace_buffer=200_000)

        print(f"\n1) per-turn coordination overhead, {TURNS} turns per run, {runs} sequential runs, instant fakes")
        for _ in range(20):  # warm up connections and code paths
            await bench_raw_rtt(client, 1)
        rtt = summary("baseline: one raw bus round trip", await bench_raw_rtt(client, runs * 3))
        pure = summary("baseline: pure state machine (in-memory ports)", await bench_pure(runs))
        nc_c, coord = await start_coordinator(srv.url, settings, local=False)
        await bench_bus(client, 10, "warm")
        bus = summary("coordinator over bus (bus role injector)", await bench_bus(client, runs, "bus"))
        await coord.drain()
        await nc_c.drain()
        nc_q, coord_q = await start_coordinator(srv.url, msgspec.structs.replace(settings, trace_enabled=False),
                                                local=False)
        await bench_bus(client, 10, "warm-quiet")
        quiet = summary("  same, tracing off (for the breakdown)", await bench_bus(client, runs, "quiet"))
        await coord_q.drain()
        await nc_q.drain()
        nc_l, coord_l = await start_coordinator(srv.url, msgspec.structs.replace(settings, role_inject_mode="local"),
                                                local=True)
        await bench_bus(client, 10, "warm-local")
        local = summary("coordinator over bus (local role injection)", await bench_bus(client, runs, "local"))
        await coord_l.drain()
        await nc_l.drain()
        print(f"  ratios: bus turn / raw round trip = {bus / rtt:.2f}x (3 round trips per turn), "
              f"local-inject turn / raw = {local / rtt:.2f}x (2 per turn), bus turn / pure turn = {bus / pure:.1f}x; "
              f"tracing costs {bus - quiet:.3f} ms per turn (5 JetStream events)")
        print(f"  goal p50 < 5 ms per turn: {'MET' if bus < 5.0 else 'NOT MET'} ({bus:.3f} ms)")

        print(f"\n2) {concurrent} concurrent coordinations on one coordinator node ({TURNS} turns each)")
        nc_c, coord = await start_coordinator(srv.url, settings, local=False)
        before = await trace_count(client)
        reqs = [CoordinationRequest(request_id=f"conc-{i}", query=f"question {i}", budget=Budget(max_turns=TURNS))
                for i in range(concurrent)]
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(rpc.request(client, subjects.coord_request(), r, CoordinationResult, timeout=120.0) for r in reqs),
            return_exceptions=True)
        wall = time.perf_counter() - t0
        ok = sum(1 for r, q in zip(results, reqs, strict=True) if isinstance(r, CoordinationResult)
                 and r.status is RunStatus.OK and r.answer == f"{q.request_id} answer {TURNS - 1}"
                 and len(r.turns) == TURNS)
        errors = [r for r in results if isinstance(r, BaseException)]
        flushed = await coord.traces.flush(60.0)
        counters = coord.stats()["trace"]
        expected_events = concurrent * (2 + TURNS * 5)
        stored = await trace_count(client) - before
        print(f"  replies ok: {ok}/{concurrent}  errors: {len(errors)}  wall {wall:.2f} s  "
              f"throughput {concurrent / wall:.0f} coordinations/s, {concurrent * TURNS / wall:.0f} turns/s")
        if errors:
            print(f"  first error: {errors[0]!r}")
        print(f"  trace events: expected {expected_events}, emitted {counters['emitted']}, published "
              f"{counters['published']}, in stream {stored}, dropped {counters['dropped']}, failed "
              f"{counters['failed']} (flushed: {flushed})")
        lost = concurrent - ok + (expected_events - stored) + counters["dropped"] + counters["failed"]
        print(f"  nothing lost: {'YES' if lost == 0 else 'NO'}")
        print(f"  service counters: {coord.stats()['service']['coordinate']}")
        await coord.drain()
        await nc_c.drain()
        await injector.drain()
        for s in services:
            await s.drain(timeout=1.0)
        for c in [*fake_conns, nc_inj, client]:
            await c.drain()
        return 0 if lost == 0 else 1
    finally:
        srv.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="sequential runs for the per-turn benchmark")
    ap.add_argument("--concurrent", type=int, default=1000, help="coordinations submitted at once")
    args = ap.parse_args()
    raise SystemExit(asyncio.run(main(args.runs, args.concurrent)))
