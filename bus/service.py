"""Actors as nats.py ``micro`` services: typed endpoints, bounded concurrency, typed errors, drain.

An :class:`ActorService` registers a micro service (discoverable with ``$SRV.PING``, ``$SRV.INFO``,
``$SRV.STATS``) whose endpoints decode requests strictly into a msgspec contract, run the handler as its
own task (so one slow request does not hold the subscription), and reply with the encoded result. Bad
input never stops an endpoint: oversized or malformed payloads, handler rejections and handler crashes
all become typed :class:`~schemas.wire.ErrorReply` answers (when the message has a reply subject) and are
counted in the endpoint's stats. A handler raises any :class:`~bus.errors.ContractError` (an actor's own error
class or :class:`~bus.errors.Rejected`); its ``to_reply()`` is what goes back, mapped here and nowhere else.

``$SRV.STATS`` reports what the handlers did, not what nats.py's dispatch saw: ``num_requests`` counts every
request received, ``processing_time`` / ``average_processing_time`` (ns) time each request from receipt to its
reply (the handler task included), ``num_errors`` / ``last_error`` count every error reply. Work that does not
arrive as a request (a JetStream work queue, a trace consumer) is declared as a :class:`WorkEndpoint` and run
inside :meth:`ActorService.job`: it is listed by ``$SRV.INFO`` and counted and timed in ``$SRV.STATS`` like a
request endpoint, without a core-NATS subscription. Every request and job is also counted in the process's
Prometheus metrics (:mod:`bus.metrics`).

Example:
    >>> async def echo(req: Message, ctx: RequestContext) -> Message:
    ...     return req
    >>> svc = ActorService(nc, name="echo", endpoints=[Endpoint("echo", "demo.echo", Message, echo)])
    >>> await svc.start()                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointInfo, EndpointStats, Service, ServiceConfig, ServiceInfo, ServiceStats

from bus import metrics
from bus.codec import DEFAULT_MAX_BYTES, decode, encode
from bus.errors import ContractError, MalformedPayload, PayloadTooLarge
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
class WorkEndpoint:
    """Work that reaches an actor other than as a request (a JetStream work queue, a trace consumer).

    Listed by ``$SRV.INFO`` (``subject`` names where the work comes from, ``queue_group`` the durable
    consumer sharing it) and counted and timed in ``$SRV.STATS``; run each unit of work inside
    :meth:`ActorService.job`. No core-NATS subscription is made for it.
    """

    name: str
    subject: str
    queue_group: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class EndpointCounters:
    """Per-endpoint counters exported in the micro ``STATS`` data (``processing_ns``: total time of the
    ``timed`` requests, receipt to reply)."""

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
    timed: int = 0
    processing_ns: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a plain dict."""
        return dict(self.__dict__)

    @property
    def errors(self) -> int:
        """Requests answered (or dropped) with an error."""
        return self.rejected + self.malformed + self.too_large + self.overloaded + self.draining + self.crashed


class _HandlerTimedService(Service):
    """A micro service whose STATS and INFO come from :class:`ActorService`'s counters (see the module
    docstring): nats.py times only its dispatch callback, which returns before the handler task runs."""

    def __init__(self, nc: Client, config: ServiceConfig, owner: ActorService) -> None:
        super().__init__(nc, config)
        self._owner = owner

    def stats(self) -> ServiceStats:
        base = super().stats()
        owner = self._owner
        endpoints: list[EndpointStats] = []
        for st in base.endpoints:
            c = owner.counters.get(st.name)
            if c is not None:
                _fill(st, c, owner.last_errors.get(st.name))
            endpoints.append(st)
        for w in owner.work_endpoints:
            c = owner.counters[w.name]
            st = EndpointStats(name=w.name, subject=w.subject, queue_group=w.queue_group, num_requests=0,
                               num_errors=0, processing_time=0, average_processing_time=0)
            _fill(st, c, owner.last_errors.get(w.name))
            st.data = c.as_dict()
            endpoints.append(st)
        base.endpoints = endpoints
        return base

    def info(self) -> ServiceInfo:
        base = super().info()
        base.endpoints = [*base.endpoints, *(EndpointInfo(name=w.name, subject=w.subject, queue_group=w.queue_group,
                                                          metadata=w.metadata) for w in self._owner.work_endpoints)]
        return base


def _fill(st: EndpointStats, c: EndpointCounters, last_error: str | None) -> None:
    st.num_requests = c.received
    st.num_errors = c.errors
    st.processing_time = c.processing_ns
    st.average_processing_time = c.processing_ns // c.timed if c.timed else 0
    st.last_error = last_error



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
                 description: str = "", metadata: dict[str, str] | None = None,
                 work: list[WorkEndpoint] | None = None) -> None:
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self.endpoints = endpoints
        self.work_endpoints: list[WorkEndpoint] = list(work or [])
        names = [ep.name for ep in endpoints] + [w.name for w in self.work_endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"service {name}: endpoint names must be unique, got {names}")
        self.counters: dict[str, EndpointCounters] = {n: EndpointCounters() for n in names}
        self.last_errors: dict[str, str] = {}
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
        config = ServiceConfig(name=self.name, version=self.version, description=self.description or None,
                               metadata=self.metadata or None, stats_handler=self._stats_data)
        self._service = _HandlerTimedService(self.nc, config, self)
        await self._service.start()
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

    def _record(self, endpoint: str, counters: EndpointCounters, started_ns: int, outcome: str) -> None:
        """Time one request or job (receipt to reply) in STATS and in the Prometheus metrics."""
        elapsed = time.perf_counter_ns() - started_ns
        counters.timed += 1
        counters.processing_ns += elapsed
        metrics.ENDPOINT_REQUESTS.labels(service=self.name, endpoint=endpoint, outcome=outcome).inc()
        metrics.ENDPOINT_SECONDS.labels(service=self.name, endpoint=endpoint).observe(elapsed / 1e9)
        if outcome != "ok":
            self.last_errors[endpoint] = outcome
            metrics.ERRORS.labels(source=f"{self.name}/{endpoint}", code=outcome).inc()

    def record(self, name: str, started_ns: int, outcome: str = "ok") -> None:
        """Count one finished unit of work of the :class:`WorkEndpoint` ``name`` that began at ``started_ns``
        (``time.perf_counter_ns()``) and ended with ``outcome`` (``ok`` or an error code), for work whose end
        is not a block of code (e.g. an HTTP response streamed by a server)."""
        counters = self._work_counters(name)
        counters.received += 1
        if outcome == "ok":
            counters.ok += 1
        else:
            counters.rejected += 1
        self._record(name, counters, started_ns, outcome)

    def _work_counters(self, name: str) -> EndpointCounters:
        counters = self.counters.get(name)
        if counters is None or name not in {w.name for w in self.work_endpoints}:
            raise KeyError(f"service {self.name} has no work endpoint {name!r}; declare it in work=[WorkEndpoint(...)]")
        return counters

    @contextlib.asynccontextmanager
    async def job(self, name: str) -> AsyncIterator[None]:
        """Count and time one unit of work of the :class:`WorkEndpoint` ``name``: an exception leaving the
        block counts as ``internal`` (cancellation as ``unavailable``); a :class:`~bus.errors.ContractError`
        (:class:`~bus.errors.Rejected` or an actor's own error) counts as its own code.

        Example:
            >>> async with service.job("jobs"):     # doctest: +SKIP
            ...     await run(job)
        """
        counters = self._work_counters(name)
        started = time.perf_counter_ns()
        counters.received += 1
        counters.in_flight += 1
        gauge = metrics.ENDPOINT_IN_FLIGHT.labels(service=self.name, endpoint=name)
        gauge.inc()
        outcome = "ok"
        try:
            yield
        except ContractError as e:
            counters.rejected += 1
            outcome = e.code.value
            raise
        except asyncio.CancelledError:
            counters.crashed += 1
            outcome = ErrorCode.UNAVAILABLE.value
            raise
        except Exception:
            counters.crashed += 1
            outcome = ErrorCode.INTERNAL.value
            raise
        else:
            counters.ok += 1
        finally:
            counters.in_flight -= 1
            gauge.dec()
            self._record(name, counters, started, outcome)

    def _dispatcher(self, ep: Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        counters = self.counters[ep.name]

        async def dispatch(req: Request) -> None:
            started = time.perf_counter_ns()
            counters.received += 1
            if self._draining:
                counters.draining += 1
                await self._reply_error(counters, req, ErrorReply(code=ErrorCode.DRAINING, retryable=True,
                                                        message=f"{self.name} is draining; retry on another replica"))
                self._record(ep.name, counters, started, ErrorCode.DRAINING.value)
                return
            if counters.in_flight >= ep.max_concurrency:
                counters.overloaded += 1
                await self._reply_error(counters, req, ErrorReply(
                    code=ErrorCode.OVERLOADED, retryable=True,
                    message=f"{self.name}/{ep.name} has {counters.in_flight} requests in flight "
                            f"(limit {ep.max_concurrency}); retry later or add replicas"))
                self._record(ep.name, counters, started, ErrorCode.OVERLOADED.value)
                return
            counters.in_flight += 1
            task = asyncio.create_task(self._serve(ep, counters, req, started), name=f"{self.name}.{ep.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return dispatch

    async def _serve(self, ep: Endpoint[Any], counters: EndpointCounters, req: Request, started: int) -> None:
        gauge = metrics.ENDPOINT_IN_FLIGHT.labels(service=self.name, endpoint=ep.name)
        gauge.inc()
        outcome = ErrorCode.UNAVAILABLE.value  # stays so only when cancelled
        try:
            outcome = await self._serve_one(ep, counters, req)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave an exception in a task nobody awaits ("never retrieved")
            counters.crashed += 1
            outcome = ErrorCode.INTERNAL.value
            log.exception("serving %s/%s failed outside its handler", self.name, ep.name)
        finally:
            counters.in_flight -= 1
            gauge.dec()
            self._record(ep.name, counters, started, outcome)

    async def _serve_one(self, ep: Endpoint[Any], counters: EndpointCounters, req: Request) -> str:
        """Serve one request; returns its outcome (``ok`` or the error code replied)."""
        try:
            body = decode(req.data, ep.request_type, max_bytes=ep.max_payload_bytes, subject=req.subject)
        except PayloadTooLarge as e:
            counters.too_large += 1
            await self._reply_error(counters, req, ErrorReply(code=ErrorCode.TOO_LARGE, message=str(e),
                                                              details={"size": str(e.size), "limit": str(e.limit)}))
            return ErrorCode.TOO_LARGE.value
        except MalformedPayload as e:  # decode() turns every decode failure (bad UTF-8 included) into this
            counters.malformed += 1
            await self._reply_error(counters, req, ErrorReply(code=ErrorCode.MALFORMED, message=str(e)))
            return ErrorCode.MALFORMED.value
        headers = dict(req.headers or {})
        ctx = RequestContext(subject=req.subject, headers=headers, provenance=Provenance.from_headers(headers),
                             received_at=time.time())
        try:
            result = await ep.handler(body, ctx)
        except ContractError as e:  # the one place an error crossing the bus becomes its ErrorReply
            counters.rejected += 1
            reply = e.to_reply()
            await self._reply_error(counters, req, reply)
            return reply.code.value
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
            return ErrorCode.INTERNAL.value
        counters.ok += 1
        if result is None or not req._msg.reply:
            return "ok"
        data = encode(result)
        try:
            await req.respond(data)
        except nats.errors.MaxPayloadError:
            counters.too_large += 1
            await self._reply_error(counters, req, ErrorReply(
                code=ErrorCode.TOO_LARGE, details={"size": str(len(data))},
                message=f"{self.name}/{ep.name}: the reply of {len(data)} bytes exceeds the server's max_payload "
                        "(ask for less, or raise max_payload on the server)"))
            return ErrorCode.TOO_LARGE.value
        except (nats.errors.Error, OSError) as e:
            log.warning("could not reply on %s/%s: %r", self.name, ep.name, e)
        return "ok"

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
