"""Publish trace events to JetStream without ever blocking coordination.

:meth:`TracePublisher.emit` only appends to a bounded in-memory queue: when the queue is full the event is
dropped and counted (``dropped``), and coordination goes on. One background task drains the queue in
batches, publishing each batch in order with pipelined acks (``publish_async``) on
``trinity.trace.<request_id>.<kind>``, the event id as ``Nats-Msg-Id`` (JetStream dedupes retries) and the
event's provenance as headers: request id, turn, causation id and, when the run's spans are recorded, the
``traceparent`` of the span the event belongs to plus ``Trinity-Spans: 1`` (the trace sink then leaves the
run's spans to the coordinator instead of rebuilding them from the events; with :attr:`spans` set, every
event carries that header, those of the job intake too). Events of one request reach the stream in the
order they were emitted, except after a failure: publishes that fail or get no ack within
``publish_timeout_s`` (a NATS server dying, a stream electing a new leader) are retried with backoff for up
to ``retry_window_s`` seconds (by default six publish timeouts: long enough for a reconnect and a leader
election), and only then counted (``failed``). A retry of an event that was in fact stored is dropped by
JetStream's dedupe. A permanent failure (a subject or payload the server can never take, a message over the
stream's size limit) is not retried: it is counted ``refused`` at once, and it never holds one of nats-py's
async publish slots (:func:`bus.storage.publish_async`). A publish that finds no stream pokes the storage
keeper (``on_stream_missing``), which recreates the stream, and is retried. The publishing loop is watched
(:attr:`TracePublisher.watch`): if it dies, or publishes nothing while events wait, its actor restarts.

Example:
    >>> pub = TracePublisher(js, capacity=10_000)            # doctest: +SKIP
    >>> await pub.start()                                    # doctest: +SKIP
    >>> await pub.emit(event)                                # never blocks   # doctest: +SKIP
    >>> await pub.close(timeout=5.0)                         # flush, then stop # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from bus import subjects
from bus.codec import encode
from bus.jetstream import MSG_ID_HEADER
from bus.provenance import SPANS, Provenance
from bus.storage import PublishRefused, StorageError, StreamMissing, publish_async, storage_error
from schemas.redaction import scrub
from schemas.trace import TraceEvent
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

BATCH = 512


class _Queued(NamedTuple):
    event: TraceEvent
    traceparent: str | None  # the recorded span the event belongs to
    spans: bool  # the run's spans are recorded by this process (``Trinity-Spans: 1``)


@dataclass
class TraceCounters:
    """Events accepted into the buffer, published (acked), dropped on overflow, failed to publish (after
    retries), refused for good (not retried)."""

    emitted: int = 0
    published: int = 0
    dropped: int = 0
    failed: int = 0
    refused: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a plain dict."""
        return dict(self.__dict__)


class TracePublisher:
    """Bounded, non-blocking trace sink feeding JetStream (see the module docstring)."""

    def __init__(self, js: JetStreamContext, *, capacity: int, publish_timeout_s: float = 5.0,
                 enabled: bool = True, retry_window_s: float | None = None,
                 on_stream_missing: Callable[[], None] | None = None) -> None:
        self.js = js
        self.enabled = enabled
        self.capacity = capacity
        self.publish_timeout_s = publish_timeout_s
        self.retry_window_s = 6 * publish_timeout_s if retry_window_s is None else retry_window_s
        self.counters = TraceCounters()
        self.spans = False  # this process records its runs' spans: every event says so (``Trinity-Spans: 1``)
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_stream_missing = on_stream_missing
        self._in_flight = 0  # events of the batch being published
        self.watch = LoopWatch("coordinator trace publisher", pending=self._waiting,
                               stall_after_s=self.retry_window_s + 4 * publish_timeout_s)

    async def _waiting(self) -> int:
        return self._queue.qsize() + self._in_flight

    @property
    def pending(self) -> int:
        """Events waiting in the buffer."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the background publishing task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace-publisher")
            self.watch.attach(self._task)

    async def emit(self, event: TraceEvent, *, traceparent: str | None = None) -> None:
        """Queue ``event`` for publishing; drop and count it when the buffer is full. Never blocks.

        ``traceparent``: the recorded span the event belongs to (sent with ``Trinity-Spans: 1``).
        A disabled publisher ignores events (nothing is counted)."""
        if not self.enabled:
            return
        try:
            event = scrub(event)  # the raw stream is read by `tail` and by every sink: no credential reaches it
        except msgspec.ValidationError as e:
            self.counters.dropped += 1
            log.warning("trace event %s (%s) dropped: scrubbing a credential broke it (%s)", event.event_id,
                        event.kind, e)
            return
        try:
            self._queue.put_nowait(_Queued(event, traceparent, bool(traceparent) or self.spans))
        except asyncio.QueueFull:
            self.counters.dropped += 1
            return
        self.counters.emitted += 1
        self._idle.clear()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = len(batch)
            await self._publish(batch)
            self._in_flight = 0
            self.watch.progress()
            if self._queue.empty():
                self._idle.set()

    async def _publish(self, batch: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_window_s
        pending, attempt = batch, 0
        while True:
            pending = await self._publish_once(pending)
            if not pending:
                return
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(self.publish_timeout_s, 0.25 * 2 ** attempt))
            attempt += 1
        self.counters.failed += len(pending)
        log.warning("%d trace events not stored after %d tries in %.0fs (is stream %s there?); first: %s (%s)",
                    len(pending), attempt + 1, self.retry_window_s, subjects.TRACE_STREAM, pending[0][0].event_id,
                    pending[0][0].kind)

    def _permanent(self, ev: TraceEvent, err: StorageError) -> None:
        self.counters.refused += 1
        log.warning("trace event %s (%s) refused for good, not retried: %s", ev.event_id, ev.kind, err)

    def _retryable(self, err: BaseException) -> bool:
        """False for a permanent failure (counted and logged); True when a retry may succeed."""
        typed = err if isinstance(err, StorageError) else storage_error(err)
        if isinstance(typed, StreamMissing) and self.on_stream_missing is not None:
            self.on_stream_missing()
        return not isinstance(typed, PublishRefused)

    async def _publish_once(self, batch: list[_Queued]) -> list[_Queued]:
        """Publish ``batch`` with pipelined acks; returns the events that failed and may succeed on a retry."""
        failed: list[_Queued] = []
        sent: list[tuple[_Queued, asyncio.Future[PubAck]]] = []
        for item in batch:
            ev, traceparent, spans = item
            headers = Provenance(request_id=ev.request_id, turn=ev.turn, causation_id=ev.causation_id,
                                 traceparent=traceparent).to_headers()
            headers[MSG_ID_HEADER] = ev.event_id
            if spans:
                headers[SPANS] = "1"
            try:
                subject = subjects.trace(ev.request_id, ev.kind)
            except subjects.InvalidSubjectToken as e:
                self._permanent(ev, PublishRefused(str(e)))
                continue
            try:
                fut = await publish_async(self.js, subject, encode(ev), wait_stall=self.publish_timeout_s,
                                          headers=headers)
            except PublishRefused as e:
                self._permanent(ev, e)
                continue
            except (TimeoutError, nats.errors.Error, OSError) as e:
                log.debug("trace event %s (%s) not published: %r", ev.event_id, ev.kind, e)
                if self._retryable(e):
                    failed.append(item)
                else:
                    self._permanent(ev, storage_error(e) or PublishRefused(str(e)))
                continue
            sent.append((item, fut))
        if not sent:
            return failed
        done, pending = await asyncio.wait([f for _, f in sent], timeout=self.publish_timeout_s)
        for fut in pending:
            fut.cancel()  # gives its publish slot back
        for item, fut in sent:
            if fut in done and not fut.cancelled() and fut.exception() is None:
                self.counters.published += 1
                continue
            exc = fut.exception() if fut in done and not fut.cancelled() else None
            if exc is not None and not self._retryable(exc):
                self._permanent(item.event, storage_error(exc) or PublishRefused(str(exc)))
            else:
                failed.append(item)
        return failed

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued event was published (or failed); False when ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the task (events still queued are counted dropped)."""
        await self.flush(timeout)
        self.watch.detach()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.counters.dropped += self._queue.qsize()
