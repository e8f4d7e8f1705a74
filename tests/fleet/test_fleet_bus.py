"""Registry, runtimes and the coordinator's placement client on a real NATS server (one process).

Runtimes here are in-process actors on their own connections; ``test_fleet_processes.py`` runs them as
separate processes against a 3-node cluster.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import nats
import pytest
import torch
from nats.aio.client import Client
from prometheus_client import REGISTRY

from actors.coordinator.actor import CoordinatorActor
from actors.coordinator.errors import RouteFailed
from actors.coordinator.placement import PlacementClient
from actors.coordinator.state_machine import CallContext
from actors.fleet_registry.actor import FleetRegistryActor
from actors.model_runtime.actor import ModelRuntimeActor
from actors.model_runtime.engine import RouterEngine
from bus import rpc, subjects
from bus.embedded import NatsServerProcess
from bus.errors import NoResponders, RemoteError
from bus.provenance import Provenance
from config.coordinator import CoordinatorSettings
from config.fleet import FleetSettings
from config.model_runtime import ModelRuntimeSettings
from config.nats import NatsSettings
from config.settings import load_settings
from ops.node import FACTORIES
from schemas.common import Role
from schemas.fleet import ControlOp, FleetStatus, FleetStatusRequest, RuntimeControl, RuntimeControlReply
from schemas.routing import RouteLogits, RouteRequest
from schemas.wire import ErrorCode
from tests.fleet.support import EngineMaker, Fleet
from tests.model_runtime.transcripts import random_transcript

#: Packed batches vs one-at-a-time reference: float32 sums in another order.
ATOL = 1e-4

FAST = FleetSettings(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, attempt_timeout_s=5.0)


class Harness:
    """Registry + runtimes + one placement client, each on its own connection; closed by the fixture."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list[Client] = []
        self.runtimes: dict[str, ModelRuntimeActor] = {}
        self.registry: FleetRegistryActor | None = None
        self.client: PlacementClient | None = None

    async def conn(self) -> Client:
        nc = await nats.connect(self.url)
        self.conns.append(nc)
        return nc

    async def start_registry(self, settings: FleetSettings) -> FleetRegistryActor:
        self.registry = FleetRegistryActor(await self.conn(), settings, registry_id="reg-test")
        await self.registry.start()
        return self.registry

    async def start_runtime(self, runtime_id: str, engine: RouterEngine, settings: FleetSettings,
                            **overrides: object) -> ModelRuntimeActor:
        s = ModelRuntimeSettings(runtime_id=runtime_id, **overrides)  # type: ignore[arg-type]
        actor = ModelRuntimeActor(await self.conn(), s, engine=engine, fleet=settings)
        await actor.start()
        self.runtimes[runtime_id] = actor
        return actor

    async def start_client(self, settings: FleetSettings) -> PlacementClient:
        self.client = PlacementClient(await self.conn(), settings, owner="coord-test")
        return self.client

    async def status(self) -> FleetStatus:
        return await rpc.request(self.conns[-1], subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5)

    async def wait_for(self, pred: Callable[[FleetStatus], bool]) -> FleetStatus:
        for _ in range(200):
            st = await self.status()
            if pred(st):
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"fleet never reached the expected state: {st}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        for actor in self.runtimes.values():
            if actor.runtime is not None:
                await actor.drain(timeout=2)
        if self.registry is not None:
            await self.registry.drain(timeout=2)
        for nc in self.conns:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def harness(fresh_nats_server: NatsServerProcess) -> AsyncIterator[Harness]:
    h = Harness(fresh_nats_server.url)
    yield h
    await h.close()


def _reference(engine: RouterEngine) -> Callable[[RouteRequest], RouteLogits]:
    def run(req: RouteRequest) -> RouteLogits:
        return engine.route(RouteRequest(req.request_id, req.turn, req.messages, adapter=req.adapter))

    return run


def _close(a: list[float], b: list[float]) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)


async def test_identity_is_the_weights_and_an_adapter_is_loaded_once_then_reused(
        harness: Harness, fleet_models: Fleet, make_engine: EngineMaker) -> None:
    settings = msgspec.structs.replace(FAST, adapter_catalog=fleet_models.catalog)
    ref = make_engine("a")
    token = next(iter(fleet_models.a.adapters))
    ref.load_adapter(str(fleet_models.a.adapters[token]))
    loads_before = REGISTRY.get_sample_value("trinity_adapter_loads_total", {"outcome": "ok"}) or 0.0
    await harness.start_registry(settings)
    rt1 = await harness.start_runtime("rt-1", make_engine("a"), settings)
    rt2 = await harness.start_runtime("rt-2", make_engine("a"), settings)
    rt3 = await harness.start_runtime("rt-3", make_engine("b"), settings)
    # Identity is a digest of the weights: equal for two engines on one checkpoint, different for another seed.
    assert rt1.base_model == rt2.base_model == fleet_models.a.identity != rt3.base_model == fleet_models.b.identity
    await harness.wait_for(lambda st: len(st.runtimes) == 3)
    client = await harness.start_client(settings)

    rng = random.Random(5)
    reqs = [RouteRequest(f"r{i}", 0, random_transcript(rng, (1, 6)), adapter=token,
                         base_model=fleet_models.a.identity) for i in range(24)]
    outs = await asyncio.gather(*(client.route(r, 20.0) for r in reqs))
    expected = _reference(ref)
    for req, out in zip(reqs, outs, strict=True):
        assert out.request_id == req.request_id and out.adapter == token and out.runtime_id in ("rt-1", "rt-2")
        want = expected(req)
        assert _close(out.agent_logits, want.agent_logits) and _close(out.role_logits, want.role_logits)
    holders = [a for a in (rt1, rt2) if token in a.warm_adapters()]
    assert len(holders) == 1 and holders[0].engine is not None and holders[0].engine.adapter_loads == 1
    assert rt3.warm_adapters() == ["base"]  # another base model's runtime is never touched
    assert harness.registry is not None and harness.registry.ensures == 1
    assert client.counters.placements == 1  # concurrent routes shared one placement, then the cached lease

    again = await asyncio.gather(*(client.route(RouteRequest(f"s{i}", 0, r.messages, adapter=token,
                                                             base_model=fleet_models.a.identity), 20.0)
                                   for i, r in enumerate(reqs[:8])))
    assert {o.runtime_id for o in again} == {holders[0].runtime_id}  # the warm runtime serves the next ones
    assert harness.registry.ensures == 1 and client.counters.placements == 1
    st = await harness.status()
    hb = st.runtime(holders[0].runtime_id)
    assert hb is not None and hb.adapter_loads == 1 and token in hb.warm_adapters
    assert REGISTRY.get_sample_value("trinity_adapter_loads_total", {"outcome": "ok"}) == loads_before + 1
    assert [lease.owner for lease in st.leases] == ["coord-test"]


async def test_wrong_base_unknown_adapter_and_bad_control_are_typed(
        harness: Harness, fleet_models: Fleet, make_engine: EngineMaker) -> None:
    await harness.start_registry(FAST)
    rt = await harness.start_runtime("rt-1", make_engine("a"), FAST)
    await harness.wait_for(lambda st: len(st.runtimes) == 1)
    client = await harness.start_client(FAST)
    msgs = random_transcript(random.Random(1), (1, 3))
    nc = harness.conns[-1]
    with pytest.raises(RemoteError) as wrong_base:
        await rpc.request(nc, subjects.runtime_route("rt-1"),
                          RouteRequest("x", 0, msgs, base_model=fleet_models.b.identity), RouteLogits, timeout=5)
    assert wrong_base.value.code is ErrorCode.NOT_FOUND and fleet_models.a.identity in wrong_base.value.message
    with pytest.raises(RouteFailed) as unknown:
        await client.route(RouteRequest("y", 0, msgs, adapter="no-such-adapter"), 5.0)
    assert unknown.value.code == "not_found" and "adapter_catalog" in unknown.value.message
    with pytest.raises(RouteFailed) as no_base:
        await client.route(RouteRequest("z", 0, msgs, base_model=fleet_models.b.identity), 5.0)
    assert no_base.value.code == "unavailable"
    raw = await nc.request(subjects.runtime_control("rt-1"), b'{"op": "explode"}', timeout=5)
    assert raw.headers is not None and raw.headers.get("Trinity-Error") == "malformed"
    ok = await client.route(RouteRequest("w", 0, msgs), 5.0)  # still serving
    assert ok.runtime_id == "rt-1" and ok.adapter == "base" and rt.runtime is not None


async def test_overload_gets_a_typed_reply_at_once(harness: Harness, make_engine: EngineMaker) -> None:
    settings = msgspec.structs.replace(FAST, attempt_timeout_s=60.0)
    await harness.start_registry(settings)
    await harness.start_runtime("rt-1", make_engine("a", max_queue=1, max_batch=1, batch_window_ms=20.0), settings,
                                max_queue=1, max_batch=1, batch_window_ms=20.0)
    await harness.wait_for(lambda st: len(st.runtimes) == 1)
    client = await harness.start_client(settings)
    rng = random.Random(2)

    async def timed(i: int) -> tuple[float, RouteLogits | RouteFailed]:
        t0 = time.monotonic()
        try:
            req = RouteRequest(f"o{i}", 0, random_transcript(rng, (2, 4)))
            out: RouteLogits | RouteFailed = await client.route(req, 120.0)
        except RouteFailed as e:
            out = e
        return time.monotonic() - t0, out

    results = await asyncio.gather(*(timed(i) for i in range(40)))
    refused = [(dt, r) for dt, r in results if isinstance(r, RouteFailed)]
    served = [r for _, r in results if isinstance(r, RouteLogits)]
    assert refused and served and len(refused) + len(served) == 40
    assert {r.code for _, r in refused} == {"overloaded"} and all(r.retryable for _, r in refused)
    # "At once": no refusal waited for the 60 s attempt timeout or the 120 s deadline.
    assert max(dt for dt, _ in refused) < settings.attempt_timeout_s / 2
    assert client.counters.failover_busy >= len(refused)


async def test_lru_eviction_under_the_memory_budget(harness: Harness, fleet_models: Fleet,
                                                     make_engine: EngineMaker) -> None:
    settings = msgspec.structs.replace(FAST, adapter_catalog=fleet_models.catalog)
    t1, t2 = list(fleet_models.a.adapters)
    one_adapter_mb = 6000 / 2**20  # a tiny adapter takes ~4.4 KB: room for one, not two
    await harness.start_registry(settings)
    rt = await harness.start_runtime("rt-1", make_engine("a", adapter_memory_budget_mb=one_adapter_mb), settings,
                                     adapter_memory_budget_mb=one_adapter_mb)
    await harness.wait_for(lambda st: len(st.runtimes) == 1)
    client = await harness.start_client(settings)
    msgs = random_transcript(random.Random(3), (1, 3))
    assert (await client.route(RouteRequest("e1", 0, msgs, adapter=t1), 20.0)).adapter == t1
    with pytest.raises(RouteFailed) as pinned:  # t1 is leased: never evicted, so t2 has no room
        await client.route(RouteRequest("e2", 0, msgs, adapter=t2), 20.0)
    assert pinned.value.code == "overloaded" and "adapter memory" in pinned.value.message
    await client.close()  # leases given back
    await asyncio.sleep(0.2)
    out = await client.route(RouteRequest("e3", 0, msgs, adapter=t2), 20.0)
    assert out.adapter == t2 and rt.warm_adapters() == ["base", t2]
    assert harness.registry is not None and harness.registry.evictions == 1
    with pytest.raises(NoResponders):  # the evicted adapter's queue-group subject is unsubscribed
        await rpc.request(harness.conns[-1], subjects.route("torch", t1), RouteRequest("e4", 0, msgs, adapter=t1),
                          RouteLogits, timeout=2)
    with pytest.raises(RemoteError) as gone:  # and the runtime's own subject says it does not hold it
        await rpc.request(harness.conns[-1], subjects.runtime_route("rt-1"), RouteRequest("e5", 0, msgs, adapter=t1),
                          RouteLogits, timeout=2)
    assert gone.value.code is ErrorCode.NOT_FOUND


async def test_a_draining_runtime_leaves_placement_at_once(harness: Harness, make_engine: EngineMaker) -> None:
    await harness.start_registry(FAST)
    rt1 = await harness.start_runtime("rt-1", make_engine("a"), FAST)
    await harness.start_runtime("rt-2", make_engine("a"), FAST)
    await harness.wait_for(lambda st: len(st.runtimes) == 2)
    await rt1.drain(timeout=2)
    st = await harness.wait_for(lambda st: all(hb.draining for hb in st.runtimes if hb.runtime_id == "rt-1"))
    client = await harness.start_client(FAST)
    outs = await asyncio.gather(*(client.route(RouteRequest(f"d{i}", 0, random_transcript(random.Random(i), (1, 3))),
                                               10.0) for i in range(10)))
    assert {o.runtime_id for o in outs} == {"rt-2"} and len(st.runtimes) >= 1


async def test_coordinator_route_port_goes_through_placement(harness: Harness, fleet_models: Fleet,
                                                             make_engine: EngineMaker) -> None:
    settings = msgspec.structs.replace(FAST, adapter_catalog=fleet_models.catalog, base_model=fleet_models.b.identity)
    await harness.start_registry(settings)
    await harness.start_runtime("rt-a", make_engine("a"), settings)
    await harness.start_runtime("rt-b", make_engine("b"), settings)
    await harness.wait_for(lambda st: len(st.runtimes) == 2)
    client = await harness.start_client(settings)
    coordinator = CoordinatorActor(harness.conns[-1], CoordinatorSettings(trace_enabled=False), placement=client)
    port = coordinator.ports(Provenance(request_id="c1")).route
    token = next(iter(fleet_models.b.adapters))
    msgs = random_transcript(random.Random(4), (1, 4))
    out = await port(RouteRequest("c1", 0, msgs, adapter=token), CallContext("c1", 0, "cause-1", 10.0))
    # fleet.base_model picks base B for requests that name none; B's adapter is loaded on B's runtime only.
    assert out.runtime_id == "rt-b" and out.adapter == token
    assert client.counters.placements == 1 and harness.runtimes["rt-a"].warm_adapters() == ["base"]


async def test_node_wires_registry_and_placement_from_settings(fresh_nats_server: NatsServerProcess) -> None:
    settings = msgspec.structs.replace(load_settings(environ={}),
                                       nats=NatsSettings(servers=[fresh_nats_server.url], embedded="never"))
    nc = await nats.connect(fresh_nats_server.url)
    try:
        coordinator = FACTORIES["coordinator"](nc, settings)
        assert isinstance(coordinator, CoordinatorActor) and isinstance(coordinator.placement, PlacementClient)
        assert coordinator.placement.owner == "node-1.coordinator"
        subject_mode = msgspec.structs.replace(settings, fleet=FleetSettings(placement="subject"))
        plain = FACTORIES["coordinator"](nc, subject_mode)
        assert isinstance(plain, CoordinatorActor) and plain.placement is None
        assert isinstance(FACTORIES["fleet_registry"](nc, settings), FleetRegistryActor)
        assert "fleet_registry" in settings.node.actors  # single-node runs a registry too
    finally:
        await nc.close()


async def test_without_a_registry_the_client_routes_on_the_queue_group_subject(harness: Harness,
                                                                               make_engine: EngineMaker) -> None:
    await harness.start_runtime("rt-1", make_engine("a"), FAST)
    client = await harness.start_client(FAST)
    msgs = random_transcript(random.Random(6), (1, 3))
    outs = [await client.route(RouteRequest(f"n{i}", 0, msgs), 10.0) for i in range(3)]
    assert {o.runtime_id for o in outs} == {"rt-1"}
    assert client.counters.placements == 1 and client.counters.subject_fallbacks == 3  # asked once, then cached


async def test_run_py_fleet_shows_the_registry_and_drains_a_runtime(
        harness: Harness, make_engine: EngineMaker, fleet_models: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    import run

    await harness.start_registry(FAST)
    rt = await harness.start_runtime("rt-1", make_engine("a"), FAST)
    await harness.wait_for(lambda st: len(st.runtimes) == 1)
    rc = await asyncio.to_thread(run.main, ["fleet", "--nats", harness.url])
    out = capsys.readouterr().out
    assert rc == 0 and "1 runtime(s)" in out and "rt-1" in out and fleet_models.a.identity in out
    rc = await asyncio.to_thread(run.main, ["fleet", "--nats", harness.url, "--drain", "rt-1"])
    assert rc == 0 and "rt-1: draining" in capsys.readouterr().out
    st = await harness.wait_for(lambda s: all(hb.draining for hb in s.runtimes))
    assert rt.draining and st.runtime("rt-1") is not None
    client = await harness.start_client(FAST)
    with pytest.raises(RouteFailed) as refused:  # the only runtime is draining: typed, at once
        await client.route(RouteRequest("d1", 0, random_transcript(random.Random(1), (1, 2))), 5.0)
    assert refused.value.code == "unavailable"
    rc = await asyncio.to_thread(run.main, ["fleet", "--nats", harness.url, "--drain", "no-such-runtime",
                                            "--timeout", "1"])
    assert rc == 1 and "fleet_registry" in capsys.readouterr().err


async def test_single_node_coordinates_through_the_registry(fresh_nats_server: NatsServerProcess,
                                                            fleet_models: Fleet) -> None:
    from ops.node import Node
    from schemas.coordination import Budget, CoordinationRequest, CoordinationResult
    from tests.coordinator.fakes import BusFakes, FakeWorld, plan_of, reply_by_role

    url = fresh_nats_server.url
    base = load_settings(environ={})
    settings = msgspec.structs.replace(
        base, nats=NatsSettings(servers=[url], embedded="never"),
        node=msgspec.structs.replace(base.node, actors=["model_runtime", "fleet_registry", "role_injector",
                                                        "coordinator"], node_id="fleet-e2e"),
        model_runtime=ModelRuntimeSettings(checkpoint_dir=str(fleet_models.a.checkpoint), runtime_id="rt-node",
                                           factor_cache_dir=str(fleet_models.factor_cache)),
        coordinator=msgspec.structs.replace(base.coordinator, trace_enabled=False, jobs_enabled=False),
        fleet=FAST)
    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    fakes_nc = await nats.connect(url)
    world = FakeWorld(route_plan=plan_of([(0, Role.WORKER)]), reply_plan=reply_by_role(verifier="ACCEPT: ok"))
    fakes = BusFakes(fakes_nc, world, backend="unused")  # agents only: routing is the real runtime's
    await fakes.start()
    node = Node(settings, on_started=on_started)
    await node.start()
    try:
        for _ in range(600):
            if len(started) == 4:
                break
            await asyncio.sleep(0.05)
        req = CoordinationRequest(request_id="fleet-e2e-1", query="What is 17 + 25?", budget=Budget(max_turns=2))
        result = await rpc.request(fakes_nc, subjects.coord_request(), req, CoordinationResult, timeout=60)
        assert result.request_id == "fleet-e2e-1" and result.turns and not world.routes
        st = await rpc.request(fakes_nc, subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5)
        assert [hb.runtime_id for hb in st.runtimes] == ["rt-node"]
        assert [lease.owner for lease in st.leases] == ["fleet-e2e.coordinator"]  # placed through the registry
        assert st.leases[0].base_model == fleet_models.a.identity
    finally:
        await node.stop()
        await fakes.drain()
        await fakes_nc.close()


async def test_a_restarted_registry_relearns_the_fleet_at_once_and_routing_never_stops(
        harness: Harness, make_engine: EngineMaker) -> None:
    slow_beat = msgspec.structs.replace(FAST, heartbeat_interval_s=30.0, heartbeat_timeout_s=60.0)
    first = await harness.start_registry(slow_beat)
    await harness.start_runtime("rt-1", make_engine("a"), slow_beat)
    await harness.wait_for(lambda st: len(st.runtimes) == 1)  # the runtime's first heartbeat, sent on start
    client = await harness.start_client(slow_beat)
    msgs = random_transcript(random.Random(8), (1, 3))
    assert (await client.route(RouteRequest("g1", 0, msgs), 10.0)).runtime_id == "rt-1"
    await first.drain(timeout=2)
    # No registry: routes keep flowing on the cached lease (the registry is not on the route path).
    assert (await client.route(RouteRequest("g2", 0, msgs), 10.0)).runtime_id == "rt-1"
    second = FleetRegistryActor(await harness.conn(), slow_beat, registry_id="reg-2")
    await second.start()
    harness.registry = second
    # Heartbeats come every 30 s here; the new registry knows the runtime at once because it asked.
    st = await harness.wait_for(lambda s: s.registry_id == "reg-2" and len(s.runtimes) == 1)
    assert st.runtimes[0].runtime_id == "rt-1" and client.counters.placements == 1


async def test_ensure_checks_the_vector_is_the_adapter_asked_for(harness: Harness, fleet_models: Fleet,
                                                                 make_engine: EngineMaker) -> None:
    rt = await harness.start_runtime("rt-a", make_engine("a"), FAST)
    nc = await harness.conn()
    token_b, path_b = next(iter(fleet_models.b.adapters.items()))  # a vector built for base B
    with pytest.raises(RemoteError) as wrong:
        await rpc.request(nc, subjects.runtime_control("rt-a"),
                          RuntimeControl(op=ControlOp.ENSURE, adapter=token_b, source=str(path_b)),
                          RuntimeControlReply, timeout=30)
    assert wrong.value.code is ErrorCode.INVALID and "adapter_catalog" in wrong.value.message
    assert rt.warm_adapters() == ["base"]  # nothing was left loaded
    assert rt.engine is not None
    loads = rt.engine.adapter_loads  # the refused vector was read and dropped: one load
    token_a, path_a = next(iter(fleet_models.a.adapters.items()))
    ctl = RuntimeControl(op=ControlOp.ENSURE, adapter=token_a, source=str(path_a))
    first, again = [await rpc.request(nc, subjects.runtime_control("rt-a"), ctl, RuntimeControlReply, timeout=30)
                    for _ in range(2)]
    assert (first.loaded, again.loaded) == (True, False) and again.warm_adapters == ["base", token_a]
    assert again.heartbeat is not None and again.heartbeat.adapter_loads == loads + 1  # ensured twice, loaded once
    evicted = await rpc.request(nc, subjects.runtime_control("rt-a"),
                                RuntimeControl(op=ControlOp.EVICT, evict=[token_a]), RuntimeControlReply, timeout=30)
    assert evicted.evicted == [token_a] and evicted.warm_adapters == ["base"]
