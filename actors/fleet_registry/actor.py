"""The bus-facing fleet registry: follows runtime heartbeats, places keys on runtimes, grants leases.

- Subscribes to ``trinity.runtime.heartbeat.*`` (every registry replica sees every heartbeat) and, on start,
  publishes ``trinity.runtime.announce`` so running runtimes heartbeat at once instead of at their next tick.
  A heartbeat counts only on its own runtime's subject (``runtime_id`` = the subject's last token), and a control
  reply's heartbeat only for the runtime asked: a ``runtime-<id>`` NATS user vouches for that id alone.
- Serves ``trinity.fleet.place`` (:class:`~schemas.fleet.PlacementRequest` -> :class:`~schemas.fleet.Lease`)
  and ``trinity.fleet.status`` in the ``fleet-registries`` queue group, as the micro service
  ``trinity-fleet-registry``; ``trinity.fleet.release`` gives leases back.
- When no runtime holds an adapter warm, tells the chosen runtime to ``ensure`` it over
  ``trinity.runtime.control.<id>`` (concurrent placements of one key share one load) after evicting the
  least-recently-used unleased adapters the budget requires.
- Drops runtimes silent for ``fleet.heartbeat_timeout_s``; a restarted runtime rejoins with its first
  heartbeat. Refusals are typed replies (``unavailable``, ``not_found``, ``overloaded``), never waits.

Replicas of the registry are independent (each builds its view from heartbeats); leases are per replica,
which is safe because loads are idempotent on the runtime and leases only pin adapters against eviction.

Example:
    >>> reg = FleetRegistryActor(nc, FleetSettings())   # doctest: +SKIP
    >>> await reg.start(); ...; await reg.drain()      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.fleet_registry.leases import LeaseTable
from actors.fleet_registry.placement import Load, Refuse, Serve, plan
from actors.fleet_registry.state import FleetState, Membership
from bus import rpc, subjects
from bus.codec import decode
from bus.errors import BusError, MalformedPayload, NoResponders, Rejected, RemoteError, RequestTimeout
from bus.service import ActorService, Endpoint, RequestContext
from bus.singleflight import SingleFlight
from config.fleet import FleetSettings
from schemas.fleet import (
    ControlOp,
    FleetStatus,
    FleetStatusRequest,
    Lease,
    LeaseRelease,
    PlacementRequest,
    RuntimeControl,
    RuntimeControlReply,
    RuntimeHeartbeat,
)
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)


class FleetRegistryActor:
    """Registry of live runtimes and placement service (see the module docstring)."""

    def __init__(self, nc: Client, settings: FleetSettings | None = None, *, registry_id: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nc = nc
        self.settings = settings or FleetSettings()
        self.registry_id = registry_id or f"{socket.gethostname()}-{os.getpid()}-registry"
        self.clock = clock
        self.fleet = FleetState(self.settings.heartbeat_timeout_s)
        self.leases = LeaseTable()
        self.ensures = 0
        self.evictions = 0
        self.bad_heartbeats = 0
        self._loading: SingleFlight[tuple[str, str], None] = SingleFlight()
        self._subs: list[Subscription] = []
        self._sweeper: asyncio.Task[None] | None = None
        s = self.settings
        self._sweep_period = min(s.heartbeat_timeout_s, s.heartbeat_interval_s) / 2
        # the expiry sweep ticks every _sweep_period; silence for 10 periods (30 s at least) means it is stuck
        self.sweep_watch = LoopWatch("fleet registry expiry sweep", stall_after_s=max(30.0, 10 * self._sweep_period))
        self.service = ActorService(
            nc, name=s.service_name, version="0.1.0",
            description="TRINITY runtime fleet: heartbeats, adapter-aware placement, leases",
            metadata={"registry_id": self.registry_id},
            endpoints=[
                Endpoint(name="place", subject=subjects.FLEET_PLACE, request_type=PlacementRequest,
                         handler=self._place, queue_group=subjects.QUEUE_REGISTRIES),
                Endpoint(name="status", subject=subjects.FLEET_STATUS, request_type=FleetStatusRequest,
                         handler=self._status, queue_group=subjects.QUEUE_REGISTRIES),
            ])

    async def start(self) -> None:
        """Follow heartbeats, serve placement, and ask running runtimes to announce themselves."""
        self._subs.append(await self.nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_heartbeat))
        self._subs.append(await self.nc.subscribe(subjects.FLEET_RELEASE, cb=self._on_release))
        await self.service.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="fleet-registry-sweep")
        self.sweep_watch.attach(self._sweeper)
        await self.nc.publish(subjects.RUNTIME_ANNOUNCE, b"")
        await self.nc.flush()

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop placing, stop following heartbeats."""
        await self.service.drain(timeout=timeout)
        self.sweep_watch.detach()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    # -- heartbeats, releases, expiry --------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = decode(msg.data, RuntimeHeartbeat, subject=msg.subject)
        except (MalformedPayload, BusError) as e:
            self.bad_heartbeats += 1
            log.warning("ignored a bad heartbeat on %s: %s", msg.subject, e)
            return
        if msg.subject != subjects.runtime_heartbeat(hb.runtime_id):
            # a runtime user may publish only its own heartbeat subject (``nats-auth --runtime-user``): the subject
            # vouches for the id, so a heartbeat naming another runtime would forge that runtime's liveness
            self.bad_heartbeats += 1
            log.warning("ignored a heartbeat of runtime %s sent on %s: a runtime heartbeats on its own subject",
                        hb.runtime_id, msg.subject)
            return
        self.observe(hb)

    def observe(self, hb: RuntimeHeartbeat) -> Membership:
        """Take one heartbeat into account (also used for heartbeats carried by control replies)."""
        membership = self.fleet.observe(hb, self.clock())
        if membership is Membership.REJOINED:
            self.leases.drop_runtime(hb.runtime_id)  # the old process's adapters are gone
            log.info("runtime %s restarted and rejoined", hb.runtime_id)
        elif membership is Membership.JOINED:
            log.info("runtime %s joined (%s, base %s, warm %s)", hb.runtime_id, hb.spec.backend_id,
                     hb.spec.base_model, hb.warm_adapters)
        return membership

    async def _on_release(self, msg: Msg) -> None:
        try:
            rel = decode(msg.data, LeaseRelease, subject=msg.subject)
        except (MalformedPayload, BusError):
            return
        self.leases.release(rel.lease_id, rel.owner)

    def sweep(self) -> list[str]:
        """Drop silent runtimes and expired leases now; returns the runtimes dropped."""
        now = self.clock()
        gone = self.fleet.expire(now)
        for rid in gone:
            self.leases.drop_runtime(rid)
            log.warning("runtime %s missed its heartbeats for %.1fs; removed from placement", rid,
                        self.settings.heartbeat_timeout_s)
        self.leases.expire(now)
        return gone

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_period)
            self.sweep()
            self.sweep_watch.progress()

    def watches(self) -> list[LoopWatch]:
        """The inner loops the node watches (the expiry sweep)."""
        return [self.sweep_watch]

    # -- placement ---------------------------------------------------------------------------------------

    async def _status(self, _req: FleetStatusRequest, _ctx: RequestContext) -> FleetStatus:
        f = self.fleet
        return FleetStatus(registry_id=self.registry_id, runtimes=f.heartbeats(),
                           leases=self.leases.live(self.clock()), joins=f.joins, rejoins=f.rejoins, drops=f.drops,
                           ensures=self.ensures, evictions=self.evictions)

    async def _place(self, req: PlacementRequest, _ctx: RequestContext) -> Lease:
        return await self.place(req)

    async def place(self, req: PlacementRequest) -> Lease:
        """Lease runtimes for ``req.key``, loading its adapter somewhere if needed; raises :class:`Rejected`."""
        s = self.settings
        exclude = set(req.exclude)
        loaded: list[str] = []
        for _ in range(len(self.fleet.runtimes) + 2):
            decision = plan(self.fleet, self.leases, req.key, exclude=exclude, catalog=s.adapter_catalog,
                            high_water=s.queue_high_water, now=self.clock())
            if isinstance(decision, Serve):
                self.fleet.runtimes[decision.runtimes[0]].assigned += 1
                return self.leases.grant(req.key, req.owner, decision.runtimes, decision.base_model, now=self.clock(),
                                         ttl=s.lease_ttl_s, loaded=loaded)
            if isinstance(decision, Refuse):
                raise Rejected(decision.code, decision.message, retryable=decision.retryable)
            assert isinstance(decision, Load)
            if await self._ensure(decision, req.key.adapter):
                loaded.append(decision.runtime_id)
            else:
                exclude.add(decision.runtime_id)
        raise Rejected(ErrorCode.UNAVAILABLE, f"could not place {req.key.describe()}: runtimes kept failing to load "
                       "it; see the registry's log", retryable=True)

    async def _ensure(self, load: Load, adapter: str) -> bool:
        """Have ``load.runtime_id`` load ``adapter`` (one load per runtime and adapter at a time)."""
        try:
            await self._loading.do((load.runtime_id, adapter), lambda: self._send_ensure(load, adapter))
        except (RequestTimeout, NoResponders) as e:
            log.warning("runtime %s did not load %s: %s", load.runtime_id, adapter, e)
            if isinstance(e, NoResponders) and self.fleet.forget(load.runtime_id):
                self.leases.drop_runtime(load.runtime_id)
            return False
        except RemoteError as e:
            if e.retryable or e.code is ErrorCode.TOO_LARGE:  # busy, draining, or out of adapter memory there
                log.info("runtime %s refused to load %s: %s", load.runtime_id, adapter, e.message)
                return False
            raise Rejected(e.code, f"runtime {load.runtime_id} could not load adapter {adapter!r}: {e.message}") \
                from None
        return True

    async def _send_ensure(self, load: Load, adapter: str) -> None:
        ctl = RuntimeControl(op=ControlOp.ENSURE, adapter=adapter, source=load.source, evict=load.evict)
        reply = await rpc.request(self.nc, subjects.runtime_control(load.runtime_id), ctl, RuntimeControlReply,
                                  timeout=self.settings.ensure_timeout_s)
        self.ensures += int(reply.loaded)
        self.evictions += len(reply.evicted)
        if reply.heartbeat is not None and reply.heartbeat.runtime_id == load.runtime_id:  # only its own
            self.fleet.mark_loaded(reply.heartbeat, self.clock())
