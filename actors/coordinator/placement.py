"""The coordinator's placement client: route each request to a runtime holding its base model and adapter.

Asks the fleet registry (``trinity.fleet.place``) once per ``(backend, base model, adapter)`` key and caches
the :class:`~schemas.fleet.Lease` until it nearly expires, so a route costs one direct request to
``trinity.runtime.route.<runtime_id>`` plus a dictionary lookup. Among a lease's runtimes it picks the one
with the fewest of its own requests outstanding.

Failures, all within the route's deadline (never an unbounded wait):

* ``overloaded`` / ``draining`` / ``unavailable`` from a runtime: try the lease's next runtime; when none is
  left, ask the registry again excluding the runtimes tried (it may load the adapter elsewhere). A registry
  that has nothing else answers ``overloaded`` at once and so does this client.
* nobody on the runtime's subject (its process died): it is dropped from the cached leases and excluded
  from this client's placements for one heartbeat timeout; the request goes to another replica.
* no reply within ``fleet.attempt_timeout_s`` (killed mid-request, or alive but slow): the request goes to
  another replica; if there is none, it waits on the slow one for the rest of its deadline. Routing is a
  pure function of the transcript, so a late reply from the first runtime changes nothing; it arrives on an
  inbox nobody waits on any more and is dropped — each request is answered once.
* ``not_found`` (the runtime evicted the adapter, or restarted without it): the lease is stale; ask again.
* other typed errors (``invalid``, ``too_large``...) are the request's fault and are raised as they are.

Without a registry on the bus the client falls back to the queue-group subject
``trinity.route.<backend>.<adapter>`` (single-node deployments need no registry) and looks for a registry
again after one lease TTL.

Example:
    >>> client = PlacementClient(nc, FleetSettings())                  # doctest: +SKIP
    >>> logits = await client.route(request, timeout_s=10.0)           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client

from actors.coordinator.errors import RouteFailed
from bus import rpc, subjects
from bus.errors import (
    BusError,
    MalformedPayload,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
    RequestTimeout,
    error_contract,
)
from bus.provenance import Provenance
from bus.singleflight import SingleFlight
from config.fleet import FleetSettings
from schemas.fleet import Lease, LeaseRelease, PlacementKey, PlacementRequest
from schemas.routing import RouteLogits, RouteRequest
from schemas.wire import ErrorCode

log = logging.getLogger(__name__)

#: A lease is renewed when this fraction of its TTL is left (so it never expires under a request in flight).
RENEW_AT = 0.2


@dataclass
class PlacementCounters:
    """What the client did: placements asked, cache hits, failovers by cause, fallbacks, refusals."""

    routes: int = 0
    placements: int = 0
    cache_hits: int = 0
    failover_timeout: int = 0
    failover_gone: int = 0
    failover_busy: int = 0
    stale_leases: int = 0
    subject_fallbacks: int = 0
    refused: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a plain dict."""
        return dict(self.__dict__)


@dataclass
class _Cached:
    lease: Lease
    renew_at: float


class PlacementClient:
    """Leases runtimes from the fleet registry and routes with failover (see the module docstring)."""

    def __init__(self, nc: Client, settings: FleetSettings | None = None, *, owner: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nc = nc
        self.settings = settings or FleetSettings()
        self.owner = owner or self.settings.owner or f"{socket.gethostname()}-{os.getpid()}-coordinator"
        self.clock = clock
        self.counters = PlacementCounters()
        self.outstanding: dict[str, int] = {}
        self._leases: dict[PlacementKey, _Cached] = {}
        self._placing: SingleFlight[PlacementKey, Lease | None] = SingleFlight()
        self._no_registry_logged = False
        self._no_registry_until = float("-inf")  # after NoResponders on placement: use the subjects until then
        self._suspects: dict[str, float] = {}  # runtimes that just timed out or vanished -> until when

    def key_of(self, req: RouteRequest) -> PlacementKey:
        """The placement key of a request (``fleet.base_model`` when the request names no base)."""
        return PlacementKey(req.backend, req.base_model or self.settings.base_model, req.adapter)

    async def route(self, req: RouteRequest, timeout_s: float, *, provenance: Provenance | None = None) -> RouteLogits:
        """Routing logits for ``req`` from a runtime holding its base model and adapter, within ``timeout_s``.

        Raises :class:`RouteFailed` with the typed code (``overloaded``, ``deadline``, ``unavailable``,
        ``not_found``, ``invalid``...) and whether retrying later may help.
        """
        self.counters.routes += 1
        deadline = self.clock() + timeout_s
        key = self.key_of(req)
        refused: list[str] = []  # answered overloaded/draining/not_found, or gone from the bus
        slow: list[str] = []  # no answer within the attempt timeout (dead, or alive but slow)
        lease: Lease | None = None
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise RouteFailed(ErrorCode.DEADLINE, f"no runtime answered {key.describe()} within "
                                  f"{timeout_s:.3f}s (refused by {refused or 'none'}, slow: {slow or 'none'})",
                                  retryable=True)
            try:
                lease = await self._lease(key, [*refused, *slow], remaining)
                if lease is None:  # no registry on the bus: the queue group of the adapter's runtimes
                    return await self._send(subjects.route(req.backend, req.adapter), req, req, remaining,
                                            provenance)
                candidates = [r for r in lease.runtimes if r not in refused and r not in slow]
                if not candidates:
                    lease = await self._lease(key, [*refused, *slow], remaining, fresh=True)
                    assert lease is not None
                    candidates = [r for r in lease.runtimes if r not in refused and r not in slow]
                last_resort = False
            except RouteFailed as e:
                if not slow or e.code not in (ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE):
                    raise
                # Nobody else can take it: wait on a runtime that was only slow, for the rest of the deadline.
                # (Routing is a pure function: if the first attempt answers too, that reply is simply dropped.)
                candidates, last_resort = [slow.pop(0)], True
            if not candidates:  # a registry that ignores exclude; do not loop on it
                raise RouteFailed(ErrorCode.OVERLOADED, f"every runtime of {key.describe()} was tried: "
                                  f"{refused + slow}", retryable=True)
            rid = min(candidates, key=lambda r: self.outstanding.get(r, 0))
            base = lease.base_model if lease is not None and not last_resort else req.base_model
            placed = req if base is None or req.base_model == base else msgspec.structs.replace(req, base_model=base)
            remaining = deadline - self.clock()
            attempt = remaining if last_resort else min(remaining, self.settings.attempt_timeout_s)
            self.outstanding[rid] = self.outstanding.get(rid, 0) + 1
            try:
                return await self._send(subjects.runtime_route(rid), placed, req, attempt, provenance)
            except _Failover as f:
                (slow if f.slow else refused).append(rid)
                if f.gone:
                    self._drop_runtime(rid, suspect=True)
                elif f.slow:
                    self._drop_runtime(rid, suspect=False)
                if f.stale:
                    self._leases.pop(key, None)
            finally:
                self.outstanding[rid] -= 1

    async def _send(self, subject: str, wire: RouteRequest, req: RouteRequest, timeout: float,
                    provenance: Provenance | None) -> RouteLogits:
        direct = subject.startswith(f"{subjects.PREFIX}.runtime.route.")
        try:
            logits = await rpc.request(self.nc, subject, wire, RouteLogits, timeout=max(timeout, 1e-3),
                                       provenance=provenance)
        except RemoteError as e:
            if direct and e.code in (ErrorCode.OVERLOADED, ErrorCode.DRAINING, ErrorCode.UNAVAILABLE):
                self.counters.failover_busy += 1
                raise _Failover(gone=e.code is ErrorCode.DRAINING) from None
            if direct and e.code is ErrorCode.NOT_FOUND:
                self.counters.stale_leases += 1
                raise _Failover(stale=True) from None
            raise _route_failed(e, subject) from None
        except RequestTimeout as e:
            if direct:
                self.counters.failover_timeout += 1
                raise _Failover(slow=True) from None
            raise _route_failed(e, subject) from None
        except NoResponders as e:
            if direct:
                self.counters.failover_gone += 1
                raise _Failover(gone=True) from None
            raise _route_failed(e, subject) from None
        except (MalformedPayload, PayloadTooLarge) as e:
            raise _route_failed(e, subject) from None
        if logits.request_id != req.request_id or logits.turn != req.turn:
            raise RouteFailed(ErrorCode.UPSTREAM, f"runtime answered request {logits.request_id!r} turn "
                              f"{logits.turn}, asked {req.request_id!r} turn {req.turn}")
        if direct and logits.adapter != req.adapter:
            raise RouteFailed(ErrorCode.UPSTREAM, f"runtime {logits.runtime_id} answered with adapter "
                              f"{logits.adapter!r}, asked {req.adapter!r}")
        return logits

    # -- leases ------------------------------------------------------------------------------------------

    def _live_suspects(self) -> list[str]:
        now = self.clock()
        for rid in [r for r, until in self._suspects.items() if until <= now]:
            del self._suspects[rid]
        return sorted(self._suspects)

    async def _lease(self, key: PlacementKey, tried: list[str], timeout: float, *,
                     fresh: bool = False) -> Lease | None:
        cached = self._leases.get(key)
        if cached is not None and not fresh and self.clock() < cached.renew_at and \
                any(r not in tried for r in cached.lease.runtimes):
            self.counters.cache_hits += 1
            return cached.lease
        if self.clock() < self._no_registry_until:
            self.counters.subject_fallbacks += 1
            return None
        suspects = self._live_suspects()
        if tried or fresh:
            return await self._place(key, sorted({*tried, *suspects}), timeout)
        # One placement request per key at a time; concurrent routes share it.
        return await self._placing.do(key, lambda: self._place(key, suspects, timeout))

    async def _place(self, key: PlacementKey, exclude: list[str], timeout: float) -> Lease | None:
        self.counters.placements += 1
        req = PlacementRequest(key=key, owner=self.owner, exclude=list(exclude))
        try:
            lease = await rpc.request(self.nc, subjects.FLEET_PLACE, req, Lease,
                                      timeout=max(1e-3, min(timeout, self.settings.place_timeout_s)))
        except NoResponders:
            self.counters.subject_fallbacks += 1
            self._no_registry_until = self.clock() + self.settings.lease_ttl_s  # look again after one lease TTL
            if not self._no_registry_logged:
                self._no_registry_logged = True
                log.warning("no fleet registry on %s; routing on the queue-group subjects instead (start a "
                            "fleet_registry actor, or set fleet.placement='subject' to silence this)",
                            subjects.FLEET_PLACE)
            return None
        except RemoteError as e:
            self.counters.refused += 1
            raise _route_failed(e, subjects.FLEET_PLACE, f"placement of {key.describe()}: ") from None
        except (RequestTimeout, MalformedPayload, PayloadTooLarge) as e:
            raise _route_failed(e, subjects.FLEET_PLACE, f"placement of {key.describe()}: ") from None
        self._leases[key] = _Cached(lease, self.clock() + lease.ttl_s * (1 - RENEW_AT))
        return lease

    def _drop_runtime(self, runtime_id: str, *, suspect: bool) -> None:
        """Forget ``runtime_id`` in cached leases; a ``suspect`` (gone from the bus) is also excluded from this
        client's placements until the registry must have noticed (one heartbeat timeout)."""
        if suspect:
            self._suspects[runtime_id] = self.clock() + self.settings.heartbeat_timeout_s
        for key, cached in list(self._leases.items()):
            rest = [r for r in cached.lease.runtimes if r != runtime_id]
            if len(rest) == len(cached.lease.runtimes):
                continue
            if rest:
                self._leases[key] = _Cached(msgspec.structs.replace(cached.lease, runtimes=rest), cached.renew_at)
            else:
                del self._leases[key]

    def leases(self) -> list[Lease]:
        """Leases currently cached."""
        return [c.lease for c in self._leases.values()]

    async def close(self) -> None:
        """Give cached leases back to the registry (best effort)."""
        for cached in self._leases.values():
            try:
                await rpc.publish(self.nc, subjects.FLEET_RELEASE, LeaseRelease(cached.lease.lease_id, self.owner))
            except (nats.errors.Error, OSError) as e:  # closing anyway; leases expire on their own
                log.debug("lease release not sent: %s", e)
        self._leases.clear()


class _Failover(Exception):
    """Internal: this runtime cannot answer; try another (``gone``: left the bus or draining; ``slow``: no
    answer in time; ``stale``: the lease is out of date)."""

    def __init__(self, *, gone: bool = False, slow: bool = False, stale: bool = False) -> None:
        super().__init__("failover")
        self.gone, self.slow, self.stale = gone, slow, stale


def _route_failed(exc: BusError, subject: str, prefix: str = "") -> RouteFailed:
    """The bus failure as a :class:`RouteFailed`, through the bus's one error mapping."""
    reply = error_contract(exc, subject)
    if reply is None:  # not a bus failure: keep it visible as an internal error
        return RouteFailed(ErrorCode.INTERNAL, f"{prefix}{exc!r}", retryable=False)
    return RouteFailed.from_reply(reply, prefix)
