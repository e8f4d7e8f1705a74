"""Every actor shows what it did in ``$SRV.STATS`` and the process's Prometheus metrics, over a real
nats-server: work-queue jobs are counted and timed as the coordinator's ``jobs`` endpoint (they used to be
invisible), and the trace sink is a micro service counting the events it consumed."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from prometheus_client import REGISTRY

from actors.coordinator.actor import CoordinatorActor
from actors.trace_sink.actor import SERVICE_NAME, TraceSinkActor
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, TraceSinkSettings
from ops.client import build_request, submit_job
from schemas import RunStatus
from tests.e2e.support import trace_of
from tests.e2e.test_jobs import Scripted, scripted  # noqa: F401  (the fixture)

SLOW_AGENT_S = 0.3
FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_mode="bus")


async def _stats(nc: Client, name: str) -> dict[str, dict[str, Any]]:
    data = json.loads((await nc.request(f"$SRV.STATS.{name}", b"", timeout=2)).data)
    return {e["name"]: e for e in data["endpoints"]}


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_jobs_and_trace_events_show_in_stats_and_metrics(
        fresh_nats_server: NatsServerProcess, scripted: Scripted, tmp_path: Path) -> None:  # noqa: F811
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    world = await scripted(slow_agent_s=SLOW_AGENT_S)  # agent 1 (the Worker) takes SLOW_AGENT_S per call
    world.tokens_per_call, world.cost_per_call = (11, 7), 0.25
    coordinator = CoordinatorActor(nc, FAST)
    sink = TraceSinkActor(nc, TraceSinkSettings(durable="stats-sink", fetch_timeout_s=0.2,
                                                jsonl=JsonlSettings(path=str(tmp_path / "t.jsonl")),
                                                otel=OtelSettings(exporter=OtelExporterKind.MEMORY)))
    before = {k: _metric(k) for k in ("trinity_requests_total", "trinity_turns_total")}
    runs_before = _metric("trinity_runs_total", {"outcome": "finished", "stop_reason": "accepted"})
    tokens_before = _metric("trinity_agent_tokens_total", {"agent": "1", "kind": "completion"})
    cost_before = _metric("trinity_agent_cost_usd_total", {"agent": "1"})
    await coordinator.start()
    await sink.start()
    try:
        reqs = [build_request(f"q{i}", request_id=f"st-{uuid.uuid4().hex[:8]}") for i in range(3)]
        results = await asyncio.gather(*(submit_job(client, r, timeout=20.0) for r in reqs))
        assert [r.status for r in results] == [RunStatus.OK] * 3

        jobs = (await _stats(client, FAST.service_name))["jobs"]
        assert jobs["num_requests"] == 3 and jobs["num_errors"] == 0  # all 3 runs, none through request/reply
        assert jobs["average_processing_time"] >= SLOW_AGENT_S * 1e9  # the run, not a dispatch callback
        assert (await _stats(client, FAST.service_name))["coordinate"]["num_requests"] == 0

        n_events = sum([len(await trace_of(client, r.request_id)) for r in reqs])
        for _ in range(500):
            if sink.consumed >= n_events:
                break
            await asyncio.sleep(0.02)
        events = (await _stats(client, SERVICE_NAME))["events"]
        assert events["num_requests"] == n_events == sink.consumed and events["num_errors"] == 0
        assert _metric("trinity_trace_events_unconsumed") == 0  # the last event consumed left none behind
        info = json.loads((await client.request(f"$SRV.INFO.{SERVICE_NAME}", b"", timeout=2)).data)
        assert [(e["name"], e["queue_group"]) for e in info["endpoints"]] == [("events", "stats-sink")]

        turns = sum(len(r.turns) for r in results)
        assert _metric("trinity_requests_total") - before["trinity_requests_total"] == 3
        assert _metric("trinity_turns_total") - before["trinity_turns_total"] == turns
        assert _metric("trinity_runs_total", {"outcome": "finished", "stop_reason": "accepted"}) - runs_before == 3
        worker_calls = sum(1 for r in results for t in r.turns if t.receipt is not None and t.receipt.agent_id == 1)
        assert worker_calls >= 3
        assert _metric("trinity_agent_tokens_total", {"agent": "1", "kind": "completion"}) - tokens_before \
            == 7 * worker_calls
        assert _metric("trinity_agent_cost_usd_total", {"agent": "1"}) - cost_before == 0.25 * worker_calls
        assert _metric("trinity_endpoint_requests_total", {"service": FAST.service_name, "endpoint": "jobs",
                                                          "outcome": "ok"}) >= 3
    finally:
        await coordinator.drain(timeout=2.0)
        await sink.drain(timeout=2.0)
        await nc.close()
        await client.close()
