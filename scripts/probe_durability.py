"""Probe durable execution and backpressure, each against a baseline in the same run, and print the figures.

1. **SIGKILL**: ``--jobs`` jobs on coordinator A (a ``run.py node`` process); once every job's first turn is done
   and its second agent call is running, A is killed; coordinator B finishes them. Rows: the baseline
   (``coordinator.jobs_durable=false``, agents without a call cache: the behaviour before the run journal), the
   journal alone, the journal with idempotent agents (the default deployment).
2. **SIGSTOP**: ``--pause-jobs`` jobs on A, A paused for three ack waits mid-call (B takes the jobs over), then
   resumed. Rows: baseline and journal (agents without a call cache in both).
3. **Overload**: ``--overload-jobs`` jobs against one fake runtime that serves ``--capacity`` routes at once and
   answers ``overloaded`` beyond. Rows: baseline (``overload_wait_s=0``, fixed intake: an overloaded route is a
   plain retryable error) and backpressure (jittered backoff, adaptive intake).

The fake runtime and agents (``tests/e2e/fake_services.py``) script two turns per job (Worker answers ``42``,
Verifier ``ACCEPT``) and log every agent request and every provider call they make, by call id.

Usage:
    .venv/bin/python scripts/probe_durability.py                       # 20 killed, 10 paused, 2,000 overloaded
    .venv/bin/python scripts/probe_durability.py --overload-jobs 300 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import nats

from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import RoleInjectorActor
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from tests.e2e import procs
from tests.e2e.durability_support import calls_of, submit_all, traces, wait_for_event
from tests.e2e.fake_services import fake_services
from tests.e2e.support import results_stored

ACK_WAIT = 2.0
NODE = (f"coordinator.jobs_ack_wait_s={ACK_WAIT}", "coordinator.jobs_max_deliver=4",
        "coordinator.role_inject_mode=local", "coordinator.route_timeout_s=3", "coordinator.agent_timeout_s=6",
        "nats.reconnect_wait_s=0.2")


async def _stored_counts(nc: nats.NATS, rids: list[str]) -> Counter[int]:
    return Counter([await results_stored(nc, rid) for rid in rids])


def _repeats(counter: Counter[str]) -> int:
    return sum(counter.values()) - len(counter)


async def crash_probe(n: int, *, journal: bool, agent_cache: bool, pause: bool, log_dir: Path) -> dict[str, Any]:
    """SIGKILL (or SIGSTOP for three ack waits) coordinator A mid-run with ``n`` jobs; B finishes them."""
    srv = NatsServerProcess.start(name="probe-durability")
    urls = [srv.url]
    log_dir.mkdir(parents=True, exist_ok=True)
    calls_log = log_dir / "calls.log"
    extra = ["--calls-log", str(calls_log), *(["--idempotent"] if agent_cache else [])]
    node = (*NODE, f"coordinator.jobs_durable={'true' if journal else 'false'}")
    fake = procs.fakes("fakes", urls, log_dir, agent_delay=1.5 if pause else 2.0, extra=extra)
    a = procs.node("coord-a", urls, "coordinator", log_dir, *node)
    b: procs.Proc | None = None
    nc = await nats.connect(srv.url)
    t0 = time.perf_counter()
    try:
        rids = [f"p-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        tasks = submit_all(nc, rids)
        b = await asyncio.to_thread(procs.node, "coord-b", urls, "coordinator", log_dir, *node)
        if pause:
            await wait_for_event(nc, rids, "agent_call_started")
            os.kill(a.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(3 * ACK_WAIT + 1.0)
            os.kill(a.proc.pid, signal.SIGCONT)
        else:
            await wait_for_event(nc, rids, "agent_call_finished")
            a.kill()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # late events of A (after SIGCONT)
        stored = await _stored_counts(nc, rids)
        by_rid = await traces(nc)
        finished_twice = sum(1 for rid in rids
                             if sum(e.kind in ("run_finished", "run_failed") for e in by_rid.get(rid, [])) > 1)
        requests, calls = calls_of(calls_log)
        ok = sum(1 for r in results if not isinstance(r, BaseException) and r.status.value == "ok")
        return {"jobs": n, "results_ok": ok, "stored_once": stored[1], "stored_twice_or_more":
                sum(v for k, v in stored.items() if k > 1), "missing": stored[0], "finished_twice": finished_twice,
                "agent_requests": sum(requests.values()), "repeated_requests": _repeats(requests),
                "provider_calls": sum(calls.values()), "repeated_provider_calls": _repeats(calls),
                "wall_s": round(wall, 1)}
    finally:
        await nc.close()
        if pause and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        for p in (b, a, fake):
            if p is not None:
                p.stop()
        srv.close()


async def overload_probe(n: int, capacity: int, *, backpressure: bool) -> dict[str, Any]:
    """``n`` jobs against one fake runtime serving ``capacity`` routes at once (in one process)."""
    srv = NatsServerProcess.start(name="probe-overload")
    settings = CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=5.0, role_inject_mode="bus",
                                   jobs_concurrency=256, trace_enabled=False)
    if not backpressure:
        settings = msgspec.structs.replace(settings, overload_wait_s=0.0, jobs_adaptive_intake=False)
    conns = [await nats.connect(srv.url) for _ in range(3)]
    services = fake_services(conns[0], conns[0], route_delay=0.01, runtime_capacity=capacity, runtime_id="tiny")
    injector = RoleInjectorActor(conns[0])
    coordinator = CoordinatorActor(conns[1], settings)
    for s in services:
        await s.start()
    await injector.start()
    await coordinator.start()
    t0 = time.perf_counter()
    try:
        rids = [f"o-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        results = await asyncio.gather(*submit_all(conns[2], rids, deadline_s=900.0), return_exceptions=True)
        wall = time.perf_counter() - t0
        status = Counter("error" if isinstance(r, BaseException) else r.status.value for r in results)
        jobs = coordinator.stats()["jobs"]
        return {"jobs": n, "ok": status["ok"], "failed": status["failed"], "errors": status["error"],
                "wall_s": round(wall, 1), "intake_cuts": coordinator.jobs.intake.cuts,
                "requeued": jobs["requeued"], "deferred": jobs["deferred"]}
    finally:
        await coordinator.drain(timeout=5.0)
        await injector.drain()
        for s in services:
            await s.drain(timeout=2.0)
        for c in conns:
            await c.close()
        srv.close()


def _table(title: str, rows: dict[str, dict[str, Any]]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"\n{title}")
    print("| run | " + " | ".join(keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")


async def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="probe-durability-"))
    out: dict[str, dict[str, dict[str, Any]]] = {"sigkill": {}, "sigstop": {}, "overload": {}}
    if args.jobs:
        for name, journal, cache in (("baseline (journal off, no agent cache)", False, False),
                                     ("journal", True, False), ("journal + idempotent agents", True, True)):
            out["sigkill"][name] = await crash_probe(args.jobs, journal=journal, agent_cache=cache, pause=False,
                                                     log_dir=root / f"kill-{journal}-{cache}")
        _table(f"SIGKILL of a coordinator mid-run, {args.jobs} jobs", out["sigkill"])
    if args.pause_jobs:
        for name, journal in (("baseline (journal off)", False), ("journal", True)):
            out["sigstop"][name] = await crash_probe(args.pause_jobs, journal=journal, agent_cache=False, pause=True,
                                                     log_dir=root / f"pause-{journal}")
        _table(f"SIGSTOP of a coordinator for {3 * ACK_WAIT:.0f} s (ack wait {ACK_WAIT:.0f} s), {args.pause_jobs} jobs",
               out["sigstop"])
    if args.overload_jobs:
        for name, bp in (("baseline (no backoff, fixed intake)", False), ("backpressure", True)):
            out["overload"][name] = await overload_probe(args.overload_jobs, args.capacity, backpressure=bp)
        _table(f"{args.overload_jobs} jobs on one runtime of capacity {args.capacity}", out["overload"])
    print(f"\nlogs: {root}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20, help="jobs in the SIGKILL probe (0: skip)")
    p.add_argument("--pause-jobs", type=int, default=10, help="jobs in the SIGSTOP probe (0: skip)")
    p.add_argument("--overload-jobs", type=int, default=2000, help="jobs in the overload probe (0: skip)")
    p.add_argument("--capacity", type=int, default=2, help="routes the tiny runtime serves at once")
    p.add_argument("--json", help="also write the figures to this file")
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(p.parse_args())))
