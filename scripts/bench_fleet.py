"""Benchmark the runtime fleet: what placement costs per route, and what a second runtime process buys.

Everything runs in this run against a private nats-server, with runtimes as separate processes
(``run.py node --actors model_runtime``, one torch thread each), the fleet registry and the placement client
in this process. Medians over ``--routes`` sequential routes; ratios printed.

  (a) tiny model (qwen3-tiny-synthetic), one request at a time:
        engine     the engine's own route time (same checkpoint and thread count, in this process)
        subject    a route over the bus on the queue-group subject trinity.route.<backend>.<adapter>
        placed     a route through the coordinator's PlacementClient (cached lease, runtime's own subject)
        place      one uncached placement round trip to the registry (amortised over a lease's routes)
      placement overhead = (placed - subject + place / routes-per-lease) / engine          goal < 5%
      placement + bus overhead = (placed - engine) / engine                                  (reported)
  (b) full-size model (qwen3-0.6b-synthetic): routes/s of --burst concurrent routes with 1 runtime process,
      then with 2; ratio 2/1. On a 2-core machine the two processes share the cores with this client and
      the nats-server, so ~1.5-1.9x is what scaling out looks like here; on separate hosts it is ~2x.

Usage::

    python scripts/bench_fleet.py [--routes 300] [--burst 48] [--skip-full]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import torch
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.coordinator.placement import PlacementClient
from actors.fleet_registry.actor import FleetRegistryActor
from actors.model_runtime.checkpoints import ensure_checkpoint
from actors.model_runtime.engine import RouterEngine
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from config.fleet import FleetSettings
from config.model_runtime import ModelRuntimeSettings
from ops.runtime_process import RuntimeProcess
from schemas.common import Message
from schemas.fleet import FleetStatus, FleetStatusRequest, Lease, PlacementKey, PlacementRequest
from schemas.routing import RouteLogits, RouteRequest

CACHE = Path("~/.cache/trinity-nats/checkpoints").expanduser()
FLEET = FleetSettings(heartbeat_interval_s=0.5, heartbeat_timeout_s=3.0, lease_ttl_s=30.0, attempt_timeout_s=120.0)
WORDS = "route the turn to an agent and a role verify answers plan steps cache tokens batch queue".split()


def transcript(rng: random.Random, words: int) -> list[Message]:
    """A user query of about ``words`` words and one assistant reply."""
    return [Message("user", " ".join(rng.choice(WORDS) for _ in range(words))),
            Message("assistant", " ".join(rng.choice(WORDS) for _ in range(words // 2 + 1)))]


async def wait_runtimes(nc: Client, n: int, timeout: float = 600.0) -> FleetStatus:
    """Wait until the registry sees ``n`` live runtimes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await rpc.request(nc, subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5)
        if len([r for r in st.runtimes if not r.draining]) >= n:
            return st
        await asyncio.sleep(0.2)
    raise SystemExit(f"runtimes did not come up within {timeout:.0f}s")


def median_ms(samples: list[float]) -> float:
    """Median of samples in milliseconds."""
    return statistics.median(samples) * 1000.0


@contextlib.asynccontextmanager
async def registry_session(url: str, registry_id: str, procs: list[RuntimeProcess]) -> AsyncIterator[Client]:
    """A registry in this process and a client connection; stops the registry and ``procs`` at the end."""
    nc = await nats.connect(url)
    reg_nc = await nats.connect(url)
    reg = FleetRegistryActor(reg_nc, FLEET, registry_id=registry_id)
    await reg.start()
    try:
        yield nc
    finally:
        await reg.drain(timeout=2)
        await reg_nc.close()
        await nc.close()
        for p in procs:
            p.stop()


async def part_a(url: str, logs: Path, routes: int) -> None:
    """Placement overhead on the tiny model."""
    ckpt = ensure_checkpoint("qwen3-tiny-synthetic", CACHE)
    proc = RuntimeProcess.start("bench-tiny", url, {
        "model_runtime.checkpoint_dir": str(ckpt), "model_runtime.num_threads": 1,
        "model_runtime.batch_window_ms": 0.0, "model_runtime.cache_max_tokens": 0,
        "fleet.heartbeat_interval_s": FLEET.heartbeat_interval_s}, log_path=logs / "bench-tiny.log")
    async with registry_session(url, "bench-registry", [proc]) as nc:
        st = await wait_runtimes(nc, 1, timeout=300)
        base = st.runtimes[0].spec.base_model
        torch.set_num_threads(1)
        engine = RouterEngine.load(ModelRuntimeSettings(checkpoint_dir=str(ckpt), cache_max_tokens=0))
        client = PlacementClient(nc, FLEET, owner="bench")
        rng = random.Random(0)
        reqs = [RouteRequest(f"a{i}", 0, transcript(rng, 24), base_model=base) for i in range(routes)]
        for r in reqs[:20]:  # warm up every path
            engine.route(r)
            await rpc.request(nc, subjects.route("torch", "base"), r, RouteLogits, timeout=30)
            await client.route(r, 30.0)
        t_engine, t_subject, t_placed, t_place = [], [], [], []
        key = PlacementKey("torch", base, "base")
        for r in reqs:  # interleaved so load changes hit every path alike
            t0 = time.perf_counter()
            engine.route(r)
            t1 = time.perf_counter()
            await rpc.request(nc, subjects.route("torch", "base"), r, RouteLogits, timeout=30)
            t2 = time.perf_counter()
            out = await client.route(r, 30.0)
            t3 = time.perf_counter()
            await rpc.request(nc, subjects.FLEET_PLACE, PlacementRequest(key=key, owner="bench-uncached"), Lease,
                              timeout=30)
            t4 = time.perf_counter()
            assert out.runtime_id == "bench-tiny"
            t_engine.append(t1 - t0)
            t_subject.append(t2 - t1)
            t_placed.append(t3 - t2)
            t_place.append(t4 - t3)
        e, s, p, pl = (median_ms(x) for x in (t_engine, t_subject, t_placed, t_place))
        per_lease = max(1.0, FLEET.lease_ttl_s * (1 - 0.2) / (p / 1000.0))  # routes one lease serves back to back
        placement = (p - s + pl / per_lease) / e
        print(f"(a) tiny model, {routes} sequential routes, medians (ms): engine {e:.3f}  subject {s:.3f}  "
              f"placed {p:.3f}  uncached placement {pl:.3f}")
        print(f"    placement overhead per route: {100 * placement:+.2f}% of an engine route (goal < 5%)  "
              f"[placed - subject = {p - s:+.3f} ms; placement round trip amortised over {per_lease:.0f} routes/lease]")
        print(f"    placement + bus overhead: {100 * (p - e) / e:.1f}% of an engine route "
              f"(bus alone: {100 * (s - e) / e:.1f}%); client lease cache hits {client.counters.cache_hits}, "
              f"placements {client.counters.placements}")


async def burst(client: PlacementClient, base: str, n: int, seed: int) -> tuple[float, set[str]]:
    """Routes per second of ``n`` concurrent routes, and the runtimes that answered."""
    rng = random.Random(seed)
    reqs = [RouteRequest(f"b{seed}-{i}", 0, transcript(rng, 48), base_model=base) for i in range(n)]
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(client.route(r, 600.0) for r in reqs))
    dt = time.perf_counter() - t0
    assert len({o.request_id for o in outs}) == n
    return n / dt, {o.runtime_id for o in outs}


async def part_b(url: str, logs: Path, n: int, repeats: int) -> None:
    """Throughput of 1 vs 2 runtime processes on the full-size model."""
    ckpt = ensure_checkpoint("qwen3-0.6b-synthetic", CACHE)
    common = {"model_runtime.checkpoint_dir": str(ckpt), "model_runtime.num_threads": 1,
              "model_runtime.cache_max_tokens": 0, "model_runtime.max_batch": 8,
              "fleet.heartbeat_interval_s": FLEET.heartbeat_interval_s}
    procs = [RuntimeProcess.start("bench-full-1", url, common, log_path=logs / "bench-full-1.log")]
    async with registry_session(url, "bench-registry-full", procs) as nc:
        st = await wait_runtimes(nc, 1)
        base = st.runtimes[0].spec.base_model
        client = PlacementClient(nc, FLEET, owner="bench-1")
        await burst(client, base, 8, seed=99)  # warm-up
        one = max([(await burst(client, base, n, seed=k))[0] for k in range(repeats)])
        procs.append(RuntimeProcess.start("bench-full-2", url, common, log_path=logs / "bench-full-2.log"))
        await wait_runtimes(nc, 2)
        client2 = PlacementClient(nc, FLEET, owner="bench-2")
        await burst(client2, base, 8, seed=98)
        runs = [await burst(client2, base, n, seed=10 + k) for k in range(repeats)]
        two = max(rate for rate, _ in runs)
        served = set().union(*(used for _, used in runs))
        print(f"(b) full-size model, {n} concurrent routes, best of {repeats}: 1 runtime {one:.2f} routes/s, "
              f"2 runtimes {two:.2f} routes/s, ratio {two / one:.2f}x  (runtimes used: {sorted(served)}; "
              f"{os.cpu_count()} CPU cores shared by both runtimes, this client and nats-server)")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routes", type=int, default=300, help="sequential routes in (a)")
    ap.add_argument("--burst", type=int, default=48, help="concurrent routes per burst in (b)")
    ap.add_argument("--repeats", type=int, default=2, help="bursts per configuration in (b) (best kept)")
    ap.add_argument("--skip-full", action="store_true", help="skip (b), the full-size model")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    srv = NatsServerProcess.start(name="bench-fleet")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        try:
            await part_a(srv.url, Path(tmp), args.routes)
            if not args.skip_full:
                await part_b(srv.url, Path(tmp), args.burst, args.repeats)
        finally:
            srv.close()


if __name__ == "__main__":
    asyncio.run(main())
