"""The bus-facing model runtime: a nats ``micro`` service that routes, heartbeats and takes control.

Endpoints (service ``trinity-model-runtime``):

* ``route-<adapter>`` on ``trinity.route.<backend>.<adapter>`` (queue group ``runtimes``), one per adapter held
  warm: added when an adapter is loaded, removed when it is evicted, so runtimes holding the same adapter
  share its queue group and scale routing horizontally;
* ``route-direct`` on ``trinity.runtime.route.<runtime_id>``: any warm adapter, on this runtime only (where
  the fleet registry's placement sends coordinators);
* ``control`` on ``trinity.runtime.control.<runtime_id>``: ``ensure`` (load an adapter vector, idempotent,
  after evicting what the registry names), ``evict``, ``drain``, ``status``
  (:class:`~schemas.fleet.RuntimeControl` -> :class:`~schemas.fleet.RuntimeControlReply`).

A heartbeat (:class:`~schemas.fleet.RuntimeHeartbeat`: spec with the base model *identity* — a digest of the
weights, see :mod:`.identity` —, warm adapters with size and last use, queue depth, memory, incarnation)
goes out on ``trinity.runtime.heartbeat.<runtime_id>`` every ``fleet.heartbeat_interval_s``, at once when a
registry asks on ``trinity.runtime.announce``, after every control command, and one last time with
``draining`` set when the runtime drains.

Every route request is answered with :class:`~schemas.routing.RouteLogits` (the hidden state never leaves this
package) or a typed error reply: empty transcript, too short -> ``invalid``; an adapter or base model this
runtime does not hold -> ``not_found``; over the context or payload limit -> ``too_large``; queue full ->
``overloaded`` (retryable); draining -> ``draining`` (retryable).

Example:
    >>> actor = ModelRuntimeActor(nc, ModelRuntimeSettings(), fleet=FleetSettings())  # doctest: +SKIP
    >>> await actor.start(); ...; await actor.drain()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import ModelRuntimeError
from actors.model_runtime.identity import base_model_identity
from actors.model_runtime.runtime import RouterRuntime, RuntimeStats
from bus import metrics, rpc, subjects
from bus.errors import ContractError, Rejected
from bus.service import ActorService, Endpoint, RequestContext
from bus.spans import set_error, span
from config.fleet import FleetSettings
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.errors import SchemaError
from schemas.fleet import (
    ControlOp,
    InstanceLimits,
    InstanceSpec,
    RuntimeControl,
    RuntimeControlReply,
    RuntimeHeartbeat,
    WarmAdapter,
)
from schemas.routing import RouteLogits, RouteRequest
from schemas.sakana import BASE_ADAPTER_TOKEN, RuntimeProfile
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)


class RouteRequestBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """:class:`RouteRequest`'s wire shape without its invariants, so that broken invariants (an empty
    transcript, a negative turn) are answered ``invalid`` by the runtime instead of ``malformed`` by the
    decoder. A test keeps the two field lists identical."""

    request_id: str
    turn: int
    messages: list[Message]
    backend: str = "torch"
    adapter: str = "base"
    run_id: str | None = None
    deadline_ms: int | None = None
    base_model: str | None = None

    def to_request(self) -> RouteRequest:
        """The validated contract; raises :class:`SchemaError` naming the broken invariant."""
        return RouteRequest(**msgspec.structs.asdict(self))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ModelRuntimeActor:
    """Loads the engine (off the event loop), batches requests, serves them, heartbeats and takes control."""

    def __init__(self, nc: Client, settings: ModelRuntimeSettings, *, engine: RouterEngine | None = None,
                 fleet: FleetSettings | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.fleet = fleet or FleetSettings()
        self.runtime_id = settings.runtime_id or f"{socket.gethostname()}-{os.getpid()}"
        self.engine = engine
        self.runtime: RouterRuntime | None = None
        self.service: ActorService | None = None
        self._loads_counted = 0  # engine adapter loads already counted in trinity_adapter_loads_total
        self.base_model = ""
        self.incarnation = time.time()
        self.draining = False
        self._usage: dict[str, tuple[float, int]] = {}
        self._control_lock = asyncio.Lock()
        self._heartbeat_task: asyncio.Task[None] | None = None
        # beats every heartbeat_interval_s; silence for 10 intervals (30 s at least) means the loop is stuck
        self.heartbeat_watch = LoopWatch(f"runtime heartbeat loop ({self.runtime_id})",
                                         stall_after_s=max(30.0, 10 * self.fleet.heartbeat_interval_s))
        self._announce_sub: Subscription | None = None
        self._drain_task: asyncio.Task[None] | None = None

    @property
    def subject(self) -> str:
        """The queue-group routing subject of the runtime's default adapter."""
        return subjects.route(self.settings.backend, self.settings.adapter)

    @property
    def direct_subject(self) -> str:
        """This runtime's own routing subject (placement sends here)."""
        return subjects.runtime_route(self.runtime_id)

    async def start(self) -> None:
        """Load the engine if needed, identify the base model, register the service and start heartbeating."""
        if self.engine is None:
            settings = msgspec.structs.replace(self.settings, runtime_id=self.runtime_id)
            t0 = time.monotonic()
            log.info("runtime %s: loading the routing model (%s) off the event loop; not placeable until loaded",
                     self.runtime_id, settings.checkpoint_dir or settings.checkpoint_preset)
            self.engine = await asyncio.to_thread(RouterEngine.load, settings)
            log.info("runtime %s: routing model loaded in %.1f s", self.runtime_id, time.monotonic() - t0)
        engine = self.engine
        self.base_model = await asyncio.to_thread(base_model_identity, engine.model, engine.head.weight)
        self.runtime = RouterRuntime(engine)
        await self.runtime.start()
        s = self.settings
        meta = {"backend": s.backend, "profile": s.profile, "runtime_id": self.runtime_id,
                "base_model": self.base_model}
        endpoints: list[Endpoint[Any]] = [self._route_endpoint(a) for a in self.warm_adapters()]
        endpoints.append(Endpoint(
            name="route-direct", subject=self.direct_subject, request_type=RouteRequestBody, handler=self._handle,
            max_payload_bytes=s.max_payload_bytes, max_concurrency=s.max_queue + s.max_batch, metadata=meta))
        endpoints.append(Endpoint(
            name="control", subject=subjects.runtime_control(self.runtime_id), request_type=RuntimeControl,
            handler=self._control, metadata=meta))
        self.service = ActorService(
            self.nc,
            name="trinity-model-runtime", version="0.1.0", endpoints=endpoints,
            description="TRINITY routing: Qwen3 state at position -2 through the routing head",
            metadata=meta,
        )
        await self.service.start()
        self._announce_sub = await self.nc.subscribe(subjects.RUNTIME_ANNOUNCE, cb=self._on_announce)
        await self.publish_heartbeat()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat-{self.runtime_id}")
        self.heartbeat_watch.attach(self._heartbeat_task)

    def _route_endpoint(self, adapter: str) -> Endpoint[RouteRequestBody]:
        s = self.settings
        return Endpoint(
            name=f"route-{adapter}", subject=subjects.route(s.backend, adapter), request_type=RouteRequestBody,
            handler=self._handle, queue_group=subjects.QUEUE_RUNTIMES, max_payload_bytes=s.max_payload_bytes,
            max_concurrency=s.max_queue + s.max_batch,
            metadata={"backend": s.backend, "adapter": adapter, "profile": s.profile, "base_model": self.base_model},
        )

    # -- routing -----------------------------------------------------------------------------------------

    async def _handle(self, body: RouteRequestBody, ctx: RequestContext) -> RouteLogits:
        with span("trinity.runtime.route", ctx.provenance, attributes={"trinity.runtime_id": self.runtime_id,
                                                                       "trinity.adapter": body.adapter}) as sp:
            try:
                result, batch_size, waited_s = await self._route(body)
            except ContractError as e:  # the service layer sends it as the typed error reply
                set_error(sp, e.code.value, e.message)
                raise
            if sp.is_recording():
                sp.set_attributes({"trinity.batch_size": batch_size, "trinity.queued_ms": round(waited_s * 1e3, 3),
                                   "trinity.token_count": result.token_count,
                                   "trinity.cached_tokens": result.cached_tokens,
                                   "trinity.latency_ms": result.latency_ms})
            return result

    async def _route(self, body: RouteRequestBody) -> tuple[RouteLogits, int, float]:
        if self.runtime is None:
            raise Rejected(ErrorCode.UNAVAILABLE, "model runtime is not started", retryable=True)
        try:
            request = body.to_request()
        except SchemaError as e:
            raise Rejected(ErrorCode.INVALID, str(e), details={"field": e.field}) from None
        if request.base_model is not None and request.base_model != self.base_model:
            raise Rejected(ErrorCode.NOT_FOUND, f"runtime {self.runtime_id} serves base model {self.base_model}, "
                           f"not {request.base_model}; ask the fleet registry for a placement",
                           details={"base_model": self.base_model})
        result, batch_size, waited_s = await self.runtime.route_sized(request)  # ModelRuntimeError goes as it is
        _, served = self._usage.get(result.adapter, (0.0, 0))
        self._usage[result.adapter] = (time.time(), served + 1)
        return msgspec.structs.replace(result, runtime_id=self.runtime_id), batch_size, waited_s

    def stats(self) -> RuntimeStats | None:
        """Batching and cache counters (``None`` before start)."""
        return self.runtime.stats() if self.runtime else None

    # -- control -----------------------------------------------------------------------------------------

    def warm_adapters(self) -> list[str]:
        """Adapter tokens held warm (``"base"`` first)."""
        if self.engine is None:
            return []
        return self.engine.warm_adapters()

    async def _control(self, ctl: RuntimeControl, _ctx: RequestContext) -> RuntimeControlReply:
        if self.runtime is None or self.service is None:
            raise Rejected(ErrorCode.UNAVAILABLE, f"runtime {self.runtime_id} is not serving", retryable=True)
        async with self._control_lock:  # one load/evict at a time: an adapter is never loaded twice
            loaded, evicted = False, []
            if ctl.op in (ControlOp.ENSURE, ControlOp.EVICT):
                evicted = await self._evict([t for t in ctl.evict if t != ctl.adapter])
            if ctl.op is ControlOp.ENSURE:
                loaded = await self._ensure(ctl)
            elif ctl.op is ControlOp.DRAIN:
                self.draining = True
                self._drain_task = asyncio.create_task(self._stop_serving(), name=f"drain-{self.runtime_id}")
        hb = self.heartbeat()
        await self._publish(hb)
        return RuntimeControlReply(runtime_id=self.runtime_id, op=ctl.op, warm_adapters=hb.warm_adapters,
                                   loaded=loaded, evicted=evicted, heartbeat=hb)

    async def _ensure(self, ctl: RuntimeControl) -> bool:
        assert self.runtime is not None and self.service is not None and ctl.adapter is not None
        if self.draining:
            raise Rejected(ErrorCode.DRAINING, f"runtime {self.runtime_id} is draining", retryable=True)
        if ctl.adapter in self.warm_adapters():
            return False
        if ctl.source is None:
            raise Rejected(ErrorCode.INVALID, f"ensure of {ctl.adapter!r}: no source; put the adapter's vector in "
                           "fleet.adapter_catalog")
        before = set(self.warm_adapters())
        try:
            info = await self.runtime.load_adapter(ctl.source)
        except ModelRuntimeError as e:
            metrics.ADAPTER_LOADS.labels(outcome=e.code.value).inc()
            e.message = f"loading {ctl.source}: {e.message}"  # same code and flag, with what was being loaded
            raise
        if info.token != ctl.adapter:  # e.g. a vector of another base model: its token here is another one
            if info.token not in before:  # never unload an adapter that was already serving
                with contextlib.suppress(ModelRuntimeError):
                    await self.runtime.unload_adapter(info.token)
            raise Rejected(ErrorCode.INVALID, f"the vector at {ctl.source} is adapter {info.token!r}, not "
                           f"{ctl.adapter!r}; fix fleet.adapter_catalog")
        await self.service.add_endpoint(self._route_endpoint(info.token))
        log.info("runtime %s loaded adapter %s from %s in %.2fs", self.runtime_id, info.token, ctl.source, info.load_s)
        return True

    async def _evict(self, tokens: list[str]) -> list[str]:
        assert self.runtime is not None and self.service is not None
        done = []
        for token in tokens:
            if token == BASE_ADAPTER_TOKEN or token not in self.warm_adapters():
                continue
            await self.service.remove_endpoint(f"route-{token}")  # stop taking new work for it first
            await self.runtime.unload_adapter(token)
            self._usage.pop(token, None)
            done.append(token)
        return done

    # -- heartbeats --------------------------------------------------------------------------------------

    def heartbeat(self) -> RuntimeHeartbeat:
        """What this runtime announces: spec (base model identity), warm adapters, queue depth and memory."""
        s = self.settings
        st = self.runtime.stats() if self.runtime else None
        metrics.RUNTIME_QUEUED.set(st.batcher.queued if st else 0)  # on the loop: the batcher is not thread-safe
        warm = self.warm_adapters()
        adapters = []
        for token in warm:
            last, served = self._usage.get(token, (0.0, 0))
            nbytes = self.engine.adapter_info(token).nbytes if self.engine is not None else 0
            adapters.append(WarmAdapter(token=token, nbytes=nbytes, last_used=last, served=served))
        return RuntimeHeartbeat(
            runtime_id=self.runtime_id,
            spec=InstanceSpec(
                backend_id=s.backend, base_model=self.base_model or "unidentified", adapter=s.adapter,
                profile=RuntimeProfile(name=s.profile, backend=s.backend,
                                       device=str(self.engine.device) if self.engine else s.device,
                                       dtype=s.dtype or "float32"),  # resolved by the settings already
                limits=InstanceLimits(max_queue=s.max_queue, max_batch=s.max_batch, batch_window_ms=s.batch_window_ms,
                                      max_context_tokens=s.max_context_tokens,
                                      adapter_memory_budget_mb=float(s.adapter_memory_budget_mb)),
            ),
            warm_adapters=warm,
            queue_depth=st.batcher.queued if st else 0,
            in_flight=st.batcher.in_flight if st else 0,
            rss_mb=_rss_mb(),
            ts=time.time(),
            draining=self.draining or (self.service is None and self.engine is not None),
            incarnation=self.incarnation,
            adapters=adapters,
            interval_s=self.fleet.heartbeat_interval_s,
            adapter_loads=self.engine.adapter_loads if self.engine is not None else 0,
        )

    async def _publish(self, hb: RuntimeHeartbeat) -> None:
        if hb.adapter_loads > self._loads_counted:  # every load (at start or on ensure) precedes a heartbeat
            metrics.ADAPTER_LOADS.labels(outcome="ok").inc(hb.adapter_loads - self._loads_counted)
            self._loads_counted = hb.adapter_loads
        if self.nc.is_closed:
            return
        try:
            await rpc.publish(self.nc, subjects.runtime_heartbeat(self.runtime_id), hb)
        except (nats.errors.Error, OSError) as e:  # lost to a reconnect: the next heartbeat replaces it
            log.warning("runtime %s: heartbeat not published: %s", self.runtime_id, e)

    async def publish_heartbeat(self) -> RuntimeHeartbeat:
        """Publish a heartbeat now; returns it."""
        hb = self.heartbeat()
        await self._publish(hb)
        return hb

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fleet.heartbeat_interval_s)
            try:
                await self.publish_heartbeat()
            except (nats.errors.Error, OSError) as e:  # a reconnect: the next beat goes out after it
                log.warning("runtime %s: heartbeat not published (%r)", self.runtime_id, e)
                continue
            self.heartbeat_watch.progress()

    def watches(self) -> list[LoopWatch]:
        """The inner loops the node watches: the heartbeat loop and the batcher's collecting loop."""
        out = [self.heartbeat_watch]
        if self.runtime is not None:
            out.append(self.runtime.batcher.watch)
        return out

    async def _on_announce(self, _msg: Msg) -> None:
        await self.publish_heartbeat()

    # -- shutdown ----------------------------------------------------------------------------------------

    async def _stop_serving(self, timeout: float = 10.0) -> None:
        if self.service is not None:
            await self.service.drain(timeout=timeout)
            self.service = None
        await self.publish_heartbeat()

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking requests, answer the ones in flight (up to ``timeout`` seconds), then stop the worker.

        The last heartbeat says ``draining`` so registries stop placing work here at once.
        """
        self.draining = True
        self.heartbeat_watch.detach()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        if self._announce_sub is not None:
            with contextlib.suppress(Exception):
                await self._announce_sub.unsubscribe()
            self._announce_sub = None
        await self.publish_heartbeat()
        await self._stop_serving(timeout)
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
