"""Actors as nats.py ``micro`` services: typed endpoints, bounded concurrency, typed errors, drain.

An :class:`ActorService` registers a micro service (discoverable with ``$SRV.PING``, ``$SRV.INFO``,
``$SRV.STATS``) whose endpoints decode requests strictly into a msgspec contract, run the handler as its
own task (so one slow request does not hold the subscription), and reply with the encoded result. Bad
input never stops an endpoint: oversized or malformed payloads, handler rejections and handler crashes
all become typed :class:`~schemas.wire.ErrorReply` answers (when the message has a reply subject) and are
counted in the endpoint's stats.

Example:
    >>> async def echo(req: Message, ctx: RequestContext) -> Message:
    ...     return req
    >>> svc = ActorService(nc, name="echo", endpoints=[Endpoint("echo", "demo.echo", Message, echo)])
    >>> await svc.start()                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from bus.codec import DEFAULT_MAX_BYTES, decode, encode
from bus.errors import MalformedPayload, PayloadTooLarge, Rejected
from bus.provenance import Provenance
from bus.rpc import error_headers
from schemas.wire import ErrorCode, ErrorReply

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RequestContext:
    """What a handler knows about the message besides its decoded body."""

    subject: str
    headers: Mapping[str, str]
    provenance: Provenance
    received_at: float


Handler = Callable[[T, RequestContext], Awaitable[Any]]


@dataclass
class Endpoint(Generic[T]):
    """One endpoint: subject, request contract, handler and its limits.

    ``handler`` returns a Struct (encoded as the reply) or ``None`` (no reply, e.g. for events).
    ``max_concurrency`` bounds in-flight handler tasks; over it the request is answered ``overloaded``.
    """

    name: str
    subject: str
    request_type: type[T]
    handler: Handler[T]
    queue_group: str | None = None
    max_payload_bytes: int = DEFAULT_MAX_BYTES
    max_concurrency: int = 1024
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class EndpointCounters:
    """Per-endpoint counters exported in the micro ``STATS`` data."""

    received: int = 0
    ok: int = 0
    rejected: int = 0
    malformed: int = 0
    too_large: int = 0
    overloaded: int = 0
    draining: int = 0
    crashed: int = 0
    dropped: int = 0
    in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a plain dict."""
        return dict(self.__dict__)



async def finish_or_cancel(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """Wait up to ``timeout`` seconds for ``tasks``; cancel the ones still running, wait for them to unwind,
    and return them (empty when everything finished in time)."""
    _done, pending = await asyncio.wait(set(tasks), timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return pending

class ActorService:
    """A micro service wrapping typed endpoints; see the module docstring."""

    def __init__(self, nc: Client, *, name: str, endpoints: list[Endpoint[Any]], version: str = "0.1.0",
                 description: str = "", metadata: dict[str, str] | None = None) -> None:
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self.endpoints = endpoints
        self.counters: dict[str, EndpointCounters] = {ep.name: EndpointCounters() for ep in endpoints}
        self._tasks: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self._draining = False

    @property
    def service(self) -> Service:
        """The underlying nats micro service (after :meth:`start`)."""
        if self._service is None:
            raise RuntimeError(f"service {self.name} is not started; await start() first")
        return self._service

    @property
    def in_flight(self) -> int:
        """Handler tasks currently running."""
        return len(self._tasks)

    async def start(self) -> None:
        """Register the micro service and subscribe every endpoint."""
        self._service = await add_service(self.nc, name=self.name, version=self.version,
                                          description=self.description or None, metadata=self.metadata or None,
                                          stats_handler=self._stats_data)
        for ep in self.endpoints:
            await self._service.add_endpoint(name=ep.name, subject=ep.subject, queue_group=ep.queue_group,
                                             handler=self._dispatcher(ep), metadata=ep.metadata or None)
        await self.nc.flush()  # the server knows our subscriptions before start() returns

    async def add_endpoint(self, ep: Endpoint[Any]) -> None:
        """Add and subscribe an endpoint to the running service (e.g. a runtime that loaded an adapter)."""
        if ep.name in self.counters:
            raise ValueError(f"service {self.name} already has an endpoint named {ep.name!r}")
        self.endpoints.append(ep)
        self.counters[ep.name] = EndpointCounters()
        await self.service.add_endpoint(name=ep.name, subject=ep.subject, queue_group=ep.queue_group,
                                        handler=self._dispatcher(ep), metadata=ep.metadata or None)
        await self.nc.flush()

    async def remove_endpoint(self, name: str) -> None:
        """Unsubscribe and forget endpoint ``name`` (requests already running finish; unknown names are ignored)."""
        self.endpoints = [ep for ep in self.endpoints if ep.name != name]
        self.counters.pop(name, None)
        svc = self.service
        for mep in list(svc._endpoints):  # nats.micro has no public removal; unsubscribe as Service.stop() does
            if mep._name == name:
                await mep._stop()
                svc._endpoints.remove(mep)
        await self.nc.flush()

    def _stats_data(self, stats: EndpointStats) -> dict[str, Any]:
        c = self.counters.get(stats.name)
        return c.as_dict() if c else {}

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of every endpoint."""
        return {name: c.as_dict() for name, c in self.counters.items()}

    def _dispatcher(self, ep: Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        counters = self.counters[ep.name]

        async def dispatch(req: Request) -> None:
            counters.received += 1
            if self._draining:
                counters.draining += 1
                await self._reply_error(counters, req, ErrorReply(code=ErrorCode.DRAINING, retryable=True,
                                                        message=f"{self.name} is draining; retry on another replica"))
                return
            if counters.in_flight >= ep.max_concurrency:
                counters.overloaded += 1
                await self._reply_error(counters, req, ErrorReply(
                    code=ErrorCode.OVERLOADED, retryable=True,
                    message=f"{self.name}/{ep.name} has {counters.in_flight} requests in flight "
                            f"(limit {ep.max_concurrency}); retry later or add replicas"))
                return
            counters.in_flight += 1
            task = asyncio.create_task(self._serve(ep, counters, req), name=f"{self.name}.{ep.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return dispatch

    async def _serve(self, ep: Endpoint[Any], counters: EndpointCounters, req: Request) -> None:
        try:
            await self._serve_one(ep, counters, req)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave an exception in a task nobody awaits ("never retrieved")
            counters.crashed += 1
            log.exception("serving %s/%s failed outside its handler", self.name, ep.name)
        finally:
            counters.in_flight -= 1

    async def _serve_one(self, ep: Endpoint[Any], counters: EndpointCounters, req: Request) -> None:
        try:
            body = decode(req.data, ep.request_type, max_bytes=ep.max_payload_bytes, subject=req.subject)
        except PayloadTooLarge as e:
            counters.too_large += 1
            await self._reply_error(counters, req, ErrorReply(code=ErrorCode.TOO_LARGE, message=str(e),
                                                              details={"size": str(e.size), "limit": str(e.limit)}))
            return
        except MalformedPayload as e:  # decode() turns every decode failure (bad UTF-8 included) into this
            counters.malformed += 1
            await self._reply_error(counters, req, ErrorReply(code=ErrorCode.MALFORMED, message=str(e)))
            return
        headers = dict(req.headers or {})
        ctx = RequestContext(subject=req.subject, headers=headers, provenance=Provenance.from_headers(headers),
                             received_at=time.time())
        try:
            result = await ep.handler(body, ctx)
        except Rejected as e:
            counters.rejected += 1
            await self._reply_error(counters, req, e.reply)
            return
        except asyncio.CancelledError:
            counters.crashed += 1
            await self._reply_error(counters, req, ErrorReply(code=ErrorCode.UNAVAILABLE, retryable=True,
                                                              message=f"{self.name} stopped while serving the request"))
            raise
        except Exception as e:  # a handler bug must not take the endpoint down
            counters.crashed += 1
            log.exception("handler %s/%s crashed", self.name, ep.name)
            await self._reply_error(counters, req, ErrorReply(
                code=ErrorCode.INTERNAL, message=f"{self.name}/{ep.name} failed: {type(e).__name__}"))
            return
        counters.ok += 1
        if result is None or not req._msg.reply:
            return
        data = encode(result)
        try:
            await req.respond(data)
        except nats.errors.MaxPayloadError:
            counters.too_large += 1
            await self._reply_error(counters, req, ErrorReply(
                code=ErrorCode.TOO_LARGE, details={"size": str(len(data))},
                message=f"{self.name}/{ep.name}: the reply of {len(data)} bytes exceeds the server's max_payload "
                        "(ask for less, or raise max_payload on the server)"))
        except (nats.errors.Error, OSError) as e:
            log.warning("could not reply on %s/%s: %r", self.name, ep.name, e)

    async def _reply_error(self, counters: EndpointCounters, req: Request, reply: ErrorReply) -> None:
        if not req._msg.reply:
            counters.dropped += 1
            log.warning("dropped message on %s without reply subject: %s", req.subject, reply.message)
            return
        try:
            await req.respond(encode(reply), headers=error_headers(reply))
        except (nats.errors.Error, OSError) as e:
            counters.dropped += 1
            log.warning("could not send a %s error reply on %s: %r", reply.code.value, req.subject, e)

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking work, let in-flight handlers finish (up to ``timeout``), then stop the service."""
        self._draining = True
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            pending = await finish_or_cancel(self._tasks, timeout)
            if pending:
                log.warning("%s: cancelled %d requests still running after %.1fs drain", self.name, len(pending),
                            timeout)

    async def stop(self) -> None:
        """Alias of :meth:`drain` with a short timeout."""
        await self.drain(timeout=1.0)
