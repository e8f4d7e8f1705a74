"""The registry's pure logic: membership from heartbeats, leases, and placement decisions."""

from __future__ import annotations

import pytest

from actors.fleet_registry.leases import LeaseTable
from actors.fleet_registry.placement import Load, Refuse, Serve, lru_evictions, plan
from actors.fleet_registry.state import FleetState, Membership
from schemas.errors import SchemaError
from schemas.fleet import PlacementKey, RuntimeControl
from schemas.wire import ErrorCode
from tests.fleet.support import MB, heartbeat

CATALOG = {"ad-1": "/vectors/ad-1.npy", "ad-2": "/vectors/ad-2.npy", "ad-3": "/vectors/ad-3.npy"}


def _fleet(*hbs: object, timeout: float = 3.0) -> FleetState:
    fleet = FleetState(heartbeat_timeout_s=timeout)
    for hb in hbs:
        fleet.observe(hb, now=0.0)  # type: ignore[arg-type]
    return fleet


def _plan(fleet: FleetState, key: PlacementKey, leases: LeaseTable | None = None, exclude: set[str] | None = None,
          catalog: dict[str, str] | None = None) -> object:
    return plan(fleet, leases or LeaseTable(), key, exclude=exclude or set(), catalog=CATALOG if catalog is None
                else catalog, high_water=0.75, now=1.0)


def test_membership_join_update_restart_stale_and_expiry() -> None:
    fleet = FleetState(heartbeat_timeout_s=3.0)
    assert fleet.observe(heartbeat("rt-1", ts=1.0), now=0.0) is Membership.JOINED
    assert fleet.observe(heartbeat("rt-1", ts=2.0, queue=3), now=1.0) is Membership.UPDATED
    assert fleet.runtimes["rt-1"].heartbeat.queue_depth == 3
    assert fleet.observe(heartbeat("rt-1", ts=1.5), now=1.1) is Membership.STALE  # reordered delivery
    assert fleet.observe(heartbeat("rt-1", ts=0.5, incarnation=200.0, warm={"ad-1": MB}), now=2.0) \
        is Membership.REJOINED
    assert fleet.runtimes["rt-1"].warm == ["base", "ad-1"]
    assert fleet.observe(heartbeat("rt-1", ts=9.0, incarnation=100.0), now=2.5) is Membership.STALE  # old process
    fleet.observe(heartbeat("rt-2"), now=4.0)
    assert fleet.expire(now=5.5) == ["rt-1"]  # silent for 3.5 s > 3 s
    assert [r.runtime_id for r in fleet.live()] == ["rt-2"]
    assert (fleet.joins, fleet.rejoins, fleet.drops) == (2, 1, 1)


def test_warm_runtime_with_room_serves_least_loaded_first() -> None:
    fleet = _fleet(heartbeat("rt-1", warm={"ad-1": MB}, queue=4), heartbeat("rt-2", warm={"ad-1": MB}, queue=1),
                   heartbeat("rt-3", queue=0))
    decision = _plan(fleet, PlacementKey("torch", "qwen3-a", "ad-1"))
    assert decision == Serve(["rt-2", "rt-1"], "qwen3-a")  # rt-3 is idler but does not hold ad-1


def test_full_holders_are_skipped_and_the_adapter_is_loaded_on_the_least_loaded_other() -> None:
    fleet = _fleet(heartbeat("rt-1", warm={"ad-1": MB}, queue=7), heartbeat("rt-2", queue=2),
                   heartbeat("rt-3", queue=1))
    decision = _plan(fleet, PlacementKey("torch", "qwen3-a", "ad-1"))
    assert decision == Load("rt-3", CATALOG["ad-1"], [])


def test_base_model_and_backend_must_match() -> None:
    fleet = _fleet(heartbeat("rt-a", base="qwen3-a"), heartbeat("rt-b", base="qwen3-b"),
                   heartbeat("rt-x", base="qwen3-b", backend="onnx"))
    assert _plan(fleet, PlacementKey("torch", "qwen3-b", "base")) == Serve(["rt-b"], "qwen3-b")
    refused = _plan(fleet, PlacementKey("torch", "qwen3-c", "base"))
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.UNAVAILABLE and refused.retryable
    any_base = _plan(fleet, PlacementKey("torch", None, "base"))
    assert isinstance(any_base, Serve) and len({any_base.base_model}) == 1 and len(any_base.runtimes) == 1


def test_overload_and_exclusion_are_refused_at_once_with_typed_codes() -> None:
    # Busy by (lagging) heartbeats: still served, least loaded first; the runtimes' own queues say overloaded.
    fleet = _fleet(heartbeat("rt-1", queue=8), heartbeat("rt-2", queue=6))
    assert _plan(fleet, PlacementKey("torch", "qwen3-a", "base")) == Serve(["rt-2", "rt-1"], "qwen3-a")
    fleet = _fleet(heartbeat("rt-1", queue=1), heartbeat("rt-2", queue=7), heartbeat("rt-3", queue=0))
    assert _plan(fleet, PlacementKey("torch", "qwen3-a", "base")) == Serve(["rt-3", "rt-1", "rt-2"], "qwen3-a")
    refused = _plan(fleet, PlacementKey("torch", "qwen3-a", "ad-7"), exclude={"rt-1", "rt-2", "rt-3"})
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.OVERLOADED and refused.retryable
    fleet = _fleet(heartbeat("rt-1"), heartbeat("rt-2"))
    assert _plan(fleet, PlacementKey("torch", "qwen3-a", "base"), exclude={"rt-1"}) == Serve(["rt-2"], "qwen3-a")
    refused = _plan(fleet, PlacementKey("torch", "qwen3-a", "base"), exclude={"rt-1", "rt-2"})
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.OVERLOADED


def test_unknown_adapter_is_not_found_and_draining_runtimes_are_skipped() -> None:
    fleet = _fleet(heartbeat("rt-1"), heartbeat("rt-2", warm={"ad-9": MB}, draining=True))
    refused = _plan(fleet, PlacementKey("torch", "qwen3-a", "ad-9"))
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.NOT_FOUND and not refused.retryable
    busy = _fleet(heartbeat("rt-1"), heartbeat("rt-2", warm={"ad-9": MB}, queue=8))
    assert _plan(busy, PlacementKey("torch", "qwen3-a", "ad-9"), catalog={}) == Serve(["rt-2"], "qwen3-a")
    refused = _plan(busy, PlacementKey("torch", "qwen3-a", "ad-9"), catalog={}, exclude={"rt-2"})
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.OVERLOADED
    loaded = _plan(fleet, PlacementKey("torch", "qwen3-a", "ad-9"), catalog={"ad-9": "/v9.npy"})
    assert loaded == Load("rt-1", "/v9.npy")


def test_lru_eviction_respects_budget_and_leases() -> None:
    hb = heartbeat("rt-1", budget_mb=3, warm={"ad-1": MB, "ad-2": MB, "ad-3": MB},
                   last_used={"ad-1": 30.0, "ad-2": 10.0, "ad-3": 20.0})
    rec = _fleet(hb).runtimes["rt-1"]
    assert lru_evictions(rec, 0, set()) == []
    assert lru_evictions(rec, MB, set()) == ["ad-2"]  # least recently used first
    assert lru_evictions(rec, 2 * MB, {"ad-2"}) == ["ad-3", "ad-1"]  # leased ad-2 stays
    assert lru_evictions(rec, 2 * MB, {"ad-2", "ad-3"}) is None  # cannot make room


def test_placement_plans_evictions_and_never_evicts_leased_adapters() -> None:
    hb = heartbeat("rt-1", budget_mb=2, warm={"ad-1": MB, "ad-2": MB}, last_used={"ad-1": 5.0, "ad-2": 9.0})
    fleet = _fleet(hb, heartbeat("rt-2", budget_mb=2, warm={"ad-3": MB}))
    leases = LeaseTable()
    key3 = PlacementKey("torch", "qwen3-a", "ad-3")
    assert _plan(fleet, key3, leases) == Serve(["rt-2"], "qwen3-a")
    # rt-2 is excluded (say it just timed out): load ad-3 on rt-1 after evicting its least recently used.
    assert _plan(fleet, key3, leases, exclude={"rt-2"}) == Load("rt-1", CATALOG["ad-3"], ["ad-1"])
    leases.grant(PlacementKey("torch", "qwen3-a", "ad-1"), "coord-1", ["rt-1"], "qwen3-a", now=0.0, ttl=30.0)
    assert _plan(fleet, key3, leases, exclude={"rt-2"}) == Load("rt-1", CATALOG["ad-3"], ["ad-2"])
    leases.grant(PlacementKey("torch", "qwen3-a", "ad-2"), "coord-1", ["rt-1"], "qwen3-a", now=0.0, ttl=30.0)
    refused = _plan(fleet, key3, leases, exclude={"rt-2"})
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.OVERLOADED


def test_lease_table_grant_release_expire_and_runtime_loss() -> None:
    table = LeaseTable()
    key = PlacementKey("torch", "qwen3-a", "ad-1")
    a = table.grant(key, "coord-1", ["rt-1", "rt-2"], "qwen3-a", now=0.0, ttl=10.0)
    b = table.grant(key, "coord-2", ["rt-2"], "qwen3-a", now=0.0, ttl=20.0)
    assert table.pinned("rt-1", now=5.0) == {"ad-1"}
    assert not table.release(a.lease_id, "coord-2")  # only the owner releases
    assert table.drop_runtime("rt-2") == 2
    assert [lease.runtimes for lease in table.live(now=5.0)] == [["rt-1"]]  # b had only rt-2: gone
    assert table.release(a.lease_id, "coord-1") and table.live(now=5.0) == []
    c = table.grant(key, "coord-1", ["rt-1"], "qwen3-a", now=0.0, ttl=10.0)
    assert table.expire(now=10.0) == 1 and c.lease_id not in table.leases and b.lease_id not in table.leases


def test_control_contract_rejects_base_eviction_and_ensure_without_adapter() -> None:
    with pytest.raises(SchemaError, match="base adapter cannot be evicted"):
        RuntimeControl(op="evict", evict=["base"])  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="ensure needs an adapter"):
        RuntimeControl(op="ensure")  # type: ignore[arg-type]
