"""Probe: cluster-wide dedupe of request/reply runs (``coordinator.reply_claims``).

Two coordinators (own connections, one queue group) on a nats-server of the probe's own, with the scripted fake
runtime and agents (agent 1 answers ``42`` as Worker after ``--agent-delay`` s, agent 2 accepts). For
``reply_claims`` off (the baseline: dedupe per coordinator process) and on, in the same run:

- ``--ids`` request ids, each sent ``--dups`` times at once over ``trinity.coord.request`` (the queue group spreads
  the copies over both coordinators): runs executed (Worker calls), ids that ran more than once, results stored;
- ``--latency`` unique requests one after another (agents instant): median and p90 reply time, so the cost of the
  claim (journal writes, result store) shows against the baseline.

Usage: ``.venv/bin/python scripts/probe_reply_claims.py [--ids 20] [--dups 8] [--agent-delay 0.3] [--latency 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import nats

from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import RoleInjectorActor
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from ops.client import build_request, submit
from tests.coordinator.fakes import BusFakes
from tests.e2e.fake_services import world
from tests.e2e.support import results_stored


async def probe(url: str, claims: bool, args: argparse.Namespace) -> dict[str, float]:
    settings = CoordinatorSettings(role_inject_mode="bus", route_timeout_s=5.0, agent_timeout_s=10.0,
                                   reply_claims=claims)
    fakes_nc, client = await nats.connect(url), await nats.connect(url)
    w = world()
    fakes, injector = BusFakes(fakes_nc, w, slow_agents={1: args.agent_delay}), RoleInjectorActor(fakes_nc)
    coords = [CoordinatorActor(await nats.connect(url), settings) for _ in range(2)]
    await fakes.start()
    await injector.start()
    for c in coords:
        await c.start()
    try:
        tag = "on" if claims else "off"
        rids = [f"dup-{tag}-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.ids)]
        reqs = [build_request("What is 17 + 25?", request_id=rid) for rid in rids]
        results = await asyncio.gather(*(submit(client, r, timeout=60.0) for r in reqs for _ in range(args.dups)))
        runs = Counter(c.request_id for c in w.calls if c.agent_id == 1)
        answers = {rid: {msgspec.json.encode(res) for res in results[i * args.dups:(i + 1) * args.dups]}
                   for i, rid in enumerate(rids)}
        stored = sum([await results_stored(client, rid) for rid in rids])
        served = min(c.dedupe.stats.started + c.dedupe.stats.joined + c.dedupe.stats.cached for c in coords)
        fakes.slow = {}
        times = []
        for _ in range(args.latency):
            t0 = time.perf_counter()
            await submit(client, build_request("What is 17 + 25?", request_id=f"lat-{uuid.uuid4().hex[:10]}"),
                         timeout=30.0)
            times.append((time.perf_counter() - t0) * 1000.0)
        return {"requests": len(results), "runs": sum(runs.values()),
                "ids_run_twice": sum(1 for n in runs.values() if n > 1),
                "ids_with_differing_replies": sum(1 for a in answers.values() if len(a) > 1), "stored": stored,
                "p50_ms": statistics.median(times), "p90_ms": statistics.quantiles(times, n=10)[-1],
                "served_by": served}
    finally:
        for c in coords:
            await c.drain(timeout=2.0)
            await c.nc.close()
        await fakes.drain()
        await injector.drain()
        await fakes_nc.close()
        await client.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=20)
    ap.add_argument("--dups", type=int, default=8)
    ap.add_argument("--agent-delay", type=float, default=0.3)
    ap.add_argument("--latency", type=int, default=50)
    args = ap.parse_args()
    srv = NatsServerProcess.start(name="probe-reply-claims")
    try:
        rows = {name: await probe(srv.url, claims, args) for name, claims in (("off", False), ("on", True))}
    finally:
        srv.close()
    print(f"{args.ids} ids x {args.dups} concurrent copies over 2 coordinators (Worker {args.agent_delay}s); "
          f"{args.latency} unique requests for latency")
    print("| reply_claims | requests | runs executed | ids run more than once | ids with differing replies | "
          "results stored | fewest requests one coordinator served | p50 ms | p90 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['requests']:.0f} | {r['runs']:.0f} | {r['ids_run_twice']:.0f} | "
              f"{r['ids_with_differing_replies']:.0f} | {r['stored']:.0f} | {r['served_by']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
