"""One distributed trace per request across actor processes, exported over OTLP/HTTP to a collector started by
the test.

Four ``run.py node`` processes on one nats-server: the gateway, the coordinator with a role injector, the
model runtime (a tiny synthetic checkpoint) and the provider agents (an OpenAI-compatible provider on a
loopback HTTP server). Each has ``[tracing] exporter = "otlp"`` pointing at a loopback server that records the
OTLP bodies; they are decoded with ``opentelemetry-proto``. Requests go through the gateway's HTTP API, one of
them with the caller's own ``traceparent``. Checked per request: one trace id (the caller's, when it sent one),
spans from each of the four processes, and every parent link (gateway request -> coordinator run -> turn ->
route / role inject / agent call CLIENT spans -> runtime route / role inject / agent call SERVER spans ->
provider HTTP client span).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bus.embedded import NatsServerProcess, free_port
from tests.e2e.otlp import Received, decode
from tests.e2e.procs import Proc, node
from tests.provider_agents.loopback import LoopbackServer, Reply

OPENAI_REPLY = {"choices": [{"message": {"role": "assistant", "content": "ACCEPT. The answer is 4."},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PROCESSES = {"sp-gw": "gateway", "sp-co": "coordinator,role_injector", "sp-rt": "model_runtime",
             "sp-ag": "provider_agents"}


def _config(path: Path, *, otlp: str, provider: str, checkpoint: Path, gateway_port: int) -> Path:
    agents = ",\n".join(f'  {{ agent_id = {i}, name = "loop-{i}", provider = "loop", model = "m{i}" }}'
                        for i in range(7))
    path.write_text(f"""
[tracing]
exporter = "otlp"
otlp_endpoint = "{otlp}"
batch_delay_ms = 100

[model_runtime]
checkpoint_dir = "{checkpoint}"
factor_cache_dir = "{checkpoint.parent / 'factors'}"
num_threads = 1

[fleet]
placement = "subject"

[coordinator]
role_inject_mode = "bus"
route_timeout_s = 30.0
agent_timeout_s = 30.0

[gateway]
port = {gateway_port}

[provider_agents]
agents = [
{agents}
]

[[provider_agents.providers]]
name = "loop"
kind = "openai"
base_url = "{provider}/v1"
api_key = "sk-spans-0123456789"
retry = {{ max_attempts = 1 }}
""")
    return path


@dataclass
class Deployment:
    gateway: str
    collector: LoopbackServer
    provider: LoopbackServer
    procs: list[Proc]
    server: NatsServerProcess
    logs: Path
    config: Path
    settings: list[str]

    def spans(self) -> list[Received]:
        return decode(self.collector.requests)

    async def start(self, name: str, actors: str) -> Proc:
        p = await asyncio.to_thread(node, name, [self.server.url], actors, self.logs, *self.settings,
                                    config=self.config)
        self.procs.append(p)
        return p


@asynccontextmanager
async def deploy(server: NatsServerProcess, tmp_path: Path, processes: dict[str, str],
                 *settings: str) -> AsyncIterator[Deployment]:
    """``processes`` (node id -> actors) as ``run.py node`` processes exporting to a collector stand-in."""
    from actors.model_runtime.checkpoints import build_checkpoint, qwen3_tiny_config

    ckpt = await asyncio.to_thread(build_checkpoint, tmp_path / "tiny", qwen3_tiny_config(), seed=7,
                                   preset="qwen3-tiny-synthetic")
    async with LoopbackServer() as collector, LoopbackServer() as provider:
        collector.script(Reply(200, b""))
        provider.script(Reply(200, OPENAI_REPLY))
        port = free_port()
        config = _config(tmp_path / "node.toml", otlp=collector.url, provider=provider.url, checkpoint=ckpt,
                         gateway_port=port)
        d = Deployment(f"http://127.0.0.1:{port}", collector, provider, [], server, tmp_path, config,
                       list(settings))
        try:
            for name, actors in processes.items():  # started one by one: 2 cores, heavy imports
                await d.start(name, actors)
            yield d
        finally:
            for p in reversed(d.procs):
                await asyncio.to_thread(p.stop)


@pytest.fixture
async def deployment(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with deploy(fresh_nats_server, tmp_path, PROCESSES) as d:
        yield d


async def _complete(client: httpx.AsyncClient, base: str, question: str, traceparent: str | None = None) -> str:
    headers = {"traceparent": traceparent} if traceparent else {}
    r = await client.post(f"{base}/v1/chat/completions", headers=headers, timeout=120.0,
                          json={"model": "trinity", "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.headers["x-trinity-request-id"]


def _one(spans: list[Received], name: str) -> Received:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


async def test_one_trace_per_request_across_actor_processes(deployment: Deployment) -> None:
    d = deployment
    async with httpx.AsyncClient() as client:
        rids = [await _complete(client, d.gateway, f"What is {i} + {i}?") for i in range(2)]
        rids.append(await _complete(client, d.gateway, "What is 2 + 2?",
                                    traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"))

    def gateway_span(rid: str) -> Received | None:
        return next((s for s in d.spans() if s.name == "POST /v1/chat/completions"
                     and s.attributes.get("trinity.request_id") == rid), None)

    def complete(rid: str) -> bool:  # the run's spans from every process arrived
        gw = gateway_span(rid)
        if gw is None:
            return False
        names = collections.Counter(s.name for s in d.spans() if s.trace_id == gw.trace_id)
        turns = names["trinity.coordinator.turn"]
        return names["trinity.coordinator.run"] == 1 and turns > 0 and all(
            names[n] == turns for n in ("trinity.runtime.route", "trinity.agent.call", "POST", "trinity.role.inject"))

    for _ in range(600):  # hang guard only: spans are exported every 100 ms
        if all(complete(r) for r in rids):
            break
        await asyncio.sleep(0.05)
    spans = d.spans()
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)  # each span exported once
    traces = set()
    for rid in rids:
        gw = gateway_span(rid)
        assert gw is not None, f"no gateway span for {rid}"
        trace = [s for s in spans if s.trace_id == gw.trace_id]
        traces.add(gw.trace_id)
        # every span of the request is in this one trace, and nothing of another request is
        assert {s.attributes["trinity.request_id"] for s in trace if "trinity.request_id" in s.attributes} == {rid}
        assert all(s.trace_id == gw.trace_id for s in spans if s.attributes.get("trinity.request_id") == rid)
        assert {s.process for s in trace} == set(PROCESSES), collections.Counter(s.process for s in trace)
        assert all(s.resource["service.name"] == "trinity-nats" for s in trace)
        for s in trace:  # every parent is in the trace, except the gateway's (the caller's or none)
            if s.span_id != gw.span_id:
                assert s.parent_span_id in by_id and by_id[s.parent_span_id].trace_id == gw.trace_id, s.name

        run = _one(trace, "trinity.coordinator.run")
        assert (run.process, run.parent_span_id) == ("sp-co", gw.span_id)
        assert gw.process == "sp-gw" and gw.attributes["http.response.status_code"] == 200
        turns = [s for s in trace if s.name == "trinity.coordinator.turn"]
        assert turns and all(t.parent_span_id == run.span_id for t in turns)
        assert sorted(t.attributes["trinity.turn"] for t in turns) == list(range(len(turns)))
        assert run.attributes["trinity.turns"] == len(turns)
        turn_of = {t.span_id: t.attributes["trinity.turn"] for t in turns}
        routes = [s for s in trace if s.name == "trinity.runtime.route"]
        agents = [s for s in trace if s.name == "trinity.agent.call"]
        https = [s for s in trace if s.name == "POST"]
        injects = [s for s in trace if s.name == "trinity.role.inject"]
        assert len(routes) == len(turns) and len(agents) == len(turns) and len(https) == len(turns)
        assert len(injects) == len(turns)
        for i in injects:  # the role injector's SERVER span under the coordinator's CLIENT span of its turn
            client_span = by_id[i.parent_span_id]
            assert (i.process, client_span.name) == ("sp-co", "trinity.coordinator.role_inject")
            assert turn_of[client_span.parent_span_id] == i.attributes["trinity.turn"]
            assert i.attributes["trinity.role_pack"]
        for r in routes:
            client_span = by_id[r.parent_span_id]
            assert (r.process, client_span.name, client_span.process) == ("sp-rt", "trinity.coordinator.route",
                                                                           "sp-co")
            assert turn_of[client_span.parent_span_id] == r.attributes["trinity.turn"]
            assert r.attributes["trinity.batch_size"] >= 1 and r.attributes["trinity.token_count"] >= 2
        for a in agents:
            client_span = by_id[a.parent_span_id]
            assert (a.process, client_span.name) == ("sp-ag", "trinity.coordinator.agent_call")
            assert turn_of[client_span.parent_span_id] == a.attributes["trinity.turn"]
            assert (a.attributes["trinity.prompt_tokens"], a.attributes["trinity.completion_tokens"]) == (5, 6)
        for h in https:  # OpenTelemetry's httpx instrumentation, under the agent call
            assert h.process == "sp-ag" and by_id[h.parent_span_id].name == "trinity.agent.call"
            assert str(h.attributes.get("url.full", h.attributes.get("http.url", ""))).endswith("/chat/completions")
        # the turn spans carry what the trace sink used to rebuild from events
        assert all("trinity.agent_id" in t.attributes and "trinity.role" in t.attributes for t in turns)
    assert len(traces) == len(rids)  # one trace id per request
    caller = gateway_span(rids[-1])
    assert caller is not None and (caller.trace_id, caller.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    # the provider saw the agent call's trace context
    sent = [r.headers.get("traceparent", "") for r in d.provider.requests]
    assert sent and all(tp.split("-")[1] in traces for tp in sent)
    print(json.dumps({"requests": len(rids), "spans": len(spans),
                      "per_process": collections.Counter(s.process for s in spans)}))


async def test_a_redelivered_run_gets_a_fresh_run_span_in_the_same_trace(fresh_nats_server: NatsServerProcess,
                                                                          tmp_path: Path) -> None:
    """The coordinator is SIGKILLed while its first agent call waits on the provider; after the ack wait the job
    goes to a second coordinator. The request's trace holds one run span, the second coordinator's, whose turn
    spans are short: nothing stretches over the ack wait."""
    first = {"sp-gw": "gateway", "sp-rt": "model_runtime", "sp-ag": "provider_agents",
             "sp-co1": "coordinator,role_injector"}
    async with deploy(fresh_nats_server, tmp_path, first, "coordinator.jobs_ack_wait_s=2") as d:
        d.provider.script(Reply(200, OPENAI_REPLY, delay=30.0), Reply(200, OPENAI_REPLY))  # the first call hangs
        async with httpx.AsyncClient() as client:
            call = asyncio.create_task(_complete(client, d.gateway, "What is 3 + 3?"))
            for _ in range(1200):  # hang guard only
                if d.provider.requests or call.done():
                    break
                await asyncio.sleep(0.05)
            assert d.provider.requests and not call.done()
            for _ in range(600):  # the first delivery's finished route span reached the collector (hang guard)
                if any(s.process == "sp-co1" and s.name == "trinity.coordinator.route" for s in d.spans()):
                    break
                await asyncio.sleep(0.05)
            victim = next(p for p in d.procs if p.name == "sp-co1")
            victim.kill()
            await d.start("sp-co2", "coordinator,role_injector")
            rid = await call

        def trace_of() -> list[Received]:
            gw = [s for s in d.spans() if s.attributes.get("trinity.request_id") == rid
                  and s.name == "POST /v1/chat/completions"]
            return [s for s in d.spans() if gw and s.trace_id == gw[0].trace_id]

        for _ in range(600):  # hang guard only
            if any(s.name == "trinity.coordinator.run" for s in trace_of()):
                break
            await asyncio.sleep(0.05)
        spans = trace_of()
        runs = [s for s in spans if s.name == "trinity.coordinator.run"]
        assert [r.process for r in runs] == ["sp-co2"]  # the killed coordinator's run span never ended
        gw = _one(spans, "POST /v1/chat/completions")
        assert runs[0].parent_span_id == gw.span_id
        turns = [s for s in spans if s.name == "trinity.coordinator.turn"]
        assert turns and all(t.process == "sp-co2" and t.parent_span_id == runs[0].span_id for t in turns)
        assert sorted(t.attributes["trinity.turn"] for t in turns) == list(range(len(turns)))
        # the run span starts with the redelivery (after the ack wait), so neither it nor its turns cover the gap
        assert runs[0].start_ns > gw.start_ns + 2e9
        assert all(t.start_ns >= runs[0].start_ns and t.end_ns <= runs[0].end_ns for t in turns)
        # the first delivery's finished spans (its route) are in the same trace, from the killed process
        assert any(s.process == "sp-co1" and s.name == "trinity.coordinator.route" for s in spans)
