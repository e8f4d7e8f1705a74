"""The fleet across processes: 3 runtime processes (2 base models, 3 adapters) on a 3-node NATS cluster.

Each runtime is ``run.py node --actors model_runtime`` with its own connection to its own cluster node; the
registry and the coordinator's placement client run in the test process on other nodes. Answers are checked
against reference logits computed here, in the same run, with the same weights and adapter vectors.

Tests share the fleet and run in file order: 1,000 mixed routes, then a runtime killed mid-request, then
that runtime restarted (it rejoins), then a runtime frozen (it stops heartbeating: removed from placement,
then readmitted when it wakes up).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
import torch
from nats.aio.client import Client

from actors.coordinator.errors import RouteFailed
from actors.coordinator.placement import PlacementClient
from actors.fleet_registry.actor import FleetRegistryActor
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.tokenizer import RouterTokenizer
from bus import rpc, subjects
from bus.embedded import NatsCluster
from config.fleet import FleetSettings
from ops.runtime_process import RuntimeProcess
from schemas.common import Message
from schemas.fleet import FleetStatus, FleetStatusRequest
from schemas.routing import RouteLogits, RouteRequest
from tests.fleet.support import EngineMaker, Fleet, engine_maker
from tests.model_runtime.transcripts import random_transcript

pytestmark = [pytest.mark.slow]

ATOL = 1e-4  # packed batches in another process vs one-at-a-time here: float32 sums in another order
SETTINGS = FleetSettings(heartbeat_interval_s=0.25, heartbeat_timeout_s=1.5, attempt_timeout_s=3.0, lease_ttl_s=20.0)
LAYOUT = {"rt-a1": ("a", 0), "rt-a2": ("a", 1), "rt-b1": ("b", 2)}  # runtime -> (base model, cluster node)


class ProcFleet:
    """The runtime processes, the registry, a client connection, and reference engines."""

    def __init__(self, cluster: NatsCluster, models: Fleet, logs: Path, make_engine: EngineMaker) -> None:
        self.cluster, self.models, self.logs = cluster, models, logs
        self.procs: dict[str, RuntimeProcess] = {}
        self.conns: list[Client] = []
        self.registry: FleetRegistryActor | None = None
        self.refs: dict[str, RouterEngine] = {}
        for base, m in (("a", models.a), ("b", models.b)):
            engine = make_engine(base, cache_max_tokens=0)
            for path in m.adapters.values():
                engine.load_adapter(str(path))
            self.refs[m.identity] = engine

    def launch(self, runtime_id: str) -> RuntimeProcess:
        base, node = LAYOUT[runtime_id]
        m = self.models.a if base == "a" else self.models.b
        proc = RuntimeProcess.start(runtime_id, self.cluster.urls[node], {
            "model_runtime.checkpoint_dir": str(m.checkpoint),
            "model_runtime.factor_cache_dir": str(self.models.factor_cache),
            "model_runtime.num_threads": 1,
            "model_runtime.max_queue": 512,
            "fleet.heartbeat_interval_s": SETTINGS.heartbeat_interval_s,
            "fleet.heartbeat_timeout_s": SETTINGS.heartbeat_timeout_s,
        }, log_path=self.logs / f"{runtime_id}-{len(self.procs)}.log")
        self.procs[runtime_id] = proc
        return proc

    async def conn(self, node: int) -> Client:
        nc = await nats.connect(self.cluster.urls[node])
        self.conns.append(nc)
        return nc

    async def client(self, **changes: object) -> PlacementClient:
        return PlacementClient(await self.conn(1), msgspec.structs.replace(SETTINGS, **changes), owner="coord-proc")

    async def status(self) -> FleetStatus:
        return await rpc.request(self.conns[0], subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5)

    async def wait_for(self, what: str, pred: Callable[[FleetStatus], bool], timeout: float = 120.0) -> FleetStatus:
        for _ in range(int(timeout / 0.1)):
            st = await self.status()
            if pred(st):
                return st
            await asyncio.sleep(0.1)
        logs = "\n".join(f"--- {rid}\n{p.log_tail()}" for rid, p in self.procs.items())
        raise AssertionError(f"fleet never reached: {what}; runtimes {[r.runtime_id for r in st.runtimes]}\n{logs}")

    def check(self, req: RouteRequest, out: RouteLogits, base_of: dict[str, str]) -> None:
        """The answer came from a runtime of the asked base, with the asked adapter, and equals the reference."""
        assert out.request_id == req.request_id and out.adapter == req.adapter
        assert base_of[out.runtime_id] == req.base_model, (out.runtime_id, req.base_model)
        want = self.refs[str(req.base_model)].route(RouteRequest(req.request_id, 0, req.messages, adapter=req.adapter))
        assert torch.allclose(torch.tensor(out.logits), torch.tensor(want.logits), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def proc_fleet(nats_cluster: NatsCluster, fleet_models: Fleet, tmp_path_factory: pytest.TempPathFactory,
               fleet_tokenizer: RouterTokenizer) -> Iterator[ProcFleet]:
    """The three runtime processes (stopped at the end of the module)."""
    make = engine_maker(fleet_models, fleet_tokenizer)
    fleet = ProcFleet(nats_cluster, fleet_models, tmp_path_factory.mktemp("runtime-logs"), make)
    for rid in LAYOUT:
        fleet.launch(rid)
    yield fleet
    for proc in fleet.procs.values():
        proc.stop()


@pytest.fixture
async def running(proc_fleet: ProcFleet, fleet_models: Fleet) -> AsyncIterator[ProcFleet]:
    """The fleet with a registry (in this process, on cluster node 0) following it."""
    nc = await proc_fleet.conn(0)
    settings = msgspec.structs.replace(SETTINGS, adapter_catalog=fleet_models.catalog)
    proc_fleet.registry = FleetRegistryActor(nc, settings, registry_id="reg-proc")
    await proc_fleet.registry.start()
    try:
        yield proc_fleet
    finally:
        await proc_fleet.registry.drain(timeout=2)
        for c in proc_fleet.conns:
            if not c.is_closed:
                await c.close()
        proc_fleet.conns.clear()


def _keys(models: Fleet) -> list[tuple[str, str]]:
    """(base identity, adapter) pairs: base and two adapters on A, base and one adapter on B."""
    return ([(models.a.identity, "base")] + [(models.a.identity, t) for t in models.a.adapters]
            + [(models.b.identity, "base")] + [(models.b.identity, t) for t in models.b.adapters])


async def test_1000_concurrent_routes_mixing_adapters_and_base_models(running: ProcFleet, fleet_models: Fleet) -> None:
    st = await running.wait_for("3 runtimes", lambda s: {r.runtime_id for r in s.runtimes} == set(LAYOUT))
    base_of = {hb.runtime_id: hb.spec.base_model for hb in st.runtimes}
    assert base_of == {"rt-a1": fleet_models.a.identity, "rt-a2": fleet_models.a.identity,
                       "rt-b1": fleet_models.b.identity}  # identities computed in other processes match ours
    client = await running.client(attempt_timeout_s=20.0)
    keys = _keys(fleet_models)
    assert len(keys) == 5 and len({a for _, a in keys} - {"base"}) == 3
    rng = random.Random(1000)
    reqs = []
    for i in range(1000):
        base, adapter = rng.choice(keys)
        reqs.append(RouteRequest(f"m{i}", 0, random_transcript(rng, (1, 5), max_replies=1), adapter=adapter,
                                 base_model=base))
    outs = await asyncio.gather(*(client.route(r, 120.0) for r in reqs))
    assert len(outs) == 1000 and len({o.request_id for o in outs}) == 1000  # none lost, none twice
    for req, out in zip(reqs, outs, strict=True):
        running.check(req, out, base_of)
    st = await running.status()
    assert running.registry is not None
    loads = {hb.runtime_id: hb.adapter_loads for hb in st.runtimes}
    warm = {hb.runtime_id: [a for a in hb.warm_adapters if a != "base"] for hb in st.runtimes}
    for rid in LAYOUT:  # no adapter loaded twice on one runtime (no evictions in this run)
        assert loads[rid] == len(warm[rid]) == len(set(warm[rid])), (rid, loads, warm)
    assert running.registry.ensures == sum(loads.values()) >= 3
    for base, adapter in keys:  # every adapter ended up on a runtime of its own base model only
        holders = [rid for rid, w in warm.items() if adapter in w or adapter == "base"]
        assert holders and all(base_of[r] == base for r in holders if adapter != "base")
    served = collections.Counter(o.runtime_id for o in outs)
    assert set(served) == set(LAYOUT)
    await client.close()


async def test_runtime_killed_mid_request_is_retried_on_another_replica(running: ProcFleet,
                                                                       fleet_models: Fleet) -> None:
    st = await running.wait_for("3 runtimes", lambda s: {r.runtime_id for r in s.runtimes} == set(LAYOUT))
    base_of = {hb.runtime_id: hb.spec.base_model for hb in st.runtimes}
    client = await running.client(attempt_timeout_s=2.0)
    rng = random.Random(7)
    base = fleet_models.a.identity
    await client.route(RouteRequest("warm", 0, [Message("user", "hi there")], base_model=base), 30.0)
    reqs = [RouteRequest(f"k{i}", 0, random_transcript(rng, (20, 60), max_replies=2), base_model=base)
            for i in range(300)]
    tasks = [asyncio.create_task(client.route(r, 60.0)) for r in reqs]
    for _ in range(2000):  # kill rt-a1 while it holds requests of ours
        if client.outstanding.get("rt-a1", 0) >= 5:
            break
        await asyncio.sleep(0.005)
    in_flight_at_kill = client.outstanding.get("rt-a1", 0)
    running.procs["rt-a1"].kill()
    outs = await asyncio.gather(*tasks)
    assert in_flight_at_kill >= 5
    assert len({o.request_id for o in outs}) == 300  # every request answered, once
    for req, out in zip(reqs, outs, strict=True):
        running.check(req, out, base_of)
    assert client.counters.failover_timeout + client.counters.failover_gone >= 1
    late = [o for o in outs if o.runtime_id == "rt-a2"]
    assert len(late) >= in_flight_at_kill  # what rt-a1 held was answered by the other replica
    st = await running.wait_for("rt-a1 removed", lambda s: s.runtime("rt-a1") is None)
    assert running.registry is not None and running.registry.fleet.drops >= 1
    await client.close()


async def test_restarted_runtime_rejoins(running: ProcFleet, fleet_models: Fleet) -> None:
    assert not running.procs["rt-a1"].alive
    running.launch("rt-a1")
    st = await running.wait_for("rt-a1 back", lambda s: s.runtime("rt-a1") is not None)
    hb = st.runtime("rt-a1")
    assert hb is not None and hb.spec.base_model == fleet_models.a.identity and hb.warm_adapters == ["base"]
    client = await running.client()
    rng = random.Random(9)
    base_of = {r.runtime_id: r.spec.base_model for r in st.runtimes}
    reqs = [RouteRequest(f"j{i}", 0, random_transcript(rng, (1, 5)), base_model=fleet_models.a.identity)
            for i in range(60)]
    outs = await asyncio.gather(*(client.route(r, 30.0) for r in reqs))
    for req, out in zip(reqs, outs, strict=True):
        running.check(req, out, base_of)
    assert {o.runtime_id for o in outs} == {"rt-a1", "rt-a2"}  # the restarted runtime takes work again
    await client.close()


async def test_silent_runtime_is_removed_from_placement_and_readmitted(running: ProcFleet,
                                                                      fleet_models: Fleet) -> None:
    await running.wait_for("3 runtimes", lambda s: {r.runtime_id for r in s.runtimes} == set(LAYOUT))
    base_b = fleet_models.b.identity
    msgs = [Message("user", "which agent should answer this?")]
    running.procs["rt-b1"].pause()
    try:
        await running.wait_for("rt-b1 removed", lambda s: s.runtime("rt-b1") is None)
        client = await running.client()
        with pytest.raises(RouteFailed) as refused:  # the only runtime of base B is gone: typed, not a hang
            await client.route(RouteRequest("s1", 0, msgs, base_model=base_b), 30.0)
        assert refused.value.code == "unavailable" and refused.value.retryable
    finally:
        running.procs["rt-b1"].resume()
    st = await running.wait_for("rt-b1 readmitted", lambda s: s.runtime("rt-b1") is not None)
    out = await client.route(RouteRequest("s2", 0, msgs, base_model=base_b), 30.0)
    running.check(RouteRequest("s2", 0, msgs, base_model=base_b), out,
                  {r.runtime_id: r.spec.base_model for r in st.runtimes})
    assert out.runtime_id == "rt-b1"
    await client.close()
