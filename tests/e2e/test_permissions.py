"""Each attack of issue 14 ("Why": forgery, ack hijack, JetStream API abuse, reading others' results, status
forgery), run AS the attacking NATS user against a real nats-server started with ``run.py nats-auth``'s
permissions: every attempt is refused (the server reports a permissions violation to the attacker) and the
legitimate path still works. The same attacks against an open server (the control) succeed, which shows each one
can fail: see ``test_the_attacks_succeed_without_permissions``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects
from ops.client import build_request, submit_job
from schemas import RunStatus
from tests.e2e import attacks
from tests.e2e.attacks import Lab


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(secure=True, tmp=tmp_path)
    yield lab
    await lab.close()


@pytest.fixture
async def client(lab: Lab) -> Client:
    """The system running with one user per actor; the operator client's connection."""
    return await lab.start_system()


def _refused(violations: list[str], *fragments: str) -> None:
    for f in fragments:
        assert any("permissions violation" in v and f in v for v in violations), (f, violations)


async def test_a_full_run_with_per_actor_users_still_answers(lab: Lab, client: Client) -> None:
    res = await attacks.legit_run(client, "legit-1")
    assert (res.status, res.answer, [t.decision.agent_id for t in res.turns]) == (RunStatus.OK, "42", [1, 2])
    assert await attacks.legit_status(lab, client)  # the coordinator user answers readiness of the node it runs


async def test_the_gateway_user_submits_jobs_and_streams_their_trace(lab: Lab, client: Client) -> None:
    """What the OpenAI-compatible gateway does on the bus (``actors/gateway``): subscribe a run's trace subjects,
    queue the job, wait for its result; and nothing more (it answers no agent call)."""
    gw = await lab.connect("gateway")
    kinds: list[str] = []

    async def on_event(msg: Msg) -> None:
        kinds.append(msg.subject.rsplit(".", 1)[1])

    await gw.nc.subscribe(subjects.trace_filter("gw-1"), cb=on_event)
    res = await submit_job(gw.nc, build_request("What is 17 + 25?", request_id="gw-1"), timeout=20.0)
    assert res.answer == "42"
    await gw.nc.flush()
    assert kinds[0] == "run_started" and "run_finished" in kinds
    await gw.nc.subscribe("trinity.agent.*.call", queue="agents")
    assert await gw.violated('subscription to "trinity.agent.*.call"')


@pytest.mark.parametrize("attacker", ["provider_agents", "model_runtime", "client", "tenant-bob", "gateway"])
async def test_no_user_can_snoop_reply_inboxes(lab: Lab, client: Client, attacker: str) -> None:
    out = await attacks.snoop(lab, client, attacker)
    assert (out.seen, out.succeeded) == (0, 0)
    assert out.attempts == len(lab.users)  # _INBOX.> and every other user's own inbox
    _refused(out.violations, 'subscription to "_inbox.>"', 'subscription to "_inbox_coordinator.>"')


async def test_provider_agents_cannot_take_every_agent_call_and_forge_answers(lab: Lab, client: Client) -> None:
    out = await attacks.forge_agents(lab, client)
    assert (out.attempts, out.succeeded, out.seen) == (3, 0, 0)
    assert out.notes == ["answer='42'"] * 3
    _refused(out.violations, 'subscription to "trinity.agent.*.call"')


async def test_model_runtime_cannot_take_every_route_and_forge_logits(lab: Lab, client: Client) -> None:
    out = await attacks.forge_routes(lab, client)
    assert (out.attempts, out.succeeded, out.seen) == (3, 0, 0)
    _refused(out.violations, 'subscription to "trinity.route.*.*"')


async def test_an_agent_user_cannot_terminate_job_deliveries(lab: Lab) -> None:
    out = await attacks.ack_hijack(lab, "provider_agents", jobs=4)
    assert (out.attempts, out.succeeded, out.seen) == (4, 0, 0)  # all 4 jobs still queued
    _refused(out.violations, 'subscription to "_inbox.>"', 'publish to "$js.ack.trinity_jobs.coordinators.')


async def test_no_user_may_purge_or_delete_what_it_does_not_own(lab: Lab) -> None:
    out = await attacks.js_abuse(lab)
    assert out.attempts == 19 and out.succeeded == 0, out.notes
    _refused(out.violations, 'publish to "$js.api.stream.purge.trinity_results"',
             'publish to "$js.api.stream.delete.trinity_trace"',
             'publish to "$js.api.consumer.delete.trinity_trace.trace-sink"',
             'publish to "$js.api.consumer.create.trinity_trace.trace-sink')


async def test_a_tenant_reads_only_its_own_results(lab: Lab, client: Client) -> None:
    out = await attacks.read_others_results(lab, client)
    assert out.notes == ["alice's own answer: '42'"]  # alice got hers, in her own inbox
    assert (out.seen, out.succeeded) == (0, 0)
    assert out.attempts == len(lab.users) + 1 + 2  # result subjects, every inbox but bob's, stored result, traces
    _refused(out.violations, 'subscription to "trinity.coord.result.>"', 'subscription to "_inbox_tenant-alice.>"',
             'publish to "$js.api.stream.msg.get.trinity_results"', 'publish to "$js.api.consumer.create.trinity_trace')


async def test_only_the_user_running_a_node_answers_its_status(lab: Lab, client: Client) -> None:
    out = await attacks.forge_status(lab, client)
    assert (out.attempts, out.succeeded) == (3, 0)
    _refused(out.violations, 'subscription to "trinity.node.status.node-a"',
             'subscription to "trinity.node.status.ghost"')


async def test_the_attacks_succeed_without_permissions(tmp_path: Path) -> None:
    """The control: on an open server the same code forges, hijacks, deletes and reads (so the tests above can
    fail)."""
    lab = Lab(secure=False, tmp=tmp_path)
    try:
        hijack = await attacks.ack_hijack(lab, "provider_agents", jobs=4)
        assert (hijack.succeeded, hijack.seen) == (4, 4)
        client = await lab.start_system()
        snooped = await attacks.snoop(lab, client, "provider_agents")
        assert snooped.succeeded == 1 and snooped.seen > 10
        forged = await attacks.forge_agents(lab, client)
        assert forged.succeeded == 3
        status = await attacks.forge_status(lab, client)
        assert status.succeeded == 3, status.notes
    finally:
        await lab.close()


def test_nats_auth_cli_writes_inbox_prefixes_node_owners_and_tenants(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import run
    from config.settings import load_settings

    out = tmp_path / "auth"
    assert run.main(["nats-auth", "--out", str(out), "--users", "coordinator,client,tenant-alice",
                     "--node", "node-1=coordinator"]) == 0
    conf = (out / "auth.conf").read_text()
    assert '"trinity.node.status.node-1"' in conf and conf.count("trinity.node.status.node-1") == 1
    assert '"_INBOX_tenant-alice.>"' in conf and conf.count('deny: ["_INBOX.>"]') == 3
    settings = load_settings(environ={}, config_file=out / "tenant-alice.toml")
    assert (settings.nats.user, settings.nats.inbox_prefix) == ("tenant-alice", "_INBOX_tenant-alice")
    assert run.main(["nats-auth", "--out", str(out), "--users", "client", "--node", "node-1=coordinator"]) == 2
    assert run.main(["nats-auth", "--out", str(out), "--node", "node-1"]) == 2
    assert "write ID=USER" in capsys.readouterr().err
