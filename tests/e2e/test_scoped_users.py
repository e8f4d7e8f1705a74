"""Per-host scoped users of ``run.py nats-auth`` (issue 14, "agents and runtimes may answer only their own
subjects"), against a real nats-server started with the generated ``auth.conf`` block.

An ``agents-<name>`` user serves only its listed agent ids, inside the ``agents`` queue group; a ``runtime-<id>``
user heartbeats, is placed and is routed to only as runtime ``<id>``. The attacks run AS the scoped user and
assert that the server refuses them (a permissions violation reported to the attacker's connection) and that the
same code succeeds on an open server; the positive tests run the real provider agents actor, model runtime actor
(tiny synthetic checkpoint) and fleet registry with the generated settings files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from actors.fleet_registry.actor import FleetRegistryActor
from actors.model_runtime.actor import ModelRuntimeActor
from actors.model_runtime.checkpoints import build_checkpoint, qwen3_tiny_config
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.tokenizer import RouterTokenizer
from actors.provider_agents.actor import ProviderAgentsActor
from actors.provider_agents.shared_receipts import BUCKET
from bus import rpc, subjects
from bus.connection import connect_options
from bus.errors import NoResponders
from config.fleet import FleetSettings
from config.model_runtime import ModelRuntimeSettings
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind, ProviderSettings
from config.settings import Settings, load_settings
from ops import nats_auth
from ops.nats_auth import write_auth_files
from schemas import AgentCallIntent, AgentCallReceipt, Message, Role, RouteLogits, RouteRequest
from schemas.fleet import (
    ControlOp,
    FleetStatus,
    FleetStatusRequest,
    Lease,
    PlacementKey,
    PlacementRequest,
    RuntimeControl,
    RuntimeControlReply,
)
from tests.e2e import attacks
from tests.e2e.attacks import Conn, Lab
from tests.waiting import until


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(secure=True, tmp=tmp_path)
    yield lab
    await lab.close()


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> RouterEngine:
    """The model runtime tests' tiny synthetic Qwen3 checkpoint (hidden 64, 2 layers) with the real tokenizer."""
    ckpt = build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", qwen3_tiny_config(), seed=7,
                            preset="qwen3-tiny-synthetic")
    return RouterEngine.load(ModelRuntimeSettings(num_threads=None), checkpoint_dir=ckpt,
                             tokenizer=RouterTokenizer.load())


def _refused(violations: list[str], *fragments: str) -> None:
    for f in fragments:
        assert any("permissions violation" in v and f in v for v in violations), (f, violations)


def _host_settings(lab: Lab, user: str) -> Settings:
    """The settings file ``nats-auth`` writes for ``user`` (servers: the lab's), loaded as a host would."""
    out = lab.tmp / "auth"
    write_auth_files(out, list(lab.users.values()), [lab.server.url])
    return load_settings(environ={}, config_file=out / f"{user}.toml")


async def _connect_as(lab: Lab, settings: Settings) -> Conn:
    """Connect with a host's ``[nats]`` settings, recording the permission violations the server reports."""
    violations: list[str] = []

    async def on_error(e: Exception) -> None:
        violations.append(str(e).lower())

    opts = connect_options(settings.nats, name=f"host-{settings.nats.user}") | {"allow_reconnect": False}
    nc = await nats.connect(**opts, error_cb=on_error)
    lab.conns.append(nc)
    return Conn(nc, violations)


def _tool_agents(ids: tuple[int, ...]) -> ProviderAgentsSettings:
    """Exact in-process arithmetic agents (no model, no network) with ``ids``."""
    return ProviderAgentsSettings(
        providers=[ProviderSettings(name="arithmetic", kind=ProviderKind.TOOL_ARITHMETIC)],
        agents=[AgentSpec(agent_id=i, name=f"arith-{i}", provider="arithmetic", model="simpleeval") for i in ids])


async def _call(nc: Client, agent_id: int, request_id: str) -> AgentCallReceipt:
    intent = AgentCallIntent(request_id=request_id, turn=0, agent_id=agent_id, role=Role.WORKER,
                             messages=[Message(role="user", content="What is 17 + 25?")])
    return await rpc.request(nc, subjects.agent_call(agent_id), intent, AgentCallReceipt, timeout=10.0)


async def test_an_agents_host_user_cannot_answer_another_hosts_agents_or_watch_its_own(lab: Lab) -> None:
    client = await lab.start_system()
    out = await attacks.forge_other_hosts_agents(lab, client)
    assert (out.attempts, out.succeeded, out.seen) == (3, 0, 0)
    assert out.notes == ["answer='42'"] * 3  # agents 1 and 2 answered by the real (fake) agents host
    _refused(out.violations, 'subscription to "trinity.agent.2.call" using queue "agents"',
             'subscription to "trinity.agent.2.call"', 'subscription to "trinity.agent.0.call"',
             'subscription to "trinity.agent.1.call"')
    assert not any('"trinity.agent.0.call" using queue' in v for v in out.violations)  # nothing else refused


async def test_a_runtime_user_cannot_heartbeat_or_be_routed_to_as_another_runtime(lab: Lab) -> None:
    out = await attacks.forge_other_runtimes(lab)
    assert (out.attempts, out.succeeded, out.seen) == (3, 0, 0), out.notes
    _refused(out.violations, 'publish to "trinity.runtime.heartbeat.r2"',
             'subscription to "trinity.runtime.route.r2"', 'subscription to "trinity.runtime.control.r2"')
    registry = next(a for a in lab.actors if isinstance(a, FleetRegistryActor))
    # the heartbeat naming r2 on r1's own subject passed the server; the registry itself dropped it
    assert registry.bad_heartbeats == 1
    assert [r.runtime_id for r in registry.fleet.heartbeats()] == ["r1"]


async def test_the_scoped_attacks_succeed_without_permissions(tmp_path: Path) -> None:
    """The control: on an open server the same code answers another host's agents, heartbeats as r2 and takes r2's
    route. The heartbeat naming r2 on r1's subject is refused there too: that check is the registry's own."""
    lab = Lab(secure=False, tmp=tmp_path)
    try:
        client = await lab.start_system()
        agents = await attacks.forge_other_hosts_agents(lab, client)
        assert (agents.attempts, agents.succeeded) == (3, 3)
        runtimes = await attacks.forge_other_runtimes(lab)
        assert (runtimes.attempts, runtimes.succeeded) == (3, 2)
        assert runtimes.notes == ["heartbeat on trinity.runtime.heartbeat.r2 listed r2",
                                  "route to r2 answered by forger"]
    finally:
        await lab.close()


async def test_an_agents_host_serves_only_the_agents_its_user_lists(lab: Lab) -> None:
    settings = _host_settings(lab, "agents-a")
    text = (lab.tmp / "auth" / "agents-a.toml").read_text()
    assert "may serve only agent ids 0, 1:" in text and settings.nats.inbox_prefix == "_INBOX_agents-a"
    host = await _connect_as(lab, settings)
    actor = ProviderAgentsActor(host.nc, _tool_agents((0, 1)))
    await actor.start()
    lab.actors.append(actor)
    assert actor.receipts is not None
    await until(actor.receipts.keeper.ready.is_set, what="the receipts bucket")
    coordinator = (await lab.connect("coordinator")).nc
    receipts = [await _call(coordinator, i, f"own-{i}") for i in (0, 1)]
    assert [(r.agent_id, r.content.split()[-1]) for r in receipts] == [(0, "42"), (1, "42")]
    # its receipts are shared with its replicas (the KV bucket, its own agents' keys)
    assert actor.stats()["shared_receipts"]["written"] == 2
    assert host.violations == []
    await actor.drain(timeout=1.0)
    lab.actors.remove(actor)
    # a host whose settings list an agent of another host: the server refuses that one subscription
    wrong = ProviderAgentsActor(host.nc, _tool_agents((0, 1, 2)))
    await wrong.start()
    lab.actors.append(wrong)
    assert await host.violated('subscription to "trinity.agent.2.call" using queue "agents"')
    assert (await _call(coordinator, 1, "own-again")).content.split()[-1] == "42"
    with pytest.raises(NoResponders):
        await _call(coordinator, 2, "theirs")


async def test_a_runtime_started_as_its_scoped_user_heartbeats_is_placed_and_routed_to(
        lab: Lab, tiny_engine: RouterEngine) -> None:
    settings = _host_settings(lab, "runtime-r1")
    assert (settings.nats.user, settings.model_runtime.runtime_id) == ("runtime-r1", "r1")
    fast = FleetSettings(heartbeat_interval_s=0.2, heartbeat_timeout_s=2.0)
    registry = FleetRegistryActor((await lab.connect("fleet_registry")).nc, fast, registry_id="reg-scoped")
    await registry.start()
    lab.actors.append(registry)
    host = await _connect_as(lab, settings)
    runtime = ModelRuntimeActor(host.nc, settings.model_runtime, engine=tiny_engine, fleet=fast)
    await runtime.start()
    lab.actors.append(runtime)
    coordinator = (await lab.connect("coordinator")).nc

    await until(lambda: "r1" in registry.fleet.runtimes, what="runtime r1's heartbeat at the registry")
    status = await rpc.request(coordinator, subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5.0)
    hb = status.runtime("r1")
    assert hb is not None and hb.spec.base_model == runtime.base_model and not hb.draining
    lease = await rpc.request(coordinator, subjects.FLEET_PLACE, PlacementRequest(
        key=PlacementKey(backend="torch", base_model=runtime.base_model), owner="coord-scoped"), Lease, timeout=5.0)
    assert lease.runtimes == ["r1"]
    logits = await rpc.request(coordinator, subjects.runtime_route("r1"), RouteRequest(
        "scoped-1", 0, [Message("user", "What is 17 + 25? Answer briefly.")]), RouteLogits, timeout=10.0)
    assert (logits.runtime_id, logits.token_count) == ("r1", 15)
    control = await rpc.request((await lab.connect("fleet_registry")).nc, subjects.runtime_control("r1"),
                                RuntimeControl(op=ControlOp.STATUS), RuntimeControlReply, timeout=5.0)
    assert control.runtime_id == "r1" and control.warm_adapters == ["base"]
    await host.nc.flush()
    assert host.violations == []
    assert registry.bad_heartbeats == 0


def test_nats_auth_cli_writes_scoped_users_and_refuses_bad_ones(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import run

    out = tmp_path / "auth"
    assert run.main(["nats-auth", "--out", str(out), "--users", "coordinator", "--agents-user", "gpu-a=1,0,01",
                     "--agents-user", "gpu-b=2", "--runtime-user", "r1", "--node", "node-r1=runtime-r1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["agents-gpu-a.toml", "agents-gpu-b.toml", "auth.conf",
                                                     "coordinator.toml", "runtime-r1.toml"]
    conf = (out / "auth.conf").read_text()
    gpu_a = next(line for line in conf.splitlines() if '"agents-gpu-a"' in line)
    assert '"trinity.agent.0.call agents", "trinity.agent.1.call agents", "$SRV.>", "_INBOX_agents-gpu-a.>"' in gpu_a
    # it publishes nothing but replies and its own agents' shared receipts
    assert ('publish: {allow: ["$JS.API.STREAM.CREATE.KV_TRINITY_RECEIPTS", "$JS.API.STREAM.INFO.KV_TRINITY_RECEIPTS", '
            '"$KV.TRINITY_RECEIPTS.*.a0.*", "$JS.API.DIRECT.GET.KV_TRINITY_RECEIPTS.$KV.TRINITY_RECEIPTS.*.a0.*", '
            '"$KV.TRINITY_RECEIPTS.*.a1.*", "$JS.API.DIRECT.GET.KV_TRINITY_RECEIPTS.$KV.TRINITY_RECEIPTS.*.a1.*"], '
            'deny: ') in gpu_a
    assert "trinity.agent.2" not in gpu_a and ".a2." not in gpu_a and "trinity." not in gpu_a.split("subscribe")[0]
    r1 = next(line for line in conf.splitlines() if '"runtime-r1"' in line)
    assert 'publish: {allow: ["trinity.runtime.heartbeat.r1"]' in r1
    assert '"trinity.runtime.route.r1", "trinity.runtime.control.r1"' in r1 and '"trinity.node.status.node-r1"' in r1
    settings = load_settings(environ={}, config_file=out / "runtime-r1.toml")
    assert (settings.nats.user, settings.nats.inbox_prefix, settings.model_runtime.runtime_id) == (
        "runtime-r1", "_INBOX_runtime-r1", "r1")
    assert "may serve only agent ids 2:" in (out / "agents-gpu-b.toml").read_text()
    capsys.readouterr()
    bad = {("--agents-user", "gpu-a"): "--agents-user 'gpu-a': write NAME=ID,ID,...",
           ("--agents-user", "gpu-a=1,x"): "--agents-user 'gpu-a=1,x': agent id 'x': agent ids are whole numbers >= 0",
           ("--agents-user", "gpu.a=1"): "--agents-user 'gpu.a=1': agents user name 'gpu.a' cannot be a subject token",
           ("--runtime-user", "r>"): "--runtime-user 'r>': runtime_id 'r>' cannot be a subject token",
           ("--users", "agents-z"): "user 'agents-z' needs the agent ids it may serve (nats-auth --agents-user z=0,1)"}
    for flags, message in bad.items():
        assert run.main(["nats-auth", "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()


async def test_an_agents_host_user_reads_and_writes_only_its_own_agents_receipts(lab: Lab) -> None:
    """The shared receipts (``TRINITY_RECEIPTS``) are keyed by agent id: ``agents-a`` (ids 0, 1) cannot plant a
    receipt another host's agent 2 would answer with, nor read one of agent 2's, nor purge or delete the bucket
    (writing its own agents' keys, a purge of one of them included, is what it does anyway)."""
    host = await _connect_as(lab, _host_settings(lab, "agents-a"))
    actor = ProviderAgentsActor(host.nc, _tool_agents((0, 1)))
    await actor.start()
    lab.actors.append(actor)
    assert actor.receipts is not None
    await until(actor.receipts.keeper.ready.is_set, what="the receipts bucket")
    kv = await host.nc.jetstream().key_value(BUCKET)
    await kv.put("agents.a1.0123abcd", b"{}")  # its own agent's key: allowed
    for key in ("agents.a2.0123abcd", "other.a2.0123abcd"):
        with pytest.raises(nats.errors.Error):
            await kv.put(key, b'{"request_id": "x", "turn": 0, "agent_id": 2, "content": "PLANTED"}')
    with pytest.raises(nats.errors.Error):
        await kv.get("agents.a2.0123abcd")
    js = host.nc.jetstream()
    for destroy in (lambda: js.purge_stream(f"KV_{BUCKET}"), lambda: js.delete_key_value(BUCKET)):
        with pytest.raises(nats.errors.Error):
            await destroy()
    assert await host.violated('publish to "$kv.trinity_receipts.agents.a2.0123abcd"')  # (reported in lower case)
    assert await host.violated('publish to "$js.api.direct.get.kv_trinity_receipts.$kv.trinity_receipts.agents.a2')
    assert BUCKET == nats_auth._RECEIPTS_BUCKET  # the permissions are cut for the bucket the agents use
