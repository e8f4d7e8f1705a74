"""Load test on loopback: N concurrent coordination submissions with instant fake runtime and agents, through
the durable JetStream work queue (``run.py submit``'s default) and, as the baseline measured in the same run,
plain request/reply. Reports throughput and latency percentiles per path and proves nothing was lost: every
request answered ok with its own answer, one stored result per job, every trace event in the stream, the
work queue empty.

Bounded: ``--n`` submissions per path, at most ``--concurrency`` in flight, and ``--time-limit`` seconds in
all (exit 1 when it runs out, or when anything was lost). Starts its own nats-server on a free port; never
touches another server.

Run:  .venv/bin/python scripts/load_test.py [--n 500] [--concurrency 100] [--coordinators 2] [--time-limit 300]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
import nats.errors
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import RoleInjectorActor
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.errors import BusError
from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from ops.client import build_request, submit, submit_job
from schemas import CoordinationResult, RunStatus
from scripts.bench_coordination import TURNS, pct, start_fakes, trace_count

EVENTS_PER_RUN = 2 + TURNS * 5  # run_started + 5 per turn + run_finished


@dataclass
class Phase:
    """What one path did: latencies of answered requests, counts, wall time."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def report(self, n: int) -> None:
        lat = self.latencies_ms
        print(f"  {self.name:<22} {self.ok}/{n} ok, {self.wrong} wrong, {len(self.errors)} errors; "
              f"{n / self.wall_s:7.1f} req/s; latency p50 {statistics.median(lat):7.1f} ms  p95 {pct(lat, 95):7.1f} ms"
              f"  p99 {pct(lat, 99):7.1f} ms  max {max(lat):7.1f} ms")
        if self.errors:
            print(f"    first error: {self.errors[0]}")


async def drive(client: Client, name: str, n: int, concurrency: int, via_jobs: bool) -> Phase:
    """Submit ``n`` requests, at most ``concurrency`` at a time, and check every answer."""
    phase = Phase(name)
    gate = asyncio.Semaphore(concurrency)
    send = submit_job if via_jobs else submit

    async def one(i: int) -> None:
        rid = f"lt-{name}-{i}"
        req = build_request(f"question {i}", request_id=rid, max_turns=TURNS, deadline_s=600.0)
        async with gate:
            t0 = time.perf_counter()
            try:
                res: CoordinationResult = await send(client, req, timeout=600.0)
            except (BusError, nats.errors.Error, TimeoutError) as e:  # counted: the point is that none happen
                phase.errors.append(f"{rid}: {e!r}")
                return
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if res.status is RunStatus.OK and res.request_id == rid and res.answer == f"{rid} answer {TURNS - 1}":
            phase.ok += 1
        else:
            phase.wrong += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    phase.wall_s = time.perf_counter() - t0
    return phase


async def run(n: int, concurrency: int, coordinators: int) -> int:
    srv = NatsServerProcess.start(name="trinity-load-test")
    print(f"nats-server {srv.url} (own process, JetStream on); {coordinators} coordinator(s), instant fake runtime "
          f"and agents, {TURNS} turns per run, {n} requests per path, {concurrency} in flight")
    conns: list[Client] = []
    try:
        fake_conns, services = await start_fakes(srv.url)
        conns += fake_conns
        nc_inj = await nats.connect(srv.url, name="load-injector")
        conns.append(nc_inj)
        injector = RoleInjectorActor(nc_inj, RoleInjectorSettings())
        await injector.start()
        settings = CoordinatorSettings(max_concurrency=4096, trace_buffer=500_000, jobs_concurrency=512)
        actors = []
        for i in range(coordinators):
            nc = await nats.connect(srv.url, name=f"load-coordinator-{i}", pending_size=256 * 1024 * 1024)
            conns.append(nc)
            actor = CoordinatorActor(nc, settings)
            await actor.start()
            actors.append(actor)
        client = await nats.connect(srv.url, name="load-client", pending_size=256 * 1024 * 1024)
        conns.append(client)
        await drive(client, "warmup", 20, 10, via_jobs=True)
        await drive(client, "warmup-rr", 20, 10, via_jobs=False)
        for a in actors:  # the warm-up's trace events are in the stream before counting starts
            await a.traces.flush(60.0)
        before = await trace_count(client)
        results_before = (await client.jetstream().stream_info(subjects.RESULTS_STREAM)).state.messages

        base = await drive(client, "request-reply", n, concurrency, via_jobs=False)
        jobs = await drive(client, "jobs", n, concurrency, via_jobs=True)

        for a in actors:
            await a.traces.flush(60.0)
        js = client.jetstream()
        stored_results = (await js.stream_info(subjects.RESULTS_STREAM)).state.messages - results_before
        queued = (await js.stream_info(subjects.JOBS_STREAM)).state.messages
        events = await trace_count(client) - before
        dropped = sum(a.traces.counters.dropped + a.traces.counters.failed for a in actors)
        job_counts = [dataclasses.asdict(a.jobs.counters) for a in actors]

        print("\nresults")
        base.report(n)
        jobs.report(n)
        print(f"  jobs / request-reply: throughput {(n / jobs.wall_s) / (n / base.wall_s):.2f}x, "
              f"p50 latency {statistics.median(jobs.latencies_ms) / statistics.median(base.latencies_ms):.2f}x, "
              f"p99 latency {pct(jobs.latencies_ms, 99) / pct(base.latencies_ms, 99):.2f}x")
        redelivered = sum(c["redelivered"] for c in job_counts)
        print(f"  jobs per coordinator (warm-up included): {[c['results'] for c in job_counts]}; redelivered "
              f"{redelivered}, store failures {sum(c['store_failed'] for c in job_counts)}")
        print("\nnothing lost?")
        checks = {
            f"answers ok: {base.ok + jobs.ok}/{2 * n}": base.ok + jobs.ok == 2 * n,
            f"stored job results: {stored_results}/{n} (one per request id)": stored_results == n,
            f"jobs left in the queue: {queued}": queued == 0,
            f"trace events in the stream: {events}/{2 * n * EVENTS_PER_RUN}": events == 2 * n * EVENTS_PER_RUN,
            f"trace events dropped or failed: {dropped}": dropped == 0,
        }
        for line, good in checks.items():
            print(f"  [{'ok' if good else 'LOST'}] {line}")
        lost = not all(checks.values())
        print(f"  nothing lost: {'YES' if not lost else 'NO'}")
        for a in actors:
            await a.drain(timeout=5.0)
        await injector.drain(timeout=2.0)
        for s in services:
            await s.drain(timeout=1.0)
        return 1 if lost else 0
    finally:
        for c in conns:
            if not c.is_closed:
                await c.close()
        srv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="requests per path (default 500)")
    ap.add_argument("--concurrency", type=int, default=100, help="requests in flight at once (default 100)")
    ap.add_argument("--coordinators", type=int, default=2, help="coordinator actors, each on its own connection")
    ap.add_argument("--time-limit", type=float, default=300.0, metavar="SECONDS", help="stop after this long")
    args = ap.parse_args()
    if not (1 <= args.n <= 100_000 and 1 <= args.concurrency <= 10_000 and 1 <= args.coordinators <= 16):
        ap.error("--n in 1..100000, --concurrency in 1..10000, --coordinators in 1..16")

    async def bounded() -> int:
        try:
            return await asyncio.wait_for(run(args.n, args.concurrency, args.coordinators), args.time_limit)
        except TimeoutError:
            print(f"time limit of {args.time_limit:.0f} s reached before every request was answered")
            return 1

    return asyncio.run(bounded())


if __name__ == "__main__":
    raise SystemExit(main())
