"""Placement leases: who may route a key to which runtimes until when (pure, no I/O).

A lease lets a coordinator reuse a placement for ``ttl`` seconds without asking the registry again. While
live it pins its adapter on its runtimes: the registry never evicts an adapter someone holds a lease on.

Example:
    >>> table = LeaseTable()
    >>> key = PlacementKey("torch", "qwen3-ab", "base")
    >>> lease = table.grant(key, "coord-1", ["rt-1"], "qwen3-ab", now=0.0, ttl=30.0)
    >>> table.pinned("rt-1", now=1.0)
    {'base'}
    >>> table.pinned("rt-1", now=31.0)
    set()
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schemas.fleet import Lease, PlacementKey


@dataclass
class LeaseEntry:
    """A granted lease and when it expires (registry clock)."""

    lease: Lease
    expires_at: float


class LeaseTable:
    """Granted leases by id (see the module docstring)."""

    def __init__(self) -> None:
        self.leases: dict[str, LeaseEntry] = {}
        self.granted = 0
        self.released = 0
        self.expired = 0

    def grant(self, key: PlacementKey, owner: str, runtimes: list[str], base_model: str, *, now: float,
              ttl: float, loaded: list[str] | None = None) -> Lease:
        """A new lease of ``key`` on ``runtimes`` for ``owner``, valid ``ttl`` seconds from ``now``."""
        lease = Lease(lease_id=uuid.uuid4().hex, key=key, owner=owner, runtimes=list(runtimes), ttl_s=ttl,
                      base_model=base_model, loaded=list(loaded or []))
        self.leases[lease.lease_id] = LeaseEntry(lease, now + ttl)
        self.granted += 1
        return lease

    def release(self, lease_id: str, owner: str) -> bool:
        """Give a lease back (only its owner can); returns whether it was live."""
        entry = self.leases.get(lease_id)
        if entry is None or entry.lease.owner != owner:
            return False
        del self.leases[lease_id]
        self.released += 1
        return True

    def expire(self, now: float) -> int:
        """Drop leases past their expiry; returns how many."""
        dead = [k for k, e in self.leases.items() if e.expires_at <= now]
        for k in dead:
            del self.leases[k]
        self.expired += len(dead)
        return len(dead)

    def drop_runtime(self, runtime_id: str) -> int:
        """Remove a runtime that left from every lease (leases left with none are dropped); returns leases hit."""
        hit = 0
        for lease_id, entry in list(self.leases.items()):
            if runtime_id not in entry.lease.runtimes:
                continue
            hit += 1
            rest = [r for r in entry.lease.runtimes if r != runtime_id]
            if rest:
                lease = entry.lease
                self.leases[lease_id] = LeaseEntry(
                    Lease(lease_id=lease.lease_id, key=lease.key, owner=lease.owner, runtimes=rest, ttl_s=lease.ttl_s,
                          base_model=lease.base_model, loaded=lease.loaded), entry.expires_at)
            else:
                del self.leases[lease_id]
        return hit

    def pinned(self, runtime_id: str, now: float) -> set[str]:
        """Adapters with a live lease on ``runtime_id`` (never evicted)."""
        return {e.lease.key.adapter for e in self.leases.values()
                if e.expires_at > now and runtime_id in e.lease.runtimes}

    def live(self, now: float) -> list[Lease]:
        """Leases not yet expired."""
        return [e.lease for e in self.leases.values() if e.expires_at > now]
