"""NATS authentication with one user per actor and per-actor subject permissions (ops.nats_auth), on a real
nats-server: the allowed traffic of a whole coordination works, an agent's publish of a coordination result is
denied, a wrong password is refused, and no secret reaches the logs, the traces or the printed settings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

import run
from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import RoleInjectorActor
from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.render import TraceFilter
from bus import subjects
from bus.connection import connect
from bus.embedded import NatsServerProcess
from bus.errors import ConnectFailed
from config.coordinator import CoordinatorSettings
from config.nats import NatsSettings
from config.settings import load_settings, redacted
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.client import build_request, stored_result, submit, submit_job, tail
from ops.nats_auth import NatsUser, generate_users, inbox_prefix, render_authorization, write_auth_files
from schemas import RunStatus
from tests.e2e import procs
from tests.e2e.fake_services import fake_services

ACTORS = ["coordinator", "model_runtime", "provider_agents", "role_injector", "trace_sink", "client"]


@pytest.fixture(scope="module")
def users() -> list[NatsUser]:
    return generate_users(ACTORS, nodes={"coord-secure": "coordinator"})


@pytest.fixture(scope="module")
def secure_server(users: list[NatsUser]) -> Iterator[NatsServerProcess]:
    srv = NatsServerProcess.start(name="trinity-secure", config_text=render_authorization(users))
    yield srv
    srv.close()


def settings_for(srv: NatsServerProcess, users: list[NatsUser], name: str) -> NatsSettings:
    u = next(u for u in users if u.user == name)
    return NatsSettings(servers=[srv.url], user=u.user, password=u.password, embedded="never",
                        inbox_prefix=inbox_prefix(u.user))


async def test_per_actor_users_allow_a_run_and_deny_an_agent_publishing_results(
        secure_server: NatsServerProcess, users: list[NatsUser], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conns: dict[str, Client] = {}
    for name in ACTORS:
        conns[name] = await connect(settings_for(secure_server, users, name), name=name)
    runtime, agents = fake_services(conns["model_runtime"], conns["provider_agents"])
    injector = RoleInjectorActor(conns["role_injector"])
    coordinator = CoordinatorActor(conns["coordinator"], CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0))
    jsonl = tmp_path / "trace.jsonl"
    sink = TraceSinkActor(conns["trace_sink"], TraceSinkSettings(jsonl=JsonlSettings(path=str(jsonl))))
    actors = [runtime, agents, injector, coordinator, sink]
    for a in actors:
        await a.start()
    client = conns["client"]
    try:
        # allowed traffic: a whole run through the work queue and one through request/reply
        res = await submit_job(client, build_request("What is 17 + 25?", request_id="sec-1"), timeout=10.0)
        assert (res.status, res.answer) == (RunStatus.OK, "42")
        res2 = await submit(client, build_request("again", request_id="sec-2"), timeout=10.0)
        assert (res2.status, res2.answer) == (RunStatus.OK, "42")
        out = io.StringIO()  # the client user may also replay a run's trace
        shown = await tail(client, TraceFilter.parse(request_id="sec-1"), replay=True, follow=False, out=out,
                           idle_timeout=2.0, stop_on_finish=True)
        assert shown >= 6 and "run_finished" in out.getvalue()

        # denied: the agent process publishes a forged coordination result and a trace event
        seen: list[bytes] = []

        async def watch(msg: object) -> None:
            seen.append(msg.data)  # type: ignore[attr-defined]

        watcher = await client.subscribe(subjects.COORD_RESULT_ALL, cb=watch)
        await client.flush()
        agent_nc = conns["provider_agents"]
        await agent_nc.publish(subjects.coord_result("sec-forged"), msgspec.json.encode(res))
        await agent_nc.publish(subjects.trace("sec-1", "run_finished"), b"{}")
        await agent_nc.subscribe(subjects.COORD_REQUEST)  # nor may it take coordination requests
        await agent_nc.flush()
        for _ in range(100):
            if caplog.text.lower().count("permissions violation") >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert seen == []  # nothing reached the subject
        assert await stored_result(client, "sec-forged") is None  # and nothing was stored
        denied = [r.getMessage().lower() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
        assert any(f'publish to "{subjects.coord_result("sec-forged")}"' in m for m in denied), denied
        assert any('publish to "trinity.trace.sec-1.run_finished"' in m for m in denied), denied
        assert any(f'subscription to "{subjects.COORD_REQUEST}"' in m for m in denied), denied
        assert all("provider_agents" in m for m in denied)  # only the agent's connection was refused
        await watcher.unsubscribe()

        # the agent connection keeps serving after the violations
        res3 = await submit(client, build_request("still there?", request_id="sec-3"), timeout=10.0)
        assert res3.answer == "42"
        for _ in range(100):  # the trace sink (its own user) stored the three runs
            if jsonl.exists() and jsonl.read_text().count('"run_finished"') >= 3:
                break
            await asyncio.sleep(0.05)
        assert jsonl.read_text().count('"run_finished"') == 3
    finally:
        for a in reversed(actors):
            await a.drain(timeout=1.0)
        for nc in conns.values():
            await nc.close()

    # no secret anywhere: logs, the stored trace, stored results, printed settings
    secrets = [u.password.reveal() for u in users]
    settings = msgspec.structs.replace(load_settings(environ={}), nats=settings_for(secure_server, users, "client"))
    printed = [caplog.text, jsonl.read_text(), repr(settings), str(settings.nats), json.dumps(redacted(settings))]
    for text in printed:
        for secret in secrets:
            assert secret not in text
    assert '"password": "***"' in printed[-1]


async def test_a_wrong_password_is_refused_without_echoing_it(
        secure_server: NatsServerProcess, users: list[NatsUser], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = NatsSettings(servers=[secure_server.url], user="coordinator", password="not-the-password-1234")
    with pytest.raises(ConnectFailed) as ei:
        await connect(wrong, name="intruder")
    assert "authorization violation" in str(ei.value)
    assert "not-the-password-1234" not in str(ei.value) and "not-the-password-1234" not in caplog.text
    with pytest.raises(ConnectFailed):  # no credentials at all
        await connect(NatsSettings(servers=[secure_server.url]), name="anonymous")


async def test_cli_processes_with_credentials_from_files_never_log_them(
        secure_server: NatsServerProcess, users: list[NatsUser], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    """``run.py nats-auth`` files drive a real ``run.py node`` coordinator and ``run.py submit``; their logs (at
    DEBUG) hold no password."""
    files = write_auth_files(tmp_path / "auth", users, [secure_server.url])
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)  # owner-only
    conns = {name: await connect(settings_for(secure_server, users, name), name=name)
             for name in ("model_runtime", "provider_agents", "role_injector")}
    services = [*fake_services(conns["model_runtime"], conns["provider_agents"]),
                RoleInjectorActor(conns["role_injector"])]
    for svc in services:
        await svc.start()
    coordinator = await asyncio.to_thread(procs.node, "coord-secure", [secure_server.url], "coordinator", tmp_path,
                                          config=tmp_path / "auth" / "coordinator.toml")
    try:
        rc = await asyncio.to_thread(run.main, ["submit", "What is 17 + 25?", "--config",
                                                str(tmp_path / "auth" / "client.toml"), "--request-id", "sec-cli",
                                                "--log-level", "DEBUG"])
        assert rc == 0
        out = capfd.readouterr()
        assert "answer: 42" in out.out
        # the node running as the coordinator user answers its readiness to the client user
        rc = await asyncio.to_thread(run.main, ["status", "--config", str(tmp_path / "auth" / "client.toml"),
                                                "--node-id", "coord-secure", "--wait-ready", "--timeout", "10"])
        assert rc == 0
        assert "not permitted" not in coordinator.text().lower()
    finally:
        coordinator.stop()
        for svc in reversed(services):
            await svc.drain(timeout=1.0)
        for nc in conns.values():
            await nc.close()
    logs = coordinator.text() + out.err
    assert "actor coordinator serving" in logs and "nats" in logs.lower()
    for u in users:
        assert u.password.reveal() not in logs

