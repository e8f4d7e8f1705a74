#!/usr/bin/env python3
"""Benchmark: msgspec encode/decode of each event type, and request/reply over loopback NATS (p50/p99),
each printed against a stdlib-json baseline measured in the same run.

Run: ``.venv/bin/python scripts/bench_bus.py [--iterations N] [--round-trips N]``. It starts its own
nats-server on a free port (loopback only) and stops it at the end. Ratios < 1 mean msgspec is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import nats

from bus import rpc
from bus.codec import decode, encode
from bus.embedded import NatsServerProcess
from bus.service import ActorService, Endpoint, RequestContext
from schemas import (
    AgentCallIntent,
    AgentCallReceipt,
    Budget,
    BudgetSnapshot,
    CoordinationRequest,
    Message,
    Role,
    RouteDecided,
    RouteLogits,
    RouteRequest,
    RuntimeProfile,
    Usage,
    decide,
)


def samples() -> dict[str, Any]:
    """One realistic instance of each event type."""
    msgs = [Message(role="user", content="Prove that the sum of the first n odd numbers is n squared. " * 4),
            Message(role="assistant", content="Induction on n: base case n = 1 holds; step adds 2n+1. " * 20)]
    logits = RouteLogits(request_id="q-1", turn=1, agent_logits=[15.8, 9.1, 4.8, 0.05, 30.2, -23.6, 10.4],
                         role_logits=[-7.7, -15.2, 4.9], token_count=412, transcript_hash="a" * 64,
                         cached_tokens=380, latency_ms=12.5)
    decision = decide(logits, RuntimeProfile())
    budget = BudgetSnapshot(turns=2, agent_calls=2, tokens=1800, cost_usd=0.012, elapsed_ms=2300.0, limits=Budget())
    return {
        "CoordinationRequest": CoordinationRequest(request_id="q-1", query=msgs[0].content),
        "RouteRequest": RouteRequest(request_id="q-1", turn=1, messages=msgs, run_id="q-1"),
        "RouteLogits": logits,
        "RouteDecision": decision,
        "AgentCallIntent": AgentCallIntent(request_id="q-1", turn=1, agent_id=4, role=Role.WORKER, messages=msgs),
        "AgentCallReceipt": AgentCallReceipt(request_id="q-1", turn=1, agent_id=4, content=msgs[1].content,
                                             provider="openai", model="gpt-5", usage=Usage(300, 450),
                                             cost_usd=0.004, latency_ms=2100.0),
        "BudgetSnapshot": budget,
        "RouteDecided(trace)": RouteDecided(request_id="q-1", event_id="e-3", causation_id="e-2", ts=time.time(),
                                            turn=1, decision=decision, token_count=412),
    }


def per_op_us(fn: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def bench_codec(n: int) -> None:
    print(f"codec: best of 5 x {n} ops, microseconds per op (ratio = msgspec / stdlib json)")
    print(f"{'type':24} {'enc':>7} {'json enc':>9} {'ratio':>6} {'dec':>7} {'json dec':>9} {'ratio':>6}")
    for name, obj in samples().items():
        data = encode(obj)
        plain = msgspec.to_builtins(obj)
        typ = type(obj)
        enc = per_op_us(lambda: encode(obj), n)  # noqa: B023
        jenc = per_op_us(lambda: json.dumps(plain).encode(), n)  # noqa: B023
        dec = per_op_us(lambda: decode(data, typ), n)  # noqa: B023
        # baseline decode: stdlib parse + the same typed validation done by msgspec.convert
        jdec = per_op_us(lambda: msgspec.convert(json.loads(data), typ), n)  # noqa: B023
        print(f"{name:24} {enc:7.2f} {jenc:9.2f} {enc / jenc:6.2f} {dec:7.2f} {jdec:9.2f} {dec / jdec:6.2f}")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def bench_round_trip(n: int) -> None:
    srv = NatsServerProcess.start(name="bench-bus")
    try:
        nc = await nats.connect(srv.url)
        logits = samples()["RouteLogits"]
        req = samples()["RouteRequest"]

        async def handle(r: RouteRequest, ctx: RequestContext) -> RouteLogits:
            return logits

        svc = ActorService(nc, name="bench", endpoints=[Endpoint("route", "bench.msgspec", RouteRequest, handle)])
        await svc.start()
        logits_json = json.dumps(msgspec.to_builtins(logits)).encode()

        async def json_handler(msg: Any) -> None:
            body = json.loads(msg.data)
            assert body["request_id"]
            await msg.respond(logits_json)

        await nc.subscribe("bench.json", cb=json_handler)
        req_json = json.dumps(msgspec.to_builtins(req)).encode()

        async def one_msgspec() -> float:
            t0 = time.perf_counter()
            await rpc.request(nc, "bench.msgspec", req, RouteLogits, timeout=5)
            return time.perf_counter() - t0

        async def one_json() -> float:
            t0 = time.perf_counter()
            m = await nc.request("bench.json", req_json, timeout=5)
            json.loads(m.data)
            return time.perf_counter() - t0

        for _ in range(200):  # warm up both paths
            await one_msgspec()
            await one_json()
        a: list[float] = []
        b: list[float] = []
        for _ in range(n):  # interleaved so machine noise hits both alike
            a.append(await one_msgspec())
            b.append(await one_json())
        print(f"\nrequest/reply over loopback NATS, {n} sequential round trips each, milliseconds")
        print(f"{'path':34} {'p50':>7} {'p99':>7} {'mean':>7}")
        for label, xs in (("msgspec + typed ActorService", a), ("stdlib json + raw subscription", b)):
            print(f"{label:34} {pct(xs, 50) * 1e3:7.3f} {pct(xs, 99) * 1e3:7.3f} {statistics.mean(xs) * 1e3:7.3f}")
        print(f"ratio msgspec/json: p50 {pct(a, 50) / pct(b, 50):.2f}  p99 {pct(a, 99) / pct(b, 99):.2f}")
        await svc.drain()
        await nc.close()
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--round-trips", type=int, default=2000)
    args = ap.parse_args()
    bench_codec(args.iterations)
    asyncio.run(bench_round_trip(args.round_trips))


if __name__ == "__main__":
    main()
