"""Benchmark: the OpenAI-compatible gateway's overhead over a direct ``submit_job``, and N concurrent streams.

Starts its own nats-server (JetStream on, free port), a coordinator (work queue on), a role injector, the
gateway (port 0, no API keys) and *instant* scripted fake runtime and agents (turn 0: agent 1 as Worker answers
``42``; turn 1: agent 2 as Verifier answers ``ACCEPT``), each actor on its own NATS connection, all in this
one process (like ``run.py node`` with every actor). Then:

1. Overhead: ``--runs`` sequential runs alternating a direct ``ops.client.submit_job`` (the baseline, same run)
   and a non-streaming ``POST /v1/chat/completions`` through the gateway (httpx, keep-alive); prints p50/p99 of
   each and of the difference. Then the same for streaming requests (time to ``[DONE]``).
2. ``--concurrent`` streaming requests at once (``max_concurrency`` raised to fit): each must end with
   ``data: [DONE]`` after exactly 2 turn chunks and the answer ``42``; prints how many were lost.
3. Metrics: the process serves its Prometheus metrics (``bus.metrics.serve``, free port), scraped over HTTP
   before and after; every run must show in ``trinity_requests_total``, ``trinity_runs_total``,
   ``trinity_turns_total``, the run-time histogram, the coordinator's ``jobs`` endpoint and (for gateway
   requests that got an HTTP response) ``trinity_gateway_http_requests_total``, and in ``$SRV.STATS`` of the
   coordinator and gateway. A missing count fails the run.
4. ``--trace-runs N`` (0: skipped): tracing on/off in the same run. A tracer provider exporting OTLP/HTTP to a
   collector stand-in (a thread that stores the bodies) is installed; its root sampler is a switch flipped
   before each request, so N non-streaming gateway requests with spans alternate with N without (ABBA order).
   Prints p50/p99 of each and their ratio, then decodes what the collector received and counts the traced
   requests whose spans are all there (the gateway's request span, the coordinator's run span and one turn
   span per turn, all in one trace) and the untraced ones that left no span.

Run:  .venv/bin/python scripts/bench_gateway.py [--runs 200] [--concurrent 200] [--trace-runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import nats

from actors.coordinator.actor import CoordinatorActor
from actors.gateway.actor import GatewayActor
from actors.role_injector.actor import RoleInjectorActor
from bus import metrics
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from config.gateway import GatewaySettings
from ops.client import build_request, submit_job
from tests.gateway.support import scripted_world


async def scrape(http: httpx.AsyncClient, port: int) -> dict[str, float]:
    """The process's metrics over HTTP, as ``name{labels}`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {f"{s.name}{dict(sorted(s.labels.items()))}": s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def srv_stats(nc: nats.NATS, service: str, endpoint: str) -> int:
    data = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=5)).data)
    return int({e["name"]: e for e in data["endpoints"]}[endpoint]["num_requests"])


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def line(name: str, ms: list[float]) -> str:
    return f"{name:<34} p50 {pct(ms, 0.5):7.2f} ms  p99 {pct(ms, 0.99):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms"


async def stream_once(http: httpx.AsyncClient, url: str, query: str,
                      rids: list[str] | None = None) -> tuple[int, str, bool]:
    """One streaming request: (turn chunks, answer text, ended with [DONE]); its request id goes to ``rids``."""
    turns, answer, done = 0, "", False
    body = {"model": "trinity", "stream": True, "messages": [{"role": "user", "content": query}]}
    async with http.stream("POST", url, json=body) as r:
        if rids is not None and "x-trinity-request-id" in r.headers:
            rids.append(r.headers["x-trinity-request-id"])
        if r.status_code != 200:
            return 0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}", False
        async for raw in r.aiter_lines():
            if not raw.startswith("data: "):
                continue
            data = raw[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                return turns, f"error: {chunk['error']}", False
            if (chunk.get("trinity") or {}).get("event") == "turn":
                turns += 1
            for choice in chunk.get("choices", []):
                answer += choice["delta"].get("content") or ""
    return turns, answer, done


class _Collector:
    """An OTLP/HTTP collector stand-in in a thread: stores each POSTed body (decoded after the timed part)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        from tests.provider_agents.loopback import Recorded

        self.received: list[Recorded] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, daemon=True).start()


def _install_switched_tracing(endpoint: str) -> tuple[Any, Any]:
    """A provider exporting OTLP/HTTP whose root sampling is a switch (``switch.on``); returns both."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, SamplingResult

    class Switch(Sampler):
        on = False

        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

        def get_description(self) -> str:
            return "switch"

    switch = Switch()
    provider = TracerProvider(sampler=ParentBased(root=switch),
                              resource=Resource.create({"service.name": "bench-gateway"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces"),
                                                   max_queue_size=65536, schedule_delay_millis=1000))
    trace.set_tracer_provider(provider)
    return switch, provider


async def trace_phase(http: httpx.AsyncClient, url: str, runs: int, switch: Any, provider: Any,
                      collector: _Collector, burst: list[str]) -> int:
    """Tracing on/off, alternating (ABBA); returns the number of traced requests (those and the ``burst``'s)
    with spans missing, plus untraced ones that left spans."""
    from tests.e2e.otlp import decode

    on_ms: list[float] = []
    off_ms: list[float] = []
    traced: list[str] = []
    untraced: list[str] = []
    for i in range(runs):
        for flag in ((True, False) if i % 2 == 0 else (False, True)):
            switch.on = flag
            t0 = time.perf_counter()
            r = await http.post(url, json={"model": "trinity", "messages": [{"role": "user",
                                                                             "content": f"traced {i} {flag}"}]})
            (on_ms if flag else off_ms).append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
            (traced if flag else untraced).append(r.headers["x-trinity-request-id"])
    switch.on = False
    provider.force_flush(30_000)
    spans = decode(collector.received)
    by_rid: dict[str, list[Any]] = {}
    for sp in spans:
        rid = sp.attributes.get("trinity.request_id")
        if rid:
            by_rid.setdefault(str(rid), []).append(sp)

    def whole(rid: str) -> bool:
        got = by_rid.get(rid, [])
        names = [sp.name for sp in got]
        return (names.count("POST /v1/chat/completions") == 1 and names.count("trinity.coordinator.run") == 1
                and names.count("trinity.coordinator.turn") == 2 and len({sp.trace_id for sp in got}) == 1)

    complete = sum(1 for rid in traced if whole(rid))
    burst_complete = sum(1 for rid in burst if whole(rid))
    leaked = sum(1 for rid in untraced if rid in by_rid)
    print(f"tracing on/off, {runs} gateway requests each, alternating (same run, OTLP/HTTP export to a collector "
          "stand-in in a thread)")
    print(line("tracing off", off_ms))
    print(line("tracing on", on_ms))
    p50, p99 = pct(on_ms, 0.5) / pct(off_ms, 0.5), pct(on_ms, 0.99) / pct(off_ms, 0.99)
    mean = statistics.fmean(on_ms) / statistics.fmean(off_ms)
    print(f"tracing overhead: p50 x{p50:.3f} ({pct(on_ms, 0.5) - pct(off_ms, 0.5):+.2f} ms), p99 x{p99:.3f}, "
          f"mean x{mean:.3f}")
    print(f"spans: {len(spans)} received in {len(collector.received)} exports; traced requests with every span "
          f"(gateway request, coordinator run, 2 turns, one trace): {complete}/{len(traced)}; untraced requests "
          f"that left spans: {leaked}/{len(untraced)}; concurrent streaming burst (traced): {burst_complete}/"
          f"{len(burst)} with every span")
    return len(traced) - complete + leaked + len(burst) - burst_complete


async def main(runs: int, concurrent: int, trace_runs: int = 0) -> int:
    logging.basicConfig(level=logging.WARNING)
    switch = provider = collector = None
    if trace_runs:  # installed before the actors start (their spans use the global provider)
        collector = _Collector()
        switch, provider = _install_switched_tracing(collector.url)
    srv = NatsServerProcess.start(name="bench-gateway")
    conns = [await nats.connect(srv.url, name=f"bench-{i}") for i in range(5)]
    fakes_nc, injector_nc, coord_nc, gw_nc, client_nc = conns
    from tests.coordinator.fakes import BusFakes

    fakes = BusFakes(fakes_nc, scripted_world())
    injector = RoleInjectorActor(injector_nc)
    coordinator = CoordinatorActor(coord_nc, CoordinatorSettings(role_inject_mode="bus", jobs_concurrency=1024,
                                                                 route_timeout_s=30, agent_timeout_s=60))
    gateway = GatewayActor(gw_nc, GatewaySettings(port=0, max_concurrency=max(64, concurrent + 8),
                                                  request_deadline_s=300.0, result_poll_s=5.0))
    for actor in (fakes, injector, coordinator, gateway):
        await actor.start()
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    metrics_server = metrics.serve(0)
    missing: list[str] = []
    limits = httpx.Limits(max_connections=concurrent + 8, max_keepalive_connections=concurrent + 8)
    lost = 0
    try:
        async with httpx.AsyncClient(timeout=600.0, limits=limits) as http:
            before = await scrape(http, metrics_server.server_port)
            jobs_before = await srv_stats(client_nc, "trinity-coordinator", "jobs")
            # warm-up: streams, consumers, connections
            for i in range(10):
                await submit_job(client_nc, build_request(f"warm {i}"), timeout=30)
                assert (await http.post(url, json={"model": "trinity", "messages": [
                    {"role": "user", "content": "warm"}]})).status_code == 200
            direct, via, via_stream = [], [], []
            for i in range(runs):
                t0 = time.perf_counter()
                res = await submit_job(client_nc, build_request(f"direct {i}"), timeout=30)
                direct.append((time.perf_counter() - t0) * 1000)
                assert res.answer == "42", res
                t0 = time.perf_counter()
                r = await http.post(url, json={"model": "trinity", "messages": [{"role": "user",
                                                                                 "content": f"gw {i}"}]})
                via.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "42", r.text
                t0 = time.perf_counter()
                turns, answer, done = await stream_once(http, url, f"gw stream {i}")
                via_stream.append((time.perf_counter() - t0) * 1000)
                assert (turns, answer, done) == (2, "42", True), (turns, answer, done)
            print(f"sequential runs: {runs} each (2 turns per run, instant fakes, all actors in one process)")
            print(line("direct submit_job", direct))
            print(line("gateway non-streaming", via))
            print(line("gateway streaming (to [DONE])", via_stream))
            print(f"gateway overhead p50 {pct(via, 0.5) - pct(direct, 0.5):+.2f} ms "
                  f"(x{pct(via, 0.5) / pct(direct, 0.5):.2f}), p99 {pct(via, 0.99) - pct(direct, 0.99):+.2f} ms; "
                  f"streaming p50 {pct(via_stream, 0.5) - pct(direct, 0.5):+.2f} ms")

            burst_rids: list[str] = []
            if switch is not None:  # the burst is traced: its spans are checked in the tracing phase
                switch.on = True
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(stream_once(http, url, f"burst {i}", burst_rids) for i in range(concurrent)),
                                        return_exceptions=True)
            wall = time.perf_counter() - t0
            if switch is not None:
                switch.on = False
            good = sum(1 for o in outs if o == (2, "42", True))
            lost = concurrent - good
            print(f"{concurrent} concurrent streaming requests: {good} complete (2 turn chunks + answer + [DONE]), "
                  f"{lost} lost, {wall:.2f} s wall, {concurrent / wall:.1f} runs/s")
            bad = [o for o in outs if o != (2, "42", True)]
            for o in bad[:5]:
                print(f"  e.g. {o!r}")

            after = await scrape(http, metrics_server.server_port)
            answered = sum(1 for o in outs if not isinstance(o, BaseException))  # an HTTP response came back
            n_gateway = 10 + 2 * runs + answered
            n_runs = 10 + runs + n_gateway
            chat = "trinity_gateway_http_requests_total{'route': '/v1/chat/completions', 'status': '200'}"
            expected = {"trinity_requests_total{}": n_runs,
                        "trinity_runs_total{'outcome': 'finished', 'stop_reason': 'accepted'}": n_runs,
                        "trinity_turns_total{}": 2 * n_runs, "trinity_run_seconds_count{}": n_runs,
                        "trinity_endpoint_requests_total{'endpoint': 'jobs', 'outcome': 'ok', "
                        "'service': 'trinity-coordinator'}": n_runs,
                        chat: n_gateway}
            for key, want in expected.items():
                got = after.get(key, 0.0) - before.get(key, 0.0)
                if got != want:
                    missing.append(f"{key}: {got:g} of {want}")
            jobs = await srv_stats(client_nc, "trinity-coordinator", "jobs") - jobs_before
            completions = await srv_stats(client_nc, "trinity-gateway", "chat_completions")
            if jobs != n_runs:
                missing.append(f"$SRV.STATS trinity-coordinator jobs: {jobs} of {n_runs}")
            if completions != n_gateway:
                missing.append(f"$SRV.STATS trinity-gateway chat_completions: {completions} of {n_gateway}")
            print(f"metrics: {n_runs} runs ({n_gateway} answered through the gateway; {concurrent - answered} "
                  f"connections failed before any response) expected in {len(expected)} metrics and "
                  f"2 $SRV.STATS endpoints: {'all present' if not missing else 'MISSING ' + '; '.join(missing)}")
            if trace_runs:
                assert collector is not None
                lost += await trace_phase(http, url, trace_runs, switch, provider, collector, burst_rids)
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()
        await gateway.drain(5.0)
        await coordinator.drain(5.0)
        await injector.drain(5.0)
        await fakes.drain()
        for c in conns:
            await c.close()
        srv.close()
    return 1 if lost or missing else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument("--trace-runs", type=int, default=0, help="tracing on/off requests each (0: skip)")
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.runs, a.concurrent, a.trace_runs)))
