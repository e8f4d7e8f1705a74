"""Durable intake: coordination jobs from the JetStream work queue, each stored as exactly one result.

A client publishes a :class:`~schemas.CoordinationRequest` on ``trinity.coord.jobs`` (stream
``TRINITY_JOBS``, work-queue retention, ``Nats-Msg-Id`` = request id so a resubmission is stored once) and
waits on ``trinity.coord.result.<request_id>``. Every coordinator binds the shared durable pull consumer
``coordinators``, so each job is delivered to one of them at a time:

1. A job whose result is already stored (a redelivery after the result was written but before the ack)
   is acknowledged without running again.
2. A redelivered job (``num_delivered > 1``: its previous coordinator died or stalled) emits a
   ``run_redelivered`` trace event, then runs again from the start.
3. While the run is alive the job is kept with in-progress acks every third of ``jobs_ack_wait_s``; a
   coordinator killed mid-run stops sending them and JetStream redelivers the job to another one after
   ``jobs_ack_wait_s``.
4. The outcome is stored on the results stream (one message per subject, a second one refused; the
   request id as ``Nats-Msg-Id``), then the job is acknowledged. A result is either a
   :class:`~schemas.CoordinationResult` or, for a job that cannot run (malformed, too large, crashed
   handler on its last delivery), an :class:`~schemas.wire.ErrorReply` carrying the bus's error headers.
   A job reusing the id of a run still going here with another payload is dropped (the running one's
   result answers that id).
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
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

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
from bus.provenance import Provenance
from bus.rpc import error_headers
from bus.service import finish_or_cancel
from bus.storage import AlreadyStored, StreamMissing, storage_error
from config.coordinator import CoordinatorSettings
from schemas.coordination import CoordinationRequest, CoordinationResult
from schemas.trace import RunFailed, RunRedelivered, TraceEvent
from schemas.wire import ErrorCode, ErrorReply
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

RunOnce = Callable[[CoordinationRequest, Provenance], Awaitable[CoordinationResult]]
Emit = Callable[[TraceEvent], Awaitable[None]]

_FETCH_BATCH = 64
_STORE_ATTEMPTS = 5


@dataclass
class JobCounters:
    """Jobs fetched, results stored (ok results and error results), jobs found already done, redeliveries
    seen, malformed jobs, jobs refused for reusing a running id with another payload, jobs handed back
    (nak), jobs that ran out of deliveries, failed result stores, jobs terminated because their
    ``Nats-Msg-Id`` was not their request id."""

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
        self._sub = await self._js.pull_subscribe_bind(durable=subjects.JOBS_CONSUMER, stream=subjects.JOBS_STREAM)
        self._advisories = await self.nc.subscribe(subjects.max_deliveries_advisory(),
                                                   queue=subjects.QUEUE_COORDINATORS, cb=self._on_exhausted)
        metrics.JOBS_RUNNING.set_function(lambda: len(self._tasks))
        self._loop_task = asyncio.create_task(self._fetch_loop(), name="coordinator.jobs")
        self.watch.attach(self._loop_task)  # type: ignore[arg-type]
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
            free = self.settings.jobs_concurrency - len(self._tasks)
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
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        try:
            if delivery > 1:
                self.counters.redelivered += 1
                await self.emit(RunRedelivered(request_id=rid, event_id=uuid.uuid4().hex, causation_id=rid,
                                               ts=self.wall(), delivery=delivery,
                                               max_deliver=self.settings.jobs_max_deliver, stream_seq=seq))
            outcome: CoordinationResult | ErrorReply
            try:
                outcome = await self.run_once(req, prov)
            except Rejected as e:
                # the id is running here with another payload: its own result will answer this id; an error
                # stored now would take the place of that result
                self.counters.conflicts += 1
                log.warning("job #%d refused: %s", seq, e.reply.message)
                await self._settle(msg, term=True)
                return
            except asyncio.CancelledError:
                await self._requeue(msg, 0)  # draining past its timeout: hand the job to another coordinator
                raise
            except Exception as e:  # a coordinator bug must not lose the job
                log.exception("job %s (delivery %d) crashed", rid, delivery)
                if delivery < self.settings.jobs_max_deliver:
                    await self._requeue(msg, 1.0)
                    return
                outcome = ErrorReply(code=ErrorCode.INTERNAL, message=f"coordination of {rid} failed on its last "
                                     f"delivery ({delivery}): {type(e).__name__}")
            if await self._store(rid, outcome, prov):
                await self._settle(msg)
            else:
                await self._requeue(msg, 1.0)
        finally:
            keepalive.cancel()

    async def _keep_in_progress(self, msg: Msg) -> None:
        period = self.settings.jobs_ack_wait_s / 3.0
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()

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

    async def _store(self, rid: str, outcome: CoordinationResult | ErrorReply, prov: Provenance) -> bool:
        """Store the one result of ``rid``. True when it is stored (now or before)."""
        headers = prov.to_headers()
        headers[MSG_ID_HEADER] = rid
        if isinstance(outcome, ErrorReply):
            headers.update(error_headers(outcome))
        data = encode(outcome)
        for attempt in range(1, _STORE_ATTEMPTS + 1):
            try:
                ack = await self._js.publish(subjects.coord_result(rid), data, stream=subjects.RESULTS_STREAM,
                                             headers=headers, timeout=5.0)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
                typed = storage_error(e, subject=subjects.coord_result(rid), stream=subjects.RESULTS_STREAM)
                if isinstance(typed, AlreadyStored):
                    self.counters.already_done += 1
                    return True  # another delivery stored it first: exactly one result stands
                log.warning("storing the result of %s failed (%s), attempt %d", rid, typed or repr(e), attempt)
                if typed is not None and not isinstance(typed, StreamMissing):
                    break  # full, too small or refused: retrying now cannot help; the job is handed back
            else:
                if ack.duplicate:  # the same result id within the dedupe window: already stored
                    self.counters.already_done += 1
                elif isinstance(outcome, ErrorReply):
                    self.counters.errors += 1
                else:
                    self.counters.results += 1
                return True
            await asyncio.sleep(min(2.0, 0.25 * 2 ** attempt))
        self.counters.store_failed += 1
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
        else:
            log.warning("job #%d ran out of deliveries and carries no request id; removing it", seq)
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            await self._js.delete_msg(subjects.JOBS_STREAM, seq)
