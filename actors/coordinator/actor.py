"""The coordinator actor: serves ``trinity.coord.request`` and runs the pure state machine over the bus.

- Consumes :class:`~schemas.CoordinationRequest` in the ``coordinators`` queue group (a nats ``micro``
  service named ``trinity-coordinator``), replies with the full :class:`~schemas.CoordinationResult`.
- Routing: ``trinity.route.<backend>.<adapter>`` (RouteRequest -> RouteLogits); agents:
  ``trinity.agent.<id>.call`` (AgentCallIntent -> AgentCallReceipt); role injection:
  ``trinity.role.inject`` (``role_inject_mode="bus"``) or an in-process builder passed by the node wiring
  (``"local"``; this package never imports the role injector). Every call has a deadline (the setting,
  capped by the request's remaining ``deadline_ms``) and carries provenance headers (request id, turn,
  causation id = the trace event that led to it, and the caller's W3C trace context).
- Bus failures become the state machine's port errors: a typed error reply keeps its code and
  ``retryable`` flag; a timeout is ``deadline`` (retryable); nobody serving the subject is
  ``unavailable``; an undecodable reply is ``malformed``.
- Idempotency (:mod:`.dedupe`): a duplicate request id joins the running run or gets the cached result;
  the same id with a different payload gets an ``invalid`` error reply. Across the cluster
  (``reply_claims``, :meth:`.jobs.JobIntake.run_claimed`): a request/reply run claims its id in the run journal
  and stores its result like a job, so a duplicate on another coordinator (or a job queued under the id) waits
  for that result instead of running again, and a claim whose coordinator died is taken over and resumed.
- Traces go through :class:`~.tracing.TracePublisher` (bounded buffer, never blocks coordination).
- Durable intake (:mod:`.jobs`, ``jobs_enabled``): jobs from the JetStream work queue ``trinity.coord.jobs``
  run through the same dedupe and state machine; each stores exactly one result on
  ``trinity.coord.result.<request_id>`` and survives the coordinator being killed mid-run: its completed turns
  are journaled (:mod:`.journal`) and a redelivery resumes after the last one.
- Backpressure: an ``overloaded`` route backs off with jitter (the state machine) and halves the job intake
  (:mod:`.intake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgspec
import nats.errors
from nats.aio.client import Client

from actors.coordinator.bounds import bound_result, encoded_size
from actors.coordinator.dedupe import Deduper
from actors.coordinator.errors import (
    AgentCallFailed,
    CoordinatorConfigError,
    DuplicateRequestConflict,
    PortError,
    RoleInjectFailed,
    RouteFailed,
)
from actors.coordinator.jobs import JobIntake
from actors.coordinator.journal import BUCKET, open_bucket
from actors.coordinator.placement import PlacementClient
from actors.coordinator.profiles import DEFAULT_ROLE_PACK, DEFAULT_RULE, VERIFIER_BEFORE_WORKER
from actors.coordinator.spans import RunSpans
from actors.coordinator.state_machine import CallContext, Policy, Ports, Resume, VerifierBeforeWorker, coordinate
from actors.coordinator.tracing import TracePublisher
from bus import metrics, rpc, subjects
from bus.errors import BusError, Rejected, error_contract
from bus.jetstream import (
    ConsumerSpec,
    StreamSpec,
    jobs_consumer_spec,
    jobs_stream_spec,
    results_stream_spec,
    trace_stream_spec,
)
from bus.provenance import Provenance
from bus.service import ActorService, Endpoint, RequestContext, WorkEndpoint
from bus.spans import provider_installed
from bus.storage import StorageError, StorageKeeper
from config.coordinator import CoordinatorSettings
from schemas.coordination import AgentCallIntent, AgentCallReceipt, CoordinationRequest, CoordinationResult
from schemas.redaction import scrub
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.routing import RouteLogits, RouteRequest
from schemas.sakana import RuntimeProfile
from schemas.trace import RouteDeferred, TraceEvent
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

LocalInjector = Callable[[RoleInjectRequest], Awaitable[RoleInjectReply]]
T = TypeVar("T")
E = TypeVar("E", bound=PortError)


def policy_from_settings(s: CoordinatorSettings) -> Policy:
    """The state machine's policy for these settings."""
    vbw = cast(VerifierBeforeWorker, s.verifier_before_worker or VERIFIER_BEFORE_WORKER[s.routing_profile])
    return Policy(
        verifier_before_worker=vbw,
        routing_profile=s.routing_profile,
        route_rule=s.route_rule or DEFAULT_RULE[s.routing_profile],
        route_temperature=s.route_temperature,
        route_seed=s.route_seed,
        profile=RuntimeProfile(agent_margin_floor=s.agent_margin_floor, role_margin_floor=s.role_margin_floor),
        agent_mask=tuple(s.agent_mask) if s.agent_mask is not None else None,
        agent_max_tokens=s.agent_max_tokens,
        temperature=s.agent_temperature,
        route_timeout_s=s.route_timeout_s,
        role_inject_timeout_s=s.role_inject_timeout_s,
        agent_timeout_s=s.agent_timeout_s,
        route_attempts=s.route_attempts,
        fleet_wait_s=s.fleet_wait_s,
        fleet_retry_s=s.fleet_retry_s,
        overload_wait_s=s.overload_wait_s,
        overload_backoff_s=s.overload_backoff_s,
        overload_backoff_max_s=s.overload_backoff_max_s,
        max_fallbacks=s.max_fallbacks,
        role_pack=s.role_pack or DEFAULT_ROLE_PACK[s.routing_profile],
        trace_content=s.trace_content,
    )


def storage_specs(s: CoordinatorSettings) -> tuple[list[StreamSpec], list[tuple[str, ConsumerSpec]]]:
    """The streams and consumers a coordinator keeps in existence: the trace stream (when it traces and
    ``ensure_trace_stream``), and with jobs the work queue, the results stream and the shared job consumer."""
    streams: list[StreamSpec] = []
    consumers: list[tuple[str, ConsumerSpec]] = []
    if s.trace_enabled and s.ensure_trace_stream:
        streams.append(trace_stream_spec(replicas=s.stream_replicas))
    if s.jobs_enabled:
        streams += [jobs_stream_spec(replicas=s.stream_replicas),
                    results_stream_spec(replicas=s.stream_replicas, max_age_s=s.results_max_age_s,
                                        max_bytes=s.results_max_bytes)]
        consumers.append((subjects.JOBS_STREAM, jobs_consumer_spec(
            ack_wait_s=s.jobs_ack_wait_s, max_deliver=s.jobs_max_deliver,
            max_ack_pending=max(1000, 4 * s.jobs_concurrency))))
    return streams, consumers


def fingerprint(req: CoordinationRequest) -> str:
    """sha256 of the request's canonical encoding (what makes two requests with one id identical)."""
    return hashlib.sha256(msgspec.json.encode(req)).hexdigest()


async def _call(nc: Client, subject: str, payload: msgspec.Struct, reply_type: type[T], ctx: CallContext,
                base: Provenance, error: type[E]) -> T:
    prov = Provenance(request_id=ctx.request_id, turn=ctx.turn, causation_id=ctx.causation_id,
                      traceparent=base.traceparent, tracestate=base.tracestate)
    try:
        return await rpc.request(nc, subject, payload, reply_type, timeout=ctx.timeout_s, provenance=prov)
    except BusError as e:
        reply = error_contract(e, subject)
        if reply is None:
            raise
        raise error.from_reply(reply) from None


class CoordinatorActor:
    """A coordinator node (see the module docstring).

    Example:
        >>> actor = CoordinatorActor(nc, CoordinatorSettings())      # doctest: +SKIP
        >>> await actor.start()                                       # doctest: +SKIP
        >>> await actor.drain()                                       # doctest: +SKIP
    """

    def __init__(self, nc: Client, settings: CoordinatorSettings | None = None, *,
                 local_injector: LocalInjector | None = None,
                 placement: PlacementClient | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.nc = nc
        self.settings = settings or CoordinatorSettings()
        if self.settings.role_inject_mode == "local" and local_injector is None:
            raise CoordinatorConfigError("role_inject_mode is 'local' but no local_injector was passed; pass the "
                                         "role injector's builder (run.py does) or use role_inject_mode='bus'")
        self.local_injector = local_injector if self.settings.role_inject_mode == "local" else None
        self.placement = placement  # fleet placement (leases, failover); None: queue-group subject
        self.policy = policy_from_settings(self.settings)
        self.clock, self.wall = clock, wall
        s = self.settings
        self.dedupe: Deduper[CoordinationResult] = Deduper(
            s.dedupe_capacity, s.dedupe_ttl_s, clock, max_bytes=s.dedupe_max_bytes, size=encoded_size,
            max_entry_bytes=max(s.result_max_bytes, s.dedupe_max_bytes // 16))
        js = nc.jetstream()
        buckets = [(BUCKET, lambda: open_bucket(js, replicas=s.stream_replicas, ttl_s=s.results_max_age_s))] \
            if s.jobs_enabled and s.jobs_durable else []
        self.storage = StorageKeeper(js, "coordinator", *storage_specs(s), check_every_s=s.storage_check_s,
                                     buckets=buckets)
        self.traces = TracePublisher(nc.jetstream(), capacity=s.trace_buffer,
                                     publish_timeout_s=s.trace_publish_timeout_s,
                                     enabled=s.trace_enabled, on_stream_missing=self.storage.poke)
        self.traces.spans = provider_installed()  # this process records its runs' spans (see .spans)
        self.service = ActorService(
            nc, name=self.settings.service_name, version="0.1.0",
            description="TRINITY coordinator: route, inject role, call agent, verify, for up to K turns",
            endpoints=[Endpoint(name="coordinate", subject=subjects.coord_request(), request_type=CoordinationRequest,
                                handler=self.handle, queue_group=subjects.QUEUE_COORDINATORS,
                                max_payload_bytes=self.settings.max_request_bytes,
                                max_concurrency=self.settings.max_concurrency)],
            work=[WorkEndpoint(name="jobs", subject=subjects.COORD_JOBS, queue_group=subjects.JOBS_CONSUMER)]
            if self.settings.jobs_enabled else None)
        self.jobs = JobIntake(nc, self.settings, run=self._run_job, emit=self._emit, wall=wall)
        self.deferred_runs = 0  # runs that waited for a runtime to join (route_deferred)
        self._jobs_starter: asyncio.Task[None] | None = None
        self.jobs_started = False

    async def start(self) -> None:
        """Ensure the streams and consumer (see :func:`storage_specs`), start tracing, serve request/reply, then
        take queued jobs. When JetStream storage is unavailable (store too small or full: a typed error is
        logged), request/reply serves anyway and jobs start once the storage keeper has the streams."""
        ok = await self.storage.ensure()
        await self.traces.start()
        metrics.track_pending("coordinator", lambda: self.traces.pending)
        await self.service.start()
        await self.storage.start()
        if self.settings.jobs_enabled:
            if ok:
                await self.jobs.start()
                self.jobs_started = True
            else:
                self._jobs_starter = asyncio.create_task(self._start_jobs_when_storage_ready(),
                                                         name="coordinator.jobs-starter")
        await self.nc.flush()  # the server has our subscriptions before start() returns

    async def _start_jobs_when_storage_ready(self) -> None:
        while True:
            await self.storage.ready.wait()
            try:
                await self.jobs.start()
            except (nats.errors.Error, StorageError, TimeoutError, OSError) as e:
                log.warning("coordinator: job intake could not start yet (%r); retrying", e)
                await asyncio.sleep(self.settings.storage_check_s)
                continue
            self.jobs_started = True
            log.info("coordinator: JetStream storage available; taking queued jobs")
            return

    #: Share of the drain budget kept for flushing the trace publisher after the runs: a run that ends just
    #: before the budget runs out still gets its ``run_finished`` onto the stream before the node abandons this
    #: actor (the runs used to take the whole budget and the flush another one, past the node's deadline).
    TRACE_FLUSH_SHARE = 0.2

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish running ones, flush traces: all within ``timeout`` seconds. Runs get
        the budget less :attr:`TRACE_FLUSH_SHARE` of it (runs still going then are cancelled: their jobs go back
        to the queue); the trace flush gets what is left."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        runs_budget = timeout * (1.0 - self.TRACE_FLUSH_SHARE)
        if self._jobs_starter is not None:
            self._jobs_starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._jobs_starter
        await self.storage.stop()
        if self.settings.jobs_enabled:
            await asyncio.gather(self.service.drain(timeout=runs_budget), self.jobs.drain(timeout=runs_budget))
        else:
            await self.service.drain(timeout=runs_budget)
        if cancelled := self.dedupe.cancel_all():  # past the timeout: their jobs went back to the queue
            log.warning("drain: cancelled %d coordination runs still going after %.1fs", cancelled, runs_budget)
            await asyncio.sleep(0)
        await self.traces.close(timeout=max(0.05, until - loop.time()))

    def stats(self) -> dict[str, Any]:
        """Service, trace, dedupe, job and request/reply claim counters."""
        return {"service": self.service.stats(), "trace": self.traces.counters.as_dict(),
                "dedupe": dict(self.dedupe.stats.__dict__), "cached_results": len(self.dedupe),
                "cached_bytes": self.dedupe.bytes, "storage": self.storage.stats(),
                "jobs": dataclasses.asdict(self.jobs.counters), "deferred_runs": self.deferred_runs,
                "reply_claims": dataclasses.asdict(self.jobs.replies)}

    def watches(self) -> list[LoopWatch]:
        """The inner loops the node watches: the storage keeper, the trace publisher and (once started) the
        job fetch loop."""
        return [self.storage.watch, self.traces.watch, *([self.jobs.watch] if self.settings.jobs_enabled else [])]

    async def handle(self, req: CoordinationRequest, ctx: RequestContext) -> CoordinationResult:
        """Endpoint handler: one coordination run per request id across the cluster (a run of that id on
        another coordinator, queued job or request/reply, is waited on: its stored result answers)."""
        return await self.run_once(req, ctx.provenance, claimed=True)

    async def run_once(self, req: CoordinationRequest, base: Provenance, resume: Resume | None = None, *,
                       claimed: bool = False) -> CoordinationResult:
        """One coordination run per request id (joined or cached for duplicates); a reused id with another
        payload is rejected ``invalid``. Shared by the request/reply endpoint (``claimed``: the run claims its
        id cluster-wide and stores its result, :meth:`.jobs.JobIntake.run_claimed`) and the work queue (which
        passes ``resume``: the job's journal and absolute deadline). The result is scrubbed of credentials
        (:func:`schemas.redaction.scrub`) before anyone sees or stores it."""
        fp = fingerprint(req)

        async def scrubbed(resume: Resume | None) -> CoordinationResult:
            return scrub(await self.run(req, base, resume))

        def work() -> Awaitable[CoordinationResult]:
            return self.jobs.run_claimed(req, fp, base, scrubbed) if claimed else self.run(req, base, resume)

        try:
            result = await self.dedupe.run(req.request_id, fp, work)
            return scrub(result)  # replied and stored: no credential typed in the question or echoed in an error
        except DuplicateRequestConflict as e:
            raise Rejected(e.code, e.message) from None  # jobs read Rejected as "another payload runs this id"

    async def _run_job(self, req: CoordinationRequest, base: Provenance,
                       resume: Resume | None = None) -> CoordinationResult:
        """A work-queue job: one run (resumed from its journal), counted and timed as the service's ``jobs``
        endpoint, its result trimmed to ``result_max_bytes`` before it is stored."""
        async with self.service.job("jobs"):
            return bound_result(await self.run_once(req, base, resume), self.settings.result_max_bytes)

    async def _emit(self, event: TraceEvent, traceparent: str | None = None) -> None:
        """Count ``event`` in the process's metrics, then queue it for the trace stream (``traceparent``: the
        recorded span it belongs to)."""
        metrics.observe_event(event)
        await self.traces.emit(event, traceparent=traceparent)

    def ports(self, base: Provenance, spans: RunSpans | None = None) -> Ports:
        """Bus-backed ports for one run (``base`` carries the caller's trace context; each call runs in a
        CLIENT span of ``spans``, the run's spans, whose context the call carries)."""
        nc = self.nc
        run_spans = spans if spans is not None else RunSpans(base.request_id, base)

        async def route_once(req: RouteRequest, ctx: CallContext) -> RouteLogits:
            with run_spans.call("trinity.coordinator.route", ctx.turn, {"trinity.backend": req.backend,
                                                                         "trinity.adapter": req.adapter}):
                return await _route(req, ctx)

        async def _route(req: RouteRequest, ctx: CallContext) -> RouteLogits:
            if self.placement is not None:
                prov = Provenance(request_id=ctx.request_id, turn=ctx.turn, causation_id=ctx.causation_id,
                                  traceparent=base.traceparent, tracestate=base.tracestate)
                return await self.placement.route(req, ctx.timeout_s, provenance=prov)
            logits = await _call(nc, subjects.route(req.backend, req.adapter), req, RouteLogits, ctx, base,
                                 RouteFailed)
            if logits.request_id != req.request_id or logits.turn != req.turn:
                raise RouteFailed(ErrorCode.UPSTREAM, f"runtime answered request {logits.request_id!r} turn "
                                  f"{logits.turn}, asked {req.request_id!r} turn {req.turn}")
            return logits

        async def route(req: RouteRequest, ctx: CallContext) -> RouteLogits:
            try:
                return await route_once(req, ctx)
            except RouteFailed as e:
                if e.code is ErrorCode.OVERLOADED:
                    self.jobs.intake.overloaded()  # the runtimes are at capacity: take fewer queued jobs at once
                raise

        async def inject(req: RoleInjectRequest, ctx: CallContext) -> RoleInjectReply:
            if self.local_injector is not None:
                return await self.local_injector(req)
            with run_spans.call("trinity.coordinator.role_inject", ctx.turn, {}):
                return await _call(nc, subjects.ROLE_INJECT, req, RoleInjectReply, ctx, base, RoleInjectFailed)

        async def call_agent(intent: AgentCallIntent, ctx: CallContext) -> AgentCallReceipt:
            with run_spans.call("trinity.coordinator.agent_call", ctx.turn, {"trinity.agent_id": intent.agent_id}):
                return await _call(nc, subjects.agent_call(intent.agent_id), intent, AgentCallReceipt, ctx, base,
                                   AgentCallFailed)

        async def emit(event: TraceEvent) -> None:
            if isinstance(event, RouteDeferred) and event.attempt == 1:
                self.deferred_runs += 1
                log.info("run %s turn %d waits for a runtime (%s); retrying every %.1fs for up to %.0fs",
                         event.request_id, event.turn, event.message, event.retry_in_s,
                         (event.wait_limit_s or 0.0) - event.waited_s)
            await self._emit(event, traceparent=run_spans.on_event(event))

        return Ports(route=route, inject=inject, call_agent=call_agent, emit=emit, clock=self.clock,
                     wall=self.wall)

    async def run(self, req: CoordinationRequest, base: Provenance | None = None,
                  resume: Resume | None = None) -> CoordinationResult:
        """Run one coordination (no dedupe): the state machine over bus-backed ports, in a run span parented
        by ``base``'s trace context (:mod:`.spans`); ``resume`` continues a journaled job."""
        base = base or Provenance(request_id=req.request_id)
        spans = RunSpans(req.request_id, base, adapter=req.adapter)
        try:
            result = await coordinate(req, self.ports(base, spans), self.policy, resume)
        except BaseException as e:
            spans.close(e)
            raise
        spans.finish(result)
        return result
