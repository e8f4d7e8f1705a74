"""Placement: which runtimes should serve a ``(backend, base model, adapter)`` key (pure, no I/O).

:func:`plan` looks at the live runtimes of the key's backend and base model and decides:

1. **Serve** — runtimes holding the adapter warm, those under the queue high-water mark first (least loaded
   first), then the busy ones. An already-warm runtime always serves the next request for its adapter.
2. **Load** — none holds it warm under the high-water mark (none at all, or every holder busy: scale out):
   the least-loaded other runtime with room that can fit the adapter in its memory budget loads it
   (``ensure``), after evicting least-recently-used adapters nobody holds a lease on. Loading a cheap (SVF)
   adapter never touches the base weights other requests are using. Failing that, busy holders serve:
   heartbeats lag, so the runtime's own bounded queue is what says ``overloaded`` (at once).
3. **Refuse** — a typed reason: ``unavailable`` (no live runtime of that backend/base), ``not_found``
   (adapter nowhere warm and not in the catalog), ``overloaded`` (every candidate was excluded by the caller
   after refusing, or none has adapter memory) — answered at once, never queued.

Example:
    >>> plan(fleet, leases, PlacementKey("torch", None, "base"), exclude=set(), catalog={}, high_water=0.75,
    ...      now=0.0)  # doctest: +SKIP
    Serve(runtimes=['rt-1', 'rt-2'], base_model='qwen3-…')
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from actors.fleet_registry.leases import LeaseTable
from actors.fleet_registry.state import FleetState, RuntimeRecord
from schemas.fleet import PlacementKey
from schemas.sakana import BASE_ADAPTER_TOKEN
from schemas.wire import ErrorCode


@dataclass(frozen=True)
class Serve:
    """Route to these runtimes (best first); all serve the same base model."""

    runtimes: list[str]
    base_model: str


@dataclass(frozen=True)
class Load:
    """Ask ``runtime_id`` to load the adapter from ``source`` after evicting ``evict``."""

    runtime_id: str
    source: str
    evict: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Refuse:
    """No placement: a typed error code, whether retrying later may help, and what to do."""

    code: ErrorCode
    message: str
    retryable: bool


Plan = Serve | Load | Refuse


def _order(r: RuntimeRecord) -> tuple[float, int, str]:
    return (r.load(), len(r.warm), r.runtime_id)


def lru_evictions(rec: RuntimeRecord, need: int, pinned: Container[str]) -> list[str] | None:
    """Adapters to evict (least recently used first) so ``need`` more bytes fit the runtime's budget.

    Never the base adapter, never one with a live lease. ``None`` when even evicting every unpinned adapter
    does not make room; ``[]`` when it fits already.
    """
    budget = rec.budget_bytes()
    used = rec.adapter_bytes()
    if used + need <= budget:
        return []
    victims = sorted((a for a in rec.adapters.values() if a.token != BASE_ADAPTER_TOKEN and a.token not in pinned),
                     key=lambda a: (a.last_used, a.token))
    out: list[str] = []
    for a in victims:
        out.append(a.token)
        used -= a.nbytes
        if used + need <= budget:
            return out
    return None


def plan(fleet: FleetState, leases: LeaseTable, key: PlacementKey, *, exclude: Container[str],
         catalog: Mapping[str, str], high_water: float, now: float) -> Plan:
    """Decide where ``key`` goes (see the module docstring)."""
    matching = [r for r in fleet.live() if r.heartbeat.spec.backend_id == key.backend
                and (key.base_model is None or r.heartbeat.spec.base_model == key.base_model)
                and not r.heartbeat.draining]
    if not matching:
        return Refuse(ErrorCode.UNAVAILABLE, f"no live runtime serves {key.describe()}; start one with that backend "
                      "and base model (run.py node --actors model_runtime) or check the base model identity",
                      retryable=True)
    live = [r for r in matching if r.runtime_id not in exclude]
    warm = [r for r in live if key.adapter in r.warm]
    if key.base_model is None and warm:
        # With no base asked for, stay on one base model: the one whose holders are least loaded.
        base = min(warm, key=_order).heartbeat.spec.base_model
        warm = [r for r in warm if r.heartbeat.spec.base_model == base]
    ready = sorted((r for r in warm if r.has_room(high_water)), key=_order)
    busy = sorted((r for r in warm if not r.has_room(high_water)), key=_order)
    if ready:
        return Serve([r.runtime_id for r in ready + busy], ready[0].heartbeat.spec.base_model)
    if not live:
        return Refuse(ErrorCode.OVERLOADED, f"every runtime serving {key.describe()} was refused just now (full, "
                      "draining or not answering); retry later or add runtimes", retryable=True)
    source = catalog.get(key.adapter)
    if source is None and not busy:
        if any(key.adapter in r.warm for r in matching):
            return Refuse(ErrorCode.OVERLOADED, f"every runtime holding {key.describe()} was refused just now and "
                          "the adapter is not in fleet.adapter_catalog to load elsewhere; retry later",
                          retryable=True)
        return Refuse(ErrorCode.NOT_FOUND, f"adapter {key.adapter!r} is not warm on any runtime of "
                      f"{key.describe()} and not in fleet.adapter_catalog; add its vector file to the catalog",
                      retryable=False)
    for rec in sorted((r for r in live if key.adapter not in r.warm and r.has_room(high_water)), key=_order):
        need = fleet.adapter_size(key.adapter, rec.heartbeat.spec.base_model)
        evict = lru_evictions(rec, need, leases.pinned(rec.runtime_id, now))
        if evict is not None and source is not None:  # scale out: every holder is past the high-water mark
            return Load(rec.runtime_id, source, evict)
    if busy:  # nobody else can take it: the holders' own bounded queues answer (``overloaded`` at once if full)
        return Serve([r.runtime_id for r in busy], busy[0].heartbeat.spec.base_model)
    return Refuse(ErrorCode.OVERLOADED, f"no runtime of {key.describe()} has queue room and adapter memory for "
                  f"{key.adapter!r} (leased adapters are never evicted); retry later, raise "
                  "model_runtime.adapter_memory_budget_mb or add runtimes", retryable=True)
