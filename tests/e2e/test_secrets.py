"""Secrets never leave a process (issue 14, deliverable 6), checked as an attacker who reads every place.

A provider's ``base_url`` carries a password (``http://alice:<pw>@127.0.0.1:<port>/v1``), a dead provider's
another, the question carries an AWS key id and a ``password=``, and the (real, loopback) provider echoes the
password in its answer. Then we read: the reply to the request, the stored result (raw bytes of the results
stream), the raw trace stream (what ``tail`` and every sink read), the trace sink's JSONL, ``tail``'s output, an
error reply from the dead agent, and every log line (httpx's request lines included, with ``run.py``'s log
scrubber installed). None holds any of the secrets; the run itself still answers.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

import run
from actors.coordinator.actor import CoordinatorActor
from actors.provider_agents.actor import ProviderAgentsActor
from actors.role_injector.actor import RoleInjectorActor
from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.render import TraceFilter
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.errors import RemoteError
from bus.rpc import request
from bus.service import ActorService, Endpoint, RequestContext
from config.coordinator import CoordinatorSettings
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind, ProviderSettings, RetrySettings
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.client import build_request, submit, submit_job, tail
from ops.log_scrub import install_log_scrubber
from schemas import AgentCallIntent, AgentCallReceipt, Message, Role, RouteLogits, RouteRequest, RunStatus
from tests.coordinator.fakes import make_logits
from tests.provider_agents.loopback import LoopbackServer, Reply

URL_PW = "UrlPassw0rd-4471"
DEAD_PW = "DeadPassw0rd-9902"
Q_PW = "hunter2-Q9x7"
AWS = "AKIAIOSFODNN7EXAMPLE"
SECRETS = (URL_PW, DEAD_PW, Q_PW, AWS)
QUESTION = f"My key is {AWS} and password={Q_PW}. What is 17 + 25?"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def provider() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as srv:
        srv.script(Reply(200, {"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": f"ACCEPT 42 (and your password={Q_PW})"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}}))
        yield srv


def _runtime(nc: Client) -> ActorService:
    """Turn 0: agent 1 (the good provider) as Worker; then agent 0 (the dead one) as Verifier, which fails over
    to agent 1."""
    async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
        agent, role = (1, Role.WORKER) if req.turn == 0 else (0, Role.VERIFIER)
        return make_logits(req.request_id, req.turn, agent, role)

    return ActorService(nc, name="secret-runtime", endpoints=[
        Endpoint("route", subjects.route("torch", "base"), RouteRequest, route, queue_group=subjects.QUEUE_RUNTIMES)])


async def test_no_secret_reaches_any_stored_published_or_logged_place(
        fresh_nats_server: NatsServerProcess, provider: LoopbackServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scrubber = install_log_scrubber()  # what run.py does at start
    host = provider.url.split("://", 1)[1]
    agents_settings = ProviderAgentsSettings(
        providers=[ProviderSettings(name="good", kind=ProviderKind.OPENAI, base_url=f"http://alice:{URL_PW}@{host}/v1",
                                    retry=RetrySettings(max_attempts=1)),
                   ProviderSettings(name="dead", kind=ProviderKind.OPENAI,
                                    base_url=f"http://bob:{DEAD_PW}@127.0.0.1:{_closed_port()}/v1",
                                    retry=RetrySettings(max_attempts=1))],
        agents=[AgentSpec(agent_id=1, name="good", provider="good", model="m"),
                AgentSpec(agent_id=0, name="dead", provider="dead", model="m")])
    conns = [await nats.connect(fresh_nats_server.url) for _ in range(5)]
    jsonl = tmp_path / "trace.jsonl"
    actors = [_runtime(conns[0]), ProviderAgentsActor(conns[1], agents_settings), RoleInjectorActor(conns[2]),
              CoordinatorActor(conns[3], CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=5.0)),
              TraceSinkActor(conns[4], TraceSinkSettings(jsonl=JsonlSettings(path=str(jsonl))))]
    client = await nats.connect(fresh_nats_server.url)
    places: dict[str, str] = {}
    try:
        for a in actors:
            await a.start()
        # the legitimate path still answers (the provider's password-bearing URL works)
        res = await submit(client, build_request(QUESTION, request_id="sec-req", max_turns=3), timeout=30.0)
        job = await submit_job(client, build_request(QUESTION, request_id="sec-job", max_turns=3), timeout=30.0)
        assert (res.status, job.status) == (RunStatus.OK, RunStatus.OK)
        assert res.answer is not None and res.answer.startswith("ACCEPT 42")
        failures = [f for t in res.turns for f in t.failures]
        assert failures and "[REDACTED]" in failures[0].message  # the dead URL was named, without its password
        places["request reply"] = msgspec.json.encode(res).decode()
        raw = await client.jetstream().get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result("sec-job"))
        places["results stream"] = raw.data.decode()

        # an error reply, straight from the dead agent
        with pytest.raises(RemoteError) as ei:
            await request(client, subjects.agent_call(0), AgentCallIntent(
                request_id="sec-direct", turn=0, agent_id=0, role=Role.WORKER,
                messages=[Message(role="user", content="hi")]), AgentCallReceipt, timeout=10.0)
        places["error reply"] = msgspec.json.encode(ei.value.reply).decode() + str(ei.value)

        # the raw trace stream, as tail and any sink read it
        sub = await client.jetstream().subscribe(subjects.TRACE_ALL, ordered_consumer=True,
                                                 stream=subjects.TRACE_STREAM)
        events: list[str] = []
        while True:
            try:
                events.append((await sub.next_msg(timeout=1.0)).data.decode())
            except nats.errors.TimeoutError:
                break
        assert len(events) >= 12
        places["trace stream"] = "\n".join(events)
        out = io.StringIO()
        await tail(client, TraceFilter.parse(request_id="sec-job"), replay=True, follow=False, out=out,
                   idle_timeout=1.0)
        places["tail"] = out.getvalue()
        for _ in range(100):
            if jsonl.exists() and jsonl.read_text().count('"run_finished"') >= 2:
                break
            await asyncio.sleep(0.05)
        places["jsonl"] = jsonl.read_text()
        assert places["jsonl"].count('"run_finished"') == 2
    finally:
        for a in reversed(actors):
            await a.drain(timeout=1.0)
        for nc in [*conns, client]:
            await nc.close()
        for h in logging.getLogger().handlers:
            h.removeFilter(scrubber)
    places["logs"] = caplog.text
    assert "HTTP Request: POST http://[REDACTED]@" in caplog.text  # httpx's INFO line, scrubbed
    leaks = {(where, s) for where, text in places.items() for s in SECRETS if s in text}
    assert leaks == set()
    assert all(text for text in places.values())


def test_a_nats_url_with_credentials_is_never_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """``--nats nats://user:pass@...`` on a command line: the connect error names the server, not the password."""
    port = _closed_port()
    rc = run.main(["status", "--nats", f"nats://ops:{URL_PW}@127.0.0.1:{port}", "--set", 'nats.embedded="never"',
                   "--set", "nats.connect_timeout_s=0.2", "--log-level", "DEBUG"])
    out = capfd.readouterr()
    assert rc != 0
    assert f"127.0.0.1:{port}" in out.err and URL_PW not in out.out + out.err
