"""Probe: self-healing storage and bounded memory, measured against real nats-server processes.

Starts its own nats-server (JetStream on, free port), a coordinator (durable job intake), a trace sink writing
JSONL, and instant fake runtime and agent actors (5 Worker turns per run), then:

1. runs ``--jobs`` jobs, deletes every stream and the trace sink's consumer under the running actors (the
   results, trace and jobs streams; the jobs consumer goes with its stream; the run journal's key-value
   bucket), waits for the storage keepers to
   recreate them, and runs ``--jobs`` more: results stored after deletion N/N, runs untraced (no
   ``run_started``..``run_finished`` in the JSONL file) 0;
2. memory per stored run: a ``--query-kb`` query's result as returned over request/reply and as stored
   (trimmed to ``coordinator.result_max_bytes``), and the dedupe cache's bytes against its cap;
3. publish slots: ``--bad`` publishes nats-py refuses after taking a slot (a subject with a newline, a payload
   over max_payload), raw vs through ``bus.storage.publish_async``: slots leaked;
4. a second server whose JetStream store is too small for the streams: the coordinator starts, logs a typed
   ``StoreTooSmall``, and answers request/reply.

Run:  .venv/bin/python scripts/probe_storage.py [--jobs 20] [--query-kb 190] [--bad 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import nats
import nats.errors
import nats.js.errors

from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import local_injector, registry_from_settings
from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.jsonl import read_jsonl
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from bus.storage import PublishRefused, StoreTooSmall, publish_async
from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, TraceSinkSettings
from ops.client import submit_job
from schemas import Budget, CoordinationRequest, CoordinationResult, RunStatus
from scripts.bench_coordination import start_fakes

TIMEOUT_S = 120.0


def settings() -> CoordinatorSettings:
    return CoordinatorSettings(role_inject_mode="local", storage_check_s=0.5, route_timeout_s=5.0,
                               agent_timeout_s=5.0, jobs_ack_wait_s=10.0)


def new_request(query: str = "What is 17 + 25?") -> CoordinationRequest:
    return CoordinationRequest(request_id=f"p-{uuid.uuid4().hex[:12]}", query=query, budget=Budget(max_turns=5))


async def start_coordinator(url: str, s: CoordinatorSettings) -> tuple[nats.NATS, CoordinatorActor]:
    nc = await nats.connect(url, name="probe-coordinator")
    coord = CoordinatorActor(nc, s, local_injector=local_injector(registry_from_settings(RoleInjectorSettings())))
    await coord.start()
    return nc, coord


async def until(pred, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > TIMEOUT_S:
            raise SystemExit(f"probe: not reached within {TIMEOUT_S:.0f} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def traced_runs(path: Path, ids: list[str]) -> int:
    """Runs whose run_started and run_finished both reached the JSONL file."""
    kinds: dict[str, set[str]] = {}
    if path.exists():
        for r in read_jsonl(path):
            kinds.setdefault(r.event.request_id, set()).add(r.event.kind)
    return sum({"run_started", "run_finished"} <= kinds.get(i, set()) for i in ids)


async def run_jobs(nc: nats.NATS, n: int) -> list[str]:
    reqs = [new_request() for _ in range(n)]
    results = await asyncio.gather(*(submit_job(nc, r, timeout=TIMEOUT_S) for r in reqs))
    bad = [r for r in results if r.status is not RunStatus.OK]
    if bad:
        raise SystemExit(f"probe: {len(bad)} jobs did not finish ok: {bad[0]}")
    return [r.request_id for r in reqs]


async def stored_count(nc: nats.NATS, ids: list[str]) -> int:
    js, n = nc.jetstream(), 0
    for i in ids:
        try:
            await js.get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(i))
            n += 1
        except nats.js.errors.NotFoundError:
            pass
    return n


async def probe_healing(url: str, jobs: int, query_kb: int, tmp: Path) -> None:
    fake_conns, services = await start_fakes(url)
    nc, coord = await start_coordinator(url, settings())
    nc_sink = await nats.connect(url, name="probe-sink")
    jsonl = tmp / "trace.jsonl"
    sink = TraceSinkActor(nc_sink, TraceSinkSettings(storage_check_s=0.5, jsonl=JsonlSettings(path=str(jsonl)),
                                                     otel=OtelSettings(exporter=OtelExporterKind.NONE)))
    await sink.start()
    client = await nats.connect(url, name="probe-client")
    js = client.jetstream()
    try:
        before = await run_jobs(client, jobs)
        await until(lambda: traced_runs(jsonl, before) == jobs, "runs before the deletion traced")
        print(f"before deletion: stored {await stored_count(client, before)}/{jobs}, "
              f"traced {traced_runs(jsonl, before)}/{jobs}")
        t0 = time.monotonic()
        await js.delete_consumer(subjects.TRACE_STREAM, sink.settings.durable)
        for stream in (subjects.RESULTS_STREAM, subjects.TRACE_STREAM, subjects.JOBS_STREAM):
            await js.delete_stream(stream)
        await js.delete_key_value("TRINITY_RUNS")
        print("deleted: consumer trace-sink, streams TRINITY_RESULTS, TRINITY_TRACE, TRINITY_JOBS "
              "(and the coordinators consumer with it), key-value bucket TRINITY_RUNS (the run journal)")
        assert sink.storage is not None
        keeper = sink.storage
        await until(lambda: all(coord.storage.recreated.get(k) for k in (
            subjects.RESULTS_STREAM, subjects.TRACE_STREAM, subjects.JOBS_STREAM, "KV_TRINITY_RUNS",
            f"{subjects.JOBS_STREAM}/{subjects.JOBS_CONSUMER}")) and keeper.recreated.get(
            f"{subjects.TRACE_STREAM}/{sink.settings.durable}"), "everything recreated")
        print(f"recreated by the storage keepers in {time.monotonic() - t0:.2f} s "
              f"(coordinator {coord.storage.recreated}, trace sink {keeper.recreated})")
        after = await run_jobs(client, jobs)
        stored = await stored_count(client, after)
        await until(lambda: traced_runs(jsonl, after) == jobs or time.monotonic() - t0 > 60, "runs traced")
        traced = traced_runs(jsonl, after)
        print(f"after deletion: stored {stored}/{jobs}, traced {traced}/{jobs}, untraced runs {jobs - traced}")

        # memory per stored run
        big = new_request("x" * (query_kb * 1000))
        whole = await rpc.request(client, subjects.coord_request(), big, CoordinationResult, timeout=TIMEOUT_S)
        whole_bytes = len(msgspec.json.encode(whole))
        await submit_job(client, msgspec.structs.replace(big, request_id=big.request_id + "-j"), timeout=TIMEOUT_S)
        raw = await js.get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(big.request_id + "-j"))
        s = coord.settings
        print(f"memory per run: a {query_kb} KB query -> result {whole_bytes / 1000:.0f} KB over request/reply, "
              f"{len(raw.data or b'') / 1000:.1f} KB stored (cap result_max_bytes {s.result_max_bytes / 1000:.0f} KB); "
              f"results stream capped at {s.results_max_bytes / 2**20:.0f} MiB "
              f"(>= {s.results_max_bytes // s.result_max_bytes} results)")
        st = coord.stats()
        entry_cap = max(s.result_max_bytes, s.dedupe_max_bytes // 16)
        print(f"dedupe cache: {st['cached_results']} results, {st['cached_bytes'] / 1000:.1f} KB "
              f"({st['cached_bytes'] / max(1, st['cached_results']) / 1000:.1f} KB per result; "
              f"cap {s.dedupe_max_bytes / 2**20:.0f} MiB, an entry over {entry_cap / 2**20:.0f} MiB is not cached)")
        return None
    finally:
        await sink.drain(timeout=2.0)
        await coord.drain(timeout=2.0)
        for svc in services:
            await svc.drain(timeout=1.0)
        for c in (client, nc, nc_sink, *fake_conns):
            await c.close()


async def probe_slots(url: str, bad: int) -> None:
    nc = await nats.connect(url, name="probe-slots")
    try:
        too_big = b"x" * (nc.max_payload + 1)
        raw = nc.jetstream(publish_async_max_pending=4000)
        for i in range(bad):
            try:
                if i % 2:
                    await raw.publish_async("trinity.trace.bad\nid.run_started", b"x", wait_stall=0.01)
                else:
                    await raw.publish_async("trinity.trace.big.run_started", too_big, wait_stall=0.01)
            except (nats.errors.Error, nats.js.errors.Error):
                pass
        await asyncio.sleep(0)
        wrapped = nc.jetstream(publish_async_max_pending=4000)
        refused = 0
        for i in range(bad):
            try:
                if i % 2:
                    await publish_async(wrapped, "trinity.trace.bad\nid.run_started", b"x", wait_stall=0.01)
                else:
                    await publish_async(wrapped, "trinity.trace.big.run_started", too_big, wait_stall=0.01)
            except PublishRefused:
                refused += 1
        await asyncio.sleep(0)
        print(f"publish slots after {bad} refused publishes (of 4000): raw nats-py leaked "
              f"{raw.publish_async_pending()}, bus.storage.publish_async leaked {wrapped.publish_async_pending()} "
              f"({refused} typed PublishRefused, not retried)")
    finally:
        await nc.close()


async def probe_small_store(n: int) -> None:
    srv = NatsServerProcess.start(name="probe-small-store", max_file_store="1MB")
    try:
        fake_conns, services = await start_fakes(srv.url)
        nc, coord = await start_coordinator(srv.url, settings())
        try:
            ok = 0
            for _ in range(n):
                res = await rpc.request(nc, subjects.coord_request(), new_request(), CoordinationResult, timeout=30)
                ok += res.status is RunStatus.OK
            err = coord.storage.error
            print(f"store too small (max_file_store 1MB): coordinator started, typed "
                  f"{type(err).__name__ if err else None} "
                  f"({'as expected' if isinstance(err, StoreTooSmall) else 'UNEXPECTED'}), request/reply "
                  f"{ok}/{n} ok, job intake waiting for storage: {not coord.jobs_started}")
        finally:
            await coord.drain(timeout=2.0)
            for svc in services:
                await svc.drain(timeout=1.0)
            for c in (nc, *fake_conns):
                await c.close()
    finally:
        srv.close()


async def main(jobs: int, query_kb: int, bad: int) -> int:
    logging.basicConfig(level=logging.WARNING, format="  log %(levelname)s %(name)s: %(message)s")
    srv = NatsServerProcess.start(name="probe-storage")
    print(f"nats-server {srv.url} (own process, JetStream on)")
    try:
        with tempfile.TemporaryDirectory(prefix="probe-storage-") as tmp:
            await probe_healing(srv.url, jobs, query_kb, Path(tmp))
        await probe_slots(srv.url, bad)
    finally:
        srv.close()
    await probe_small_store(5)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--query-kb", type=int, default=190)
    ap.add_argument("--bad", type=int, default=1000)
    a = ap.parse_args()
    raise SystemExit(asyncio.run(main(a.jobs, a.query_kb, a.bad)))
