"""The bus-facing model runtime: serves ``trinity.route.<backend>.<adapter>`` as a nats ``micro`` service.

Runtimes holding the same backend and adapter share the queue group ``runtimes``, so adding instances
scales routing horizontally. Every request is answered with :class:`~schemas.routing.RouteLogits` (the hidden
state never leaves this package) or a typed error reply:

* empty transcript, wrong adapter, too short -> ``invalid`` / ``not_found`` (from :mod:`.errors`);
* over the context limit or the payload limit -> ``too_large``;
* queue full -> ``overloaded`` (retryable); draining -> ``draining`` (retryable).

Example:
    >>> actor = ModelRuntimeActor(nc, ModelRuntimeSettings())  # doctest: +SKIP
    >>> await actor.start(); ...; await actor.drain()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time

import msgspec
from nats.aio.client import Client

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import ModelRuntimeError
from actors.model_runtime.runtime import RouterRuntime, RuntimeStats
from bus import subjects
from bus.errors import Rejected
from bus.service import ActorService, Endpoint, RequestContext
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.errors import SchemaError
from schemas.fleet import InstanceLimits, InstanceSpec, RuntimeHeartbeat
from schemas.routing import RouteLogits, RouteRequest
from schemas.sakana import RuntimeProfile
from schemas.wire import ErrorCode


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
    """Loads the engine (off the event loop), batches requests and serves them on the bus."""

    def __init__(self, nc: Client, settings: ModelRuntimeSettings, *, engine: RouterEngine | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.runtime_id = settings.runtime_id or f"{socket.gethostname()}-{os.getpid()}"
        self.engine = engine
        self.runtime: RouterRuntime | None = None
        self.service: ActorService | None = None

    @property
    def subject(self) -> str:
        """The routing subject this runtime serves."""
        return subjects.route(self.settings.backend, self.settings.adapter)

    async def start(self) -> None:
        """Load the engine if needed, start batching and register the micro service."""
        if self.engine is None:
            settings = msgspec.structs.replace(self.settings, runtime_id=self.runtime_id)
            self.engine = await asyncio.to_thread(RouterEngine.load, settings)
        self.runtime = RouterRuntime(self.engine)
        await self.runtime.start()
        s = self.settings
        endpoint = Endpoint(
            name="route", subject=self.subject, request_type=RouteRequestBody, handler=self._handle,
            queue_group=subjects.QUEUE_RUNTIMES, max_payload_bytes=s.max_payload_bytes,
            max_concurrency=s.max_queue + s.max_batch,
            metadata={"backend": s.backend, "adapter": s.adapter, "profile": s.profile},
        )
        self.service = ActorService(
            self.nc,
            name="trinity-model-runtime", version="0.1.0", endpoints=[endpoint],
            description="TRINITY routing: Qwen3 state at position -2 through the routing head",
            metadata={"runtime_id": self.runtime_id},
        )
        await self.service.start()

    async def _handle(self, body: RouteRequestBody, ctx: RequestContext) -> RouteLogits:
        if self.runtime is None:
            raise Rejected(ErrorCode.UNAVAILABLE, "model runtime is not started", retryable=True)
        try:
            request = body.to_request()
        except SchemaError as e:
            raise Rejected(ErrorCode.INVALID, str(e), details={"field": e.field}) from None
        try:
            result = await self.runtime.route(request)
        except ModelRuntimeError as e:
            raise Rejected(e.code, str(e), retryable=e.retryable) from None
        return msgspec.structs.replace(result, runtime_id=self.runtime_id)

    def stats(self) -> RuntimeStats | None:
        """Batching and cache counters (``None`` before start)."""
        return self.runtime.stats() if self.runtime else None

    def heartbeat(self) -> RuntimeHeartbeat:
        """What this runtime announces: its spec, warm adapter, queue depth and memory."""
        s = self.settings
        st = self.runtime.stats() if self.runtime else None
        return RuntimeHeartbeat(
            runtime_id=self.runtime_id,
            spec=InstanceSpec(
                backend_id=s.backend, base_model=s.checkpoint_dir or s.checkpoint_preset, adapter=s.adapter,
                profile=RuntimeProfile(name=s.profile, backend=s.backend,
                                       device=str(self.engine.device) if self.engine else s.device, dtype=s.dtype),
                limits=InstanceLimits(max_queue=s.max_queue, max_batch=s.max_batch, batch_window_ms=s.batch_window_ms,
                                      max_context_tokens=s.max_context_tokens),
            ),
            warm_adapters=[s.adapter] if self.engine else [],
            queue_depth=st.batcher.queued if st else 0,
            in_flight=st.batcher.in_flight if st else 0,
            rss_mb=_rss_mb(),
            ts=time.time(),
            draining=self.service is None and self.engine is not None,
        )

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking requests, answer the ones in flight (up to ``timeout`` seconds), then stop the worker."""
        if self.service is not None:
            await self.service.drain(timeout=timeout)
            self.service = None
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
