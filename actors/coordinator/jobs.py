"""Durable intake: coordination jobs from the JetStream work queue, each stored as exactly one result.

A client publishes a :class:`~schemas.CoordinationRequest` on ``trinity.coord.jobs`` (stream
``TRINITY_JOBS``, work-queue retention, ``Nats-Msg-Id`` = request id so a resubmission is stored once) and
waits on ``trinity.coord.result.<request_id>``. Every coordinator binds the shared durable pull consumer
``coordinators``, so each job is delivered to one of them at a time:

1. A job whose result is already stored (a redelivery after the result was written but before the ack)
   is acknowledged without running again.
2. The run is claimed in the run journal (:mod:`.journal`, ``jobs_durable``): one owner and term per running
   id across the cluster, a lease renewed with every in-progress ack, each completed turn recorded before
   the run goes on. A redelivered job (``num_delivered > 1``: its previous coordinator died or stalled)
   emits a ``run_redelivered`` trace event, then resumes after its last completed turn (no agent whose
   receipt was recorded is called again). The coordinator it was taken from stops at its next journal
   write or call (:class:`~.journal.Superseded`) and leaves the job alone (no ack, no nak).
3. While the run is alive the job is kept with in-progress acks every third of ``jobs_ack_wait_s``; a
   coordinator killed mid-run stops sending them and JetStream redelivers the job to another one after
   ``jobs_ack_wait_s``. The job's deadline is absolute: the ``Trinity-Deadline-At`` header its client set
   (else the time it was queued plus its ``deadline_ms``), kept in the journal, so it does not restart on a
   redelivery.
4. The outcome is stored on the results stream (one message per subject, a second one refused; the
   request id as ``Nats-Msg-Id``), then the job is acknowledged. A result is either a
   :class:`~schemas.CoordinationResult` or, for a job that cannot run (malformed, too large, crashed
   handler on its last delivery), an :class:`~schemas.wire.ErrorReply` carrying the bus's error headers.
   A job reusing the id of a run still going here with another payload is dropped (the running one's
   result answers that id).
4b. Backpressure: a run whose routes stay ``overloaded`` for ``jobs_requeue_after_s`` goes back to the queue
   with a jittered delay (nak) while deliveries are left (its completed turns stay journaled); otherwise it
   keeps backing off within its deadline. The jobs taken at once follow the runtimes' capacity
   (:class:`~.intake.IntakeLimit`).
4c. Request/reply runs (:meth:`JobIntake.run_claimed`) claim their id in the same journal (owner
   ``<owner>-rr``) and store their result on the same subject, so a job queued under an id that a
   request/reply run holds waits for (and then acknowledges) that result, and the other way round.
5. A job that ran out of deliveries (``jobs_max_deliver``; JetStream's max-deliveries advisory, taken by
   one coordinator of the queue group) gets an explicit ``unavailable`` error result and a ``run_failed``
   trace event (``deliveries_exhausted``), and is removed from the queue: no request is lost silently.

Example:
    >>> intake = JobIntake(nc, settings, run=run_once, emit=traces.emit)   # doctest: +SKIP
    >>> await intake.start()                                               # doctest: +SKIP
    >>> await intake.drain(timeout=10.0)                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from actors.coordinator.bounds import bound_result
from actors.coordinator.intake import IntakeLimit
from actors.coordinator.journal import (
    JournalHandle,
    LeaseHeld,
    Superseded,
    claim,
    node_owner,
    open_bucket,
)
from actors.coordinator.state_machine import Resume, RunDeferred
from bus import metrics, subjects
from bus.codec import decode, encode, peek_request_id
from bus.errors import MalformedPayload, PayloadTooLarge, Rejected
from bus.jetstream import (
    MSG_ID_HEADER,
    ensure_consumer,
    ensure_stream,
    jobs_consumer_spec,
    jobs_stream_spec,
    results_stream_spec,
)
from bus.provenance import DEADLINE_AT, Provenance
from bus.rpc import error_from_headers, error_headers
from bus.service import finish_or_cancel
from bus.storage import AlreadyStored, StreamMissing, storage_error
from config.coordinator import CoordinatorSettings
from schemas.coordination import CoordinationRequest, CoordinationResult, TurnRecord
from schemas.trace import RunFailed, RunRedelivered, TraceEvent
from schemas.wire import ErrorCode, ErrorReply
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

RunOnce = Callable[[CoordinationRequest, Provenance, Resume | None], Awaitable[CoordinationResult]]
RunResumed = Callable[[Resume | None], Awaitable[CoordinationResult]]
Emit = Callable[[TraceEvent], Awaitable[None]]

_FETCH_BATCH = 64
_STORE_ATTEMPTS = 5
_REPLY_STORE_ATTEMPTS = 2  # a caller is waiting: a result that cannot be stored soon is replied unstored
REPLY_POLL_S = 0.2  # how often a request/reply caller waiting on another coordinator's run looks for its result
#: header of a stored result: the sha256 fingerprint of the request it answers (another payload: ``invalid``)
FINGERPRINT_HEADER = "Trinity-Request-Fingerprint"


@dataclass
class JobCounters:
    """Jobs fetched, results stored (ok results and error results), jobs found already done, redeliveries
    seen, malformed jobs, jobs refused for reusing a running id with another payload, jobs handed back
    (nak), jobs that ran out of deliveries, failed result stores, jobs terminated because their
    ``Nats-Msg-Id`` was not their request id, runs resumed from the journal and the turns they skipped, runs
    stopped here because another coordinator took them over, deliveries that waited for another owner's
    lease, jobs handed back because the runtimes were overloaded."""

    received: int = 0
    results: int = 0
    errors: int = 0
    already_done: int = 0
    redelivered: int = 0
    malformed: int = 0
    conflicts: int = 0
    requeued: int = 0
    exhausted: int = 0
    store_failed: int = 0
    id_mismatch: int = 0
    resumed: int = 0
    resumed_turns: int = 0
    superseded: int = 0
    lease_waits: int = 0
    deferred: int = 0


@dataclass
class ReplyCounters:
    """Request/reply runs under a cluster-wide claim (:meth:`JobIntake.run_claimed`): runs claimed here, of them
    resumed from journaled turns, answered with a result another coordinator stored (after waiting on its live
    claim, or stored before), refused for another payload under a live or stored id, runs stopped here because
    another coordinator took the claim over, results stored, results not stored (replied anyway), and runs made
    without a claim (no journal: JetStream storage unavailable)."""

    claimed: int = 0
    resumed: int = 0
    joined: int = 0
    conflicts: int = 0
    superseded: int = 0
    stored: int = 0
    store_failed: int = 0
    local: int = 0


def job_deadline(headers: dict[str, str], queued_at: float, req: CoordinationRequest) -> float | None:
    """The job's absolute deadline (epoch seconds): the client's ``Trinity-Deadline-At`` header, else the time
    it was queued plus its budget's ``deadline_ms``; ``None`` when the budget has no deadline."""
    if req.budget.deadline_ms is None:
        return None
    own = queued_at + req.budget.deadline_ms / 1000.0
    try:
        stated = float(headers.get(DEADLINE_AT, ""))
    except ValueError:
        return own
    # a client's clock may be off, but never grants more than the budget from when the job was queued
    return min(stated, own) if stated == stated else own


def _valid_request_id(text: str | None) -> str | None:
    if not text:
        return None
    try:
        subjects.token("request_id", text)
    except subjects.InvalidSubjectToken:
        return None
    return text


class JobIntake:
    """The coordinator's work-queue consumer (see the module docstring)."""

    def __init__(self, nc: Client, settings: CoordinatorSettings, *, run: RunOnce, emit: Emit,
                 wall: Callable[[], float] = time.time) -> None:
        self.nc = nc
        self.settings = settings
        self.run_once = run
        self.emit = emit
        self.wall = wall
        self.counters = JobCounters()
        self._js: JetStreamContext = nc.jetstream()
        self._sub: JetStreamContext.PullSubscription | None = None
        self._advisories: Subscription | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._first_round = asyncio.Event()
        self.owner = node_owner()
        self.reply_owner = f"{self.owner}-rr"  # request/reply runs: never taken for one of this node's jobs
        self.replies = ReplyCounters()
        self._claims_down = False  # a "running without a claim" warning was logged; cleared once claims work
        self._kv: KeyValue | None = None
        # runs owned here: their claim (a handle once claimed) and how many deliveries use it
        self._held: dict[str, tuple[asyncio.Future[JournalHandle | None], int]] = {}
        self.intake = IntakeLimit(settings.jobs_concurrency, adaptive=settings.jobs_adaptive_intake)
        self.watch = LoopWatch("coordinator job fetch loop", stall_after_s=settings.jobs_stall_after_s,
                               pending=self.pending)

    async def start(self) -> None:
        """Ensure the jobs and results streams and the shared consumer, then start fetching."""
        s = self.settings
        await ensure_stream(self._js, jobs_stream_spec(replicas=s.stream_replicas))
        await ensure_stream(self._js, results_stream_spec(replicas=s.stream_replicas, max_age_s=s.results_max_age_s,
                                                          max_bytes=s.results_max_bytes))
        await ensure_consumer(self._js, subjects.JOBS_STREAM,
                              jobs_consumer_spec(ack_wait_s=s.jobs_ack_wait_s, max_deliver=s.jobs_max_deliver,
                                                 max_ack_pending=max(1000, 4 * s.jobs_concurrency)))
        if s.jobs_durable:
            self._kv = await open_bucket(self._js, replicas=s.stream_replicas, ttl_s=s.results_max_age_s)
        self._sub = await self._js.pull_subscribe_bind(durable=subjects.JOBS_CONSUMER, stream=subjects.JOBS_STREAM)
        self._advisories = await self.nc.subscribe(subjects.max_deliveries_advisory(),
                                                   queue=subjects.QUEUE_COORDINATORS, cb=self._on_exhausted)
        metrics.JOBS_RUNNING.set_function(lambda: len(self._tasks))
        self._loop_task = asyncio.create_task(self._fetch_loop(), name="coordinator.jobs")
        self.watch.attach(self._loop_task)
        first = asyncio.ensure_future(self._first_round.wait())
        await asyncio.wait({first, self._loop_task}, timeout=30.0, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():  # serving means consuming: the first fetch round trip must come back
            first.cancel()
            await self.watch.check()
            raise TimeoutError(f"no fetch round trip on {subjects.JOBS_STREAM}/{subjects.JOBS_CONSUMER} within 30 s")

    async def pending(self) -> int:
        """Jobs the shared consumer has not delivered yet (one JetStream API round trip)."""
        info = await self._js.consumer_info(subjects.JOBS_STREAM, subjects.JOBS_CONSUMER, timeout=5.0)
        return int(info.num_pending or 0)

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop fetching; let running jobs finish up to ``timeout``; jobs still running are handed back."""
        self._stopping = True
        self.watch.detach()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # withdraw the outstanding pull request first, or the server would hand a job given back below to
        # this draining node's inbox again (and it would sit there until the ack wait ran out)
        if self._sub is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
                await self.nc.flush(timeout=2)
        self._sub = None
        if self._tasks:
            await finish_or_cancel(self._tasks, timeout)
        if self._advisories is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._advisories.unsubscribe()

    @property
    def running(self) -> int:
        """Jobs currently running on this node."""
        return len(self._tasks)

    async def _fetch_loop(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            free = min(self.settings.jobs_concurrency, self.intake.value) - len(self._tasks)
            if free <= 0:  # at capacity: take more work only when a job finishes
                self.watch.progress()  # busy, not stuck
                await asyncio.wait(set(self._tasks), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await self._sub.fetch(batch=min(free, _FETCH_BATCH), timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                self._first_round.set()
                self.watch.progress()
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                if self.nc.is_closed:
                    return
                log.warning("fetching coordination jobs failed (%r); retrying", e)
                await asyncio.sleep(0.5)
                continue
            self._first_round.set()
            for msg in msgs:
                task = asyncio.create_task(self._process(msg), name="coordinator.job")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self.watch.progress()

    async def _process(self, msg: Msg) -> None:
        self.counters.received += 1
        meta = msg.metadata
        metrics.JOBS_PENDING.set(meta.num_pending)
        delivery, seq = meta.num_delivered, meta.sequence.stream
        headers = dict(msg.headers or {})
        try:
            req = decode(msg.data, CoordinationRequest, max_bytes=self.settings.max_request_bytes,
                         subject=subjects.COORD_JOBS)
        except (MalformedPayload, PayloadTooLarge) as e:
            self.counters.malformed += 1
            code = ErrorCode.TOO_LARGE if isinstance(e, PayloadTooLarge) else ErrorCode.MALFORMED
            rid = _valid_request_id(headers.get(MSG_ID_HEADER))
            # never answer for another id: a body naming one is dropped (one too large to read names none)
            if rid is not None and (code is ErrorCode.TOO_LARGE or peek_request_id(msg.data) in (None, rid)):
                await self._store(rid, ErrorReply(code=code, message=str(e)), Provenance(request_id=rid))
            else:
                log.warning("dropped job #%d: %s (and no valid Nats-Msg-Id equal to its id to answer on)", seq, e)
            await self._settle(msg, term=True)
            return
        if headers.get(MSG_ID_HEADER) != req.request_id:  # it would dedupe away the job that owns its Nats-Msg-Id
            self.counters.id_mismatch += 1
            log.warning("terminated job #%d: its Nats-Msg-Id %r is not its request_id %r; nothing stored", seq,
                        headers.get(MSG_ID_HEADER), req.request_id)
            await self._settle(msg, term=True)
            return
        rid = req.request_id
        prov = Provenance.from_headers(headers)
        prov = Provenance(request_id=rid, turn=prov.turn, causation_id=prov.causation_id or rid,
                          traceparent=prov.traceparent, tracestate=prov.tracestate)
        if await self._stored(rid):
            self.counters.already_done += 1
            await self._settle(msg)
            return
        queued_at = meta.timestamp.timestamp() if meta.timestamp is not None else self.wall()
        deadline_at = job_deadline(headers, queued_at, req)
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        handle: JournalHandle | None = None
        try:
            held = self._held.get(rid)
            if held is None:
                claimed: asyncio.Future[JournalHandle | None] = asyncio.get_running_loop().create_future()
                self._held[rid] = (claimed, 1)
                try:
                    claimed.set_result(await self._claim(req, deadline_at))
                except asyncio.CancelledError:
                    claimed.cancel()
                    raise
                except Exception as e:
                    claimed.set_exception(e)
                    claimed.exception()  # retrieved: joined copies re-raise it
                    raise
            else:  # a second copy of a job running here: it joins that run (same owner and term)
                claimed = held[0]
                self._held[rid] = (claimed, held[1] + 1)
            handle = await asyncio.shield(claimed)
            if handle is None:  # its owner elsewhere stored the result while this copy waited
                self.counters.already_done += 1
                await self._settle(msg)
                return
            guard_task = keepalive
            keepalive = asyncio.create_task(self._keep_in_progress(msg, handle))
            guard_task.cancel()
            resume = self._resume(handle, delivery)
            if delivery > 1:
                self.counters.redelivered += 1
                await self.emit(RunRedelivered(request_id=rid, event_id=uuid.uuid4().hex, causation_id=rid,
                                               ts=self.wall(), delivery=delivery,
                                               max_deliver=self.settings.jobs_max_deliver, stream_seq=seq))
            if resume.turns:
                self.counters.resumed += 1
                self.counters.resumed_turns += len(resume.turns)
                log.info("job %s (delivery %d) resumes after %d completed turns", rid, delivery, len(resume.turns))
            outcome: CoordinationResult | ErrorReply
            try:
                outcome = await self.run_once(req, prov, resume)
                self.intake.finished()
            except Superseded as e:
                # a newer delivery owns the run now: its coordinator stores the result and settles the job
                self.counters.superseded += 1
                log.warning("job #%d: %s", seq, e)
                return
            except RunDeferred as e:
                self.counters.deferred += 1
                log.info("job #%d: %s", seq, e)
                delay = self.settings.jobs_requeue_delay_s * (0.5 + random.random())
                await handle.hand_back()
                await self._requeue(msg, delay)
                return
            except Rejected as e:
                # the id is running here with another payload: its own result will answer this id; an error
                # stored now would take the place of that result
                self.counters.conflicts += 1
                log.warning("job #%d refused: %s", seq, e.reply.message)
                await self._settle(msg, term=True)
                return
            except asyncio.CancelledError:
                await handle.hand_back()
                await self._requeue(msg, 0)  # draining past its timeout: hand the job to another coordinator
                raise
            except Exception as e:  # a coordinator bug must not lose the job
                log.exception("job %s (delivery %d) crashed", rid, delivery)
                if delivery < self.settings.jobs_max_deliver:
                    await handle.hand_back()
                    await self._requeue(msg, 1.0)
                    return
                outcome = ErrorReply(code=ErrorCode.INTERNAL, message=f"coordination of {rid} failed on its last "
                                     f"delivery ({delivery}): {type(e).__name__}")
            try:
                await handle.confirm()  # still the owner: only then store (a taken-over run stores nothing)
            except Superseded as e:
                self.counters.superseded += 1
                log.warning("job #%d: %s", seq, e)
                return
            if await self._store(rid, outcome, prov, fingerprint=handle.state.fingerprint):
                await self._settle(msg)
                await handle.release()
            else:
                await handle.hand_back()
                await self._requeue(msg, 1.0)
        finally:
            keepalive.cancel()
            if rid in self._held:
                claimed, users = self._held[rid]
                if users <= 1:
                    del self._held[rid]
                else:
                    self._held[rid] = (claimed, users - 1)

    async def run_claimed(self, req: CoordinationRequest, fingerprint: str, prov: Provenance,
                          run: RunResumed) -> CoordinationResult:
        """A request/reply run of ``req`` under a cluster-wide claim of its id (the run journal):

        - a result stored for the id (a finished job or request/reply run) answers at once;
        - a live claim of another coordinator (a job or a request/reply run) with the same fingerprint is waited
          on (its stored result answers), for at most the request's ``deadline_ms`` (else 120 s; then
          ``deadline``, retryable); another payload under the live id is refused ``invalid``;
        - otherwise this coordinator claims the id (a lease of ``jobs_ack_wait_s``, renewed every third of it)
          and runs it, journaling each completed turn; a claim whose lease ran out (its coordinator died) is
          taken over and the run resumes after its last journaled turn;
        - the result (scrubbed by ``run``) is stored trimmed to ``result_max_bytes`` on
          ``trinity.coord.result.<request_id>``, then the claim is deleted; a run that raised (or was cancelled)
          ends its lease at once, so a waiting coordinator takes it over.

        Without the journal (jobs or ``reply_claims`` off, JetStream storage not ready, the bucket failing) the
        run goes on here without a claim, as before (one warning per outage; counted in ``replies.local``)."""
        s = self.settings
        rid = req.request_id
        if self._kv is None or not (s.jobs_durable and s.reply_claims):
            if s.jobs_enabled and s.jobs_durable and s.reply_claims:
                self._run_unclaimed(rid, "the run journal is not open: JetStream storage is not ready")
            return await run(None)
        prov = Provenance(request_id=rid, turn=prov.turn, causation_id=prov.causation_id or rid,
                          traceparent=prov.traceparent, tracestate=prov.tracestate)
        loop = asyncio.get_running_loop()
        wait_s = (req.budget.deadline_ms or 120_000) / 1000.0
        until = loop.time() + wait_s
        deadline_at = self.wall() + wait_s if req.budget.deadline_ms is not None else None
        while True:
            handle = await self._claim(req, deadline_at, fp=fingerprint, owner=self.reply_owner, until=until,
                                       poll_s=REPLY_POLL_S)
            stored = await self._stored_result(rid, fingerprint)  # also after a claim: it may have just finished
            if stored is not None:
                if handle is not None:
                    await handle.release()
                self.replies.joined += 1
                return stored
            if handle is None:  # seen stored, then not readable: look again (bounded by the deadline)
                if loop.time() >= until:
                    raise Rejected(ErrorCode.DEADLINE, f"the stored result of request id {rid} could not be read "
                                   f"within {wait_s:.0f}s", retryable=True)
                await asyncio.sleep(REPLY_POLL_S)
                continue
            if not handle.durable:
                self._run_unclaimed(rid, "the run journal could not be written")
                return await run(None)
            self._claims_down = False
            self.replies.claimed += 1
            if handle.state.turns:
                self.replies.resumed += 1
                log.info("request %s resumes after %d journaled turns (its claim's lease had run out)", rid,
                         len(handle.state.turns))
            keepalive = asyncio.create_task(self._keep_in_progress(None, handle))
            try:
                try:
                    result = await run(self._resume(handle, None))
                except Superseded as e:  # this run's lease lapsed and another coordinator took the id over
                    self.replies.superseded += 1
                    log.warning("request %s: %s; waiting for its result", rid, e)
                    continue
                except BaseException:
                    await handle.hand_back()  # a waiting coordinator takes it over (and resumes) at once
                    raise
                try:
                    await handle.confirm()
                except Superseded as e:  # the new owner stores its own result; this caller gets this one
                    self.replies.superseded += 1
                    log.warning("request %s: %s; replying with this run's result, unstored", rid, e)
                    return result
                if await self._store(rid, bound_result(result, s.result_max_bytes), prov, fingerprint=fingerprint,
                                     attempts=_REPLY_STORE_ATTEMPTS, job=False):
                    self.replies.stored += 1
                    await handle.release()
                else:
                    self.replies.store_failed += 1
                    await handle.hand_back()  # a duplicate takes the claim and replays the journaled turns
                return result
            finally:
                keepalive.cancel()

    def _run_unclaimed(self, rid: str, why: str) -> None:
        self.replies.local += 1
        if not self._claims_down:
            self._claims_down = True
            log.warning("request %s runs here without a cluster-wide claim (%s); until claims work again, the same "
                        "id sent to another coordinator may run there too", rid, why)

    async def _stored_result(self, rid: str, fingerprint: str) -> CoordinationResult | None:
        """The result stored for ``rid`` (``None``: none, or unreadable now). Raises :class:`~bus.errors.Rejected`:
        ``invalid`` when it answers another payload, the stored error for an error result."""
        try:
            raw = await self._js.get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(rid))
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
            log.warning("could not read the stored result of %s (%r)", rid, e)
            return None
        stored_fp = (raw.headers or {}).get(FINGERPRINT_HEADER)
        if stored_fp is not None and stored_fp != fingerprint:
            self.replies.conflicts += 1
            raise Rejected(ErrorCode.INVALID, f"request id {rid} already has a stored result for another payload; "
                           "use a new request id")
        err = error_from_headers(raw.data or b"", raw.headers)
        if err is not None:
            raise Rejected.from_reply(err)
        return decode(raw.data or b"", CoordinationResult, max_bytes=16 * 1_048_576,
                      subject=subjects.coord_result(rid))

    async def _claim(self, req: CoordinationRequest, deadline_at: float | None, *, fp: str | None = None,
                     owner: str | None = None, until: float | None = None,
                     poll_s: float | None = None) -> JournalHandle | None:
        """Own the run of ``req`` in the journal (resume point, lease); ``None`` when its result got stored
        while waiting. Another owner's live lease is waited out (the job kept with in-progress acks): while
        that owner renews it, until its result is stored; once the entry stops changing for two ack waits
        (its owner stopped, whatever the clocks say) the run is taken over.

        A request/reply caller passes ``until`` (loop time): it waits no longer (then ``deadline``), is refused
        ``invalid`` at once when the live claim is for another payload, and looks every ``poll_s``."""
        s = self.settings
        kv = self._kv if s.jobs_durable else None
        fp = fp or hashlib.sha256(msgspec.json.encode(req)).hexdigest()
        rid = req.request_id
        loop = asyncio.get_running_loop()
        seen_rev, seen_at, force = -1, loop.time(), False
        while True:
            try:
                return await claim(kv, request_id=rid, fingerprint=fp, owner=owner or self.owner,
                                   now=self.wall(), lease_s=s.jobs_ack_wait_s, deadline_at=deadline_at, force=force)
            except LeaseHeld as e:
                if until is not None:
                    if e.fingerprint != fp:
                        self.replies.conflicts += 1
                        raise Rejected(ErrorCode.INVALID, f"request id {rid} is running on another coordinator with "
                                       "another payload; use a new request id") from None
                    if loop.time() >= until:
                        raise Rejected(ErrorCode.DEADLINE, f"request id {rid} runs on another coordinator ({e.owner}) "
                                       "and its result was not stored before this request's deadline",
                                       retryable=True) from None
                else:
                    self.counters.lease_waits += 1
                if e.revision != seen_rev:
                    seen_rev, seen_at = e.revision, loop.time()
                force = loop.time() - seen_at > 2 * s.jobs_ack_wait_s
                if not force:
                    await asyncio.sleep(min(max(e.left_s, 0.0) + 0.05, s.jobs_ack_wait_s / 3.0,
                                            poll_s if poll_s is not None else float("inf")))
                if await self._stored(rid):
                    return None

    def _resume(self, handle: JournalHandle, delivery: int | None) -> Resume:
        """The run's :class:`~.state_machine.Resume` over ``handle`` (``delivery``: the job's; ``None`` for a
        request/reply run, which waits out an overload instead of going back to a queue)."""
        s = self.settings
        lease_s = s.jobs_ack_wait_s

        async def guard() -> None:
            # lease ran out here (this process was paused, or renewals failed): re-check ownership with a write
            # before calling anything, so a run taken over elsewhere calls no agent here
            if self.wall() >= handle.state.lease_until - lease_s / 3.0:
                await handle.renew(self.wall() + lease_s)

        async def record(turn: TurnRecord, rng_state: list[int] | None, cause: str) -> None:
            await handle.record_turn(turn, rng_state=rng_state, cause=cause)

        state = handle.state
        return Resume(turns=list(state.turns), rng_state=state.rng_state, cause=state.cause,
                      deadline_at=state.deadline_at, record=record, guard=guard,
                      requeue_after_s=s.jobs_requeue_after_s
                      if delivery is not None and delivery + 1 < s.jobs_max_deliver else None)

    async def _keep_in_progress(self, msg: Msg | None, handle: JournalHandle | None = None) -> None:
        period = self.settings.jobs_ack_wait_s / 3.0
        while True:
            await asyncio.sleep(period)
            if msg is not None:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await msg.in_progress()
            if handle is not None:
                try:
                    await handle.renew(self.wall() + self.settings.jobs_ack_wait_s)
                except Superseded:
                    return  # the run's next call or write stops it

    async def _settle(self, msg: Msg, *, term: bool = False) -> None:
        """Acknowledge (or terminate) a job. A lost ack is harmless: the redelivered job finds its stored
        result and is acknowledged then."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await (msg.term() if term else msg.ack())

    async def _requeue(self, msg: Msg, delay: float) -> None:
        self.counters.requeued += 1
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak(delay=delay or None)

    async def _stored(self, rid: str) -> bool:
        """True when a result for ``rid`` is already on the results stream."""
        try:
            await self._js.get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(rid))
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
            log.warning("could not check for a stored result of %s (%r); running it", rid, e)
            return False
        return True

    async def _store(self, rid: str, outcome: CoordinationResult | ErrorReply, prov: Provenance, *,
                     fingerprint: str | None = None, attempts: int = _STORE_ATTEMPTS, job: bool = True) -> bool:
        """Store the one result of ``rid`` (``fingerprint``: of the request it answers, in a header). True when it
        is stored (now or before). ``job=False`` (a request/reply result) leaves the job counters alone."""
        headers = prov.to_headers()
        headers[MSG_ID_HEADER] = rid
        if fingerprint is not None:
            headers[FINGERPRINT_HEADER] = fingerprint
        if isinstance(outcome, ErrorReply):
            headers.update(error_headers(outcome))
        data = encode(outcome)
        counters = self.counters if job else JobCounters()  # a request/reply store counts in ReplyCounters
        for attempt in range(1, attempts + 1):
            try:
                ack = await self._js.publish(subjects.coord_result(rid), data, stream=subjects.RESULTS_STREAM,
                                             headers=headers, timeout=5.0)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
                typed = storage_error(e, subject=subjects.coord_result(rid), stream=subjects.RESULTS_STREAM)
                if isinstance(typed, AlreadyStored):
                    counters.already_done += 1
                    return True  # another delivery stored it first: exactly one result stands
                log.warning("storing the result of %s failed (%s), attempt %d", rid, typed or repr(e), attempt)
                if typed is not None and not isinstance(typed, StreamMissing):
                    break  # full, too small or refused: retrying now cannot help; the job is handed back
            else:
                if ack.duplicate:  # the same result id within the dedupe window: already stored
                    counters.already_done += 1
                elif isinstance(outcome, ErrorReply):
                    counters.errors += 1
                else:
                    counters.results += 1
                return True
            if attempt < attempts:
                await asyncio.sleep(min(2.0, 0.25 * 2 ** attempt))
        counters.store_failed += 1
        return False

    async def _on_exhausted(self, msg: Msg) -> None:
        """JetStream gave up on a job (``jobs_max_deliver`` deliveries): store an explicit failure."""
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable max-deliveries advisory: %r", msg.data[:200])
            return
        try:
            job = await self._js.get_msg(subjects.JOBS_STREAM, seq)
        except nats.js.errors.NotFoundError:
            return  # acknowledged (or removed) meanwhile
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
            log.warning("could not read exhausted job #%d (%r)", seq, e)
            return
        rid = _valid_request_id((job.headers or {}).get(MSG_ID_HEADER))
        if rid is None:
            rid = _valid_request_id(peek_request_id(job.data or b"{}"))
        self.counters.exhausted += 1
        if rid is not None:
            message = (f"job {rid} was delivered {deliveries} times without finishing (its coordinators stopped "
                       "mid-run); it will not run again: resubmit it under a new request id")
            prov = Provenance(request_id=rid, causation_id=rid)
            if not await self._store(rid, ErrorReply(code=ErrorCode.UNAVAILABLE, message=message, retryable=True),
                                     prov):
                return  # leave the job; the next advisory or an operator can retry
            await self.emit(RunFailed(request_id=rid, event_id=uuid.uuid4().hex, causation_id=rid, ts=self.wall(),
                                      error_code="deliveries_exhausted", message=message))
            if self._kv is not None:  # its journal will not be resumed
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError):
                    await self._kv.delete(rid)
        else:
            log.warning("job #%d ran out of deliveries and carries no request id; removing it", seq)
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            await self._js.delete_msg(subjects.JOBS_STREAM, seq)
