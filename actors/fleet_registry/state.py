"""What the registry knows about each runtime, built from heartbeats alone (pure, no I/O).

A runtime joins with its first heartbeat, is updated by each later one, and is dropped when silent for
longer than the heartbeat timeout. A heartbeat with a new ``incarnation`` for a known id is a restart: the
record is replaced (the adapters the old process held are gone with it).

Example:
    >>> fleet = FleetState(heartbeat_timeout_s=3.0)
    >>> fleet.observe(hb, now=10.0)  # doctest: +SKIP
    <Membership.JOINED: 'joined'>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

from schemas.fleet import RuntimeHeartbeat, WarmAdapter


class Membership(enum.StrEnum):
    """What a heartbeat meant for the runtime that sent it."""

    JOINED = "joined"
    REJOINED = "rejoined"
    UPDATED = "updated"
    STALE = "stale"


@dataclass
class RuntimeRecord:
    """The latest heartbeat of one runtime, when it was received (registry clock) and local corrections."""

    heartbeat: RuntimeHeartbeat
    last_seen: float
    joined_at: float
    assigned: int = 0  # leases granted on it since its last heartbeat (heartbeats lag; spreads placements)
    adapters: dict[str, WarmAdapter] = field(default_factory=dict)

    @property
    def runtime_id(self) -> str:
        """The runtime's id."""
        return self.heartbeat.runtime_id

    @property
    def warm(self) -> list[str]:
        """Adapter tokens held warm."""
        return list(self.heartbeat.warm_adapters)

    @property
    def max_queue(self) -> int:
        """The runtime's queue bound."""
        return self.heartbeat.spec.limits.max_queue

    def load(self) -> float:
        """Queue occupancy in ``[0, inf)``: queued + running + leases granted since the heartbeat, over
        ``max_queue``."""
        hb = self.heartbeat
        return (hb.queue_depth + hb.in_flight + self.assigned) / self.max_queue

    def has_room(self, high_water: float) -> bool:
        """Whether the queue is under ``high_water`` x ``max_queue`` (heartbeat view, not exact)."""
        return self.heartbeat.queue_depth < high_water * self.max_queue

    def adapter_bytes(self) -> int:
        """Memory the warm non-base adapters take."""
        return sum(a.nbytes for a in self.adapters.values() if a.token != "base")

    def budget_bytes(self) -> int:
        """The runtime's adapter memory budget in bytes."""
        return int(self.heartbeat.spec.limits.adapter_memory_budget_mb * 2**20)


class FleetState:
    """Live runtimes keyed by id (see the module docstring)."""

    def __init__(self, heartbeat_timeout_s: float) -> None:
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.runtimes: dict[str, RuntimeRecord] = {}
        self.joins = 0
        self.rejoins = 0
        self.drops = 0

    def observe(self, hb: RuntimeHeartbeat, now: float) -> Membership:
        """Take a heartbeat into account; returns what it meant."""
        rec = self.runtimes.get(hb.runtime_id)
        adapters = {a.token: a for a in hb.adapters} or {t: WarmAdapter(t) for t in hb.warm_adapters}
        if rec is None:
            self.joins += 1
            self.runtimes[hb.runtime_id] = RuntimeRecord(hb, now, now, adapters=adapters)
            return Membership.JOINED
        if hb.incarnation != rec.heartbeat.incarnation:
            if hb.incarnation < rec.heartbeat.incarnation:
                return Membership.STALE  # a late heartbeat of the process that was replaced
            self.rejoins += 1
            self.runtimes[hb.runtime_id] = RuntimeRecord(hb, now, now, adapters=adapters)
            return Membership.REJOINED
        if hb.ts < rec.heartbeat.ts:
            return Membership.STALE
        rec.heartbeat, rec.last_seen, rec.assigned, rec.adapters = hb, now, 0, adapters
        return Membership.UPDATED

    def expire(self, now: float) -> list[str]:
        """Drop runtimes silent for longer than the heartbeat timeout; returns their ids."""
        gone = [rid for rid, r in self.runtimes.items() if now - r.last_seen > self.heartbeat_timeout_s]
        for rid in gone:
            del self.runtimes[rid]
        self.drops += len(gone)
        return gone

    def forget(self, runtime_id: str) -> bool:
        """Drop one runtime now (it answered that it is draining, or vanished from the bus)."""
        if self.runtimes.pop(runtime_id, None) is None:
            return False
        self.drops += 1
        return True

    def live(self) -> list[RuntimeRecord]:
        """Records of live runtimes, sorted by id."""
        return [self.runtimes[k] for k in sorted(self.runtimes)]

    def heartbeats(self) -> list[RuntimeHeartbeat]:
        """The latest heartbeat of every live runtime."""
        return [r.heartbeat for r in self.live()]

    def adapter_size(self, token: str, base_model: str | None = None) -> int:
        """Bytes ``token`` takes where it is warm; else the largest adapter seen on ``base_model`` (adapters of
        one backbone have one layout, so one size); 0 when nothing is known."""
        sizes = [r.adapters[token].nbytes for r in self.runtimes.values() if token in r.adapters]
        if not sizes:
            sizes = [a.nbytes for r in self.runtimes.values()
                     if base_model is None or r.heartbeat.spec.base_model == base_model
                     for a in r.adapters.values() if a.token != "base"]
        return max(sizes, default=0)

    def mark_loaded(self, hb: RuntimeHeartbeat, now: float) -> None:
        """Apply the heartbeat a runtime sent back with a control reply (same incarnation: an update)."""
        rec = self.runtimes.get(hb.runtime_id)
        if rec is None or hb.incarnation != rec.heartbeat.incarnation:
            self.observe(hb, now)
            return
        assigned = rec.assigned
        self.observe(msgspec.structs.replace(hb, ts=max(hb.ts, rec.heartbeat.ts)), now)
        rec.assigned = assigned
