"""The trace sink actor: a durable JetStream pull consumer on ``TRINITY_TRACE`` feeding :class:`TraceSink`.

Every message is decoded strictly as a :data:`~schemas.trace.TraceEvent` (bad ones are counted and
terminated, so they are not redelivered), offered to the sink (redaction, bounded export queues) with the
W3C ``traceparent`` from its headers, and acked. The stream is created if missing (never reconfigured:
its replicas and limits belong to the node's setup). Several sinks may share the durable name: JetStream
spreads the messages among them.

``start()`` returns once the first fetch round trip came back (the sink is consuming, not just
subscribed). The fetch loop survives every fetch error, including the plain ``TimeoutError`` nats-py's
``fetch`` raises when a round trip outlives its own deadline (an event loop that was busy for about
``fetch_timeout_s``; before this was caught it ended the loop silently and the sink consumed nothing
while still reporting ``serving``). :meth:`watches` hands the loop to the node: if it dies anyway, or
consumes nothing for ``stall_after_s`` while the consumer has messages pending, the actor is restarted.

The sink is a nats ``micro`` service (``trinity-trace-sink``): ``$SRV.INFO`` lists its ``events`` work
endpoint (the filter subject, the durable consumer) and ``$SRV.STATS`` counts and times every event consumed.

Example:
    >>> actor = TraceSinkActor(nc, TraceSinkSettings())   # doctest: +SKIP
    >>> await actor.start(); ...; await actor.drain()     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from actors.trace_sink.sink import TraceSink
from bus import metrics, subjects
from bus.codec import decode
from bus.errors import MalformedPayload, PayloadTooLarge, Rejected
from bus.jetstream import ConsumerSpec, StreamSpec
from bus.provenance import SPANS, Provenance
from bus.service import ActorService, WorkEndpoint
from bus.storage import StorageKeeper
from config.trace_sink import TraceSinkSettings
from schemas.trace import TraceEvent
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

#: The trace sink's nats micro service name.
SERVICE_NAME = "trinity-trace-sink"


class TraceSinkActor:
    """Consumes the trace stream into a :class:`TraceSink`."""

    def __init__(self, nc: Client, settings: TraceSinkSettings, *, sink: TraceSink | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.sink = sink if sink is not None else TraceSink(settings)
        self.consumed = 0
        self.malformed = 0
        self.fetch_errors = 0
        self.caught_up = 0
        self._stopping = False
        self._consuming = False  # the fetch loop is consuming a batch it fetched (the drain lets it finish)
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._first_round: asyncio.Event = asyncio.Event()
        self._binder: asyncio.Task[None] | None = None
        self.storage: StorageKeeper | None = None  # made by start()
        self.watch = LoopWatch(f"trace sink fetch loop ({settings.durable})", stall_after_s=settings.stall_after_s,
                               pending=self.pending)
        self.service = ActorService(nc, name=SERVICE_NAME, endpoints=[],
                                    description="TRINITY trace sink: trace stream to JSONL/OTLP, redacted",
                                    work=[WorkEndpoint(name="events", subject=settings.filter_subject,
                                                       queue_group=settings.durable)])

    async def start(self) -> None:
        """Ensure the stream (if missing) and the durable consumer, start the sink and the fetch loop.

        A storage keeper (:class:`~bus.storage.StorageKeeper`, never reconfiguring the stream) recreates the
        stream and the consumer when they are deleted later. When JetStream cannot hold the stream (store too
        small or full), a typed error is logged, the sink starts without consuming, and the fetch loop starts
        once the keeper has the stream."""
        s = self.settings
        js = self.nc.jetstream()
        self.storage = StorageKeeper(
            js, f"trace sink ({s.durable})", [StreamSpec(name=s.stream, subjects=[subjects.TRACE_ALL])],
            [(s.stream, ConsumerSpec(durable=s.durable, filter_subject=s.filter_subject, ack_wait_s=s.ack_wait_s,
                                     max_ack_pending=max(1000, 2 * s.fetch_batch)))],
            check_every_s=s.storage_check_s, update=False)
        ok = await self.storage.ensure()
        await self.storage.start()
        await self.sink.start()
        await self.service.start()
        metrics.track_pending("trace_sink", self.queued)
        if not ok:
            self._binder = asyncio.create_task(self._bind_when_storage_ready(), name="trace-sink.bind")
            return
        await self._bind()
        first = asyncio.ensure_future(self._first_round.wait())
        assert self._task is not None
        await asyncio.wait({first, self._task}, timeout=s.fetch_timeout_s + s.start_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            first.cancel()
            await self.watch.check()  # the loop died: raise why
            raise TimeoutError(f"trace sink: no fetch round trip on {s.stream}/{s.durable} within "
                               f"{s.fetch_timeout_s + s.start_timeout_s:.1f} s")

    async def _bind(self) -> None:
        s = self.settings
        self._sub = await self.nc.jetstream().pull_subscribe_bind(durable=s.durable, stream=s.stream)
        self._task = asyncio.create_task(self._loop(), name="trace-sink.consume")
        self.watch.attach(self._task)

    async def _bind_when_storage_ready(self) -> None:
        while True:
            assert self.storage is not None
            await self.storage.ready.wait()
            try:
                await self._bind()
            except (nats.errors.Error, TimeoutError, OSError) as e:
                log.warning("trace sink: could not bind its consumer yet (%r); retrying", e)
                await asyncio.sleep(self.settings.storage_check_s)
                continue
            log.info("trace sink: JetStream storage available; consuming %s", self.settings.stream)
            return

    def watches(self) -> list[LoopWatch]:
        """The inner loops the node watches: the fetch loop (once bound), the storage keeper and each exporter's
        loop."""
        return [self.watch, *([self.storage.watch] if self.storage is not None else []), *self.sink.watches()]

    async def pending(self) -> int:
        """Messages the durable consumer has not delivered yet (one JetStream API round trip)."""
        info = await self.nc.jetstream().consumer_info(self.settings.stream, self.settings.durable, timeout=5.0)
        return int(info.num_pending or 0)

    async def _loop(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            try:
                msgs = await self._sub.fetch(self.settings.fetch_batch, timeout=self.settings.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                # nothing to fetch (the server said so), or the round trip outlived its deadline (nats-py raises
                # a plain TimeoutError then): either way the consumer answered or will be asked again. nats-py
                # also turns a cancellation of the fetch into a TimeoutError: a loop being stopped ends here.
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    return
                self._first_round.set()
                self.watch.progress()
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                return
            except nats.errors.Error as exc:
                self.fetch_errors += 1
                log.warning("trace sink: fetch failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.2 * self.fetch_errors))
                continue
            self._first_round.set()
            self._consuming = True
            try:
                for msg in msgs:
                    await self._consume(msg)
            finally:
                self._consuming = False
            self.watch.progress()

    def queued(self) -> int:
        """Events accepted and waiting in the exporters' queues (the deepest lane)."""
        return max((lane["queued"] for lane in self.sink.stats()["exporters"].values()), default=0)

    async def _consume(self, msg: Msg) -> None:
        self.consumed += 1
        with contextlib.suppress(Rejected):  # counted by the service as a malformed event
            async with self.service.job("events"):
                await self._consume_one(msg)

    async def _consume_one(self, msg: Msg) -> None:
        try:
            event: TraceEvent = decode(msg.data, TraceEvent,  # type: ignore[arg-type]
                                       max_bytes=self.settings.max_payload_bytes, subject=msg.subject)
        except (MalformedPayload, PayloadTooLarge) as exc:
            self.malformed += 1
            log.warning("trace sink: %s on %s (%s); terminated", type(exc).__name__, msg.subject,
                        self.sink.redactor.redact_text(str(exc))[:300])
            await msg.term()
            raise Rejected(ErrorCode.MALFORMED, f"trace event on {msg.subject} is malformed") from None
        prov = Provenance.from_headers(msg.headers)
        seq = msg.metadata.sequence.stream if msg.reply else 0
        if msg.reply:
            metrics.TRACE_UNCONSUMED.set(msg.metadata.num_pending)
        self.sink.offer(event, subject=msg.subject, stream_seq=seq, traceparent=prov.traceparent,
                        actor_spans=(msg.headers or {}).get(SPANS) == "1")
        await msg.ack()

    def stats(self) -> dict[str, Any]:
        """Consumer counters (``caught_up``: consumed by the drain's catch-up) and the sink's (exported, dropped
        on overflow, unsafe, errors)."""
        return {"consumed": self.consumed, "malformed": self.malformed, "fetch_errors": self.fetch_errors,
                "caught_up": self.caught_up, "storage": self.storage.stats() if self.storage else None,
                **self.sink.stats()}

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop the fetch loop, export what is still pending on the consumer, flush the exporters, close them.

        The catch-up takes at most ``catchup_share`` of ``timeout`` (the rest flushes the exporters): events
        published just before a stop (a run that ended as the node was told to stop) still reach JSONL/OTLP.
        What it cannot fetch in time stays on the durable consumer for the next start. A failed incarnation
        (its loop died or stalled) does not catch up: its restarted successor consumes what is pending.
        """
        t0 = time.monotonic()
        if self._binder is not None:
            self._binder.cancel()  # awaited below, after the fetch loop (no await may come before its cancel)
        # Catch up only when the loop was healthy: a failed incarnation (loop died or stalled) stops at once
        # and leaves the pending events to its restarted successor.
        healthy = (self._task is not None and not self._task.done()
                   and self.watch.clock() - self.watch.last_progress < self.watch.stall_after_s)
        self.watch.detach()
        self._stopping = True
        if self._task is not None:
            if healthy and self._consuming:
                # Let the batch being consumed finish: it is in the loop's hands (delivered, not yet acked);
                # cancelled, the rest of it would be handed out again only after the ack wait, at the next start,
                # missing from this run's exports. (A fetch still waiting holds nothing: it is cancelled at once.)
                await asyncio.wait({self._task}, timeout=timeout * self.catchup_share)
            self._task.cancel()
            # nats-py's pull fetch can turn the cancellation into a TimeoutError or a nats error on its way out
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.Error):
                await self._task
            self._task = None
        if self._binder is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._binder
            self._binder = None
        if self.storage is not None:
            await self.storage.stop()
        if self._sub is not None and healthy:
            caught = await self._catch_up(t0 + timeout * self.catchup_share)
            self.caught_up += caught
            if caught:
                log.info("trace sink: exported %d pending events while draining", caught)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        await self.sink.stop(max(0.1, timeout - (time.monotonic() - t0)))
        await self.service.stop()

    #: Share of the drain budget the catch-up fetch may use (the rest flushes and closes the exporters).
    catchup_share = 0.6

    async def _catch_up(self, until: float) -> int:
        """Fetch and offer what the consumer still holds, until it is empty or ``until`` (monotonic) passes."""
        assert self._sub is not None
        caught = 0
        while (left := until - time.monotonic()) > 0.05:
            try:
                msgs = await asyncio.wait_for(self._sub.fetch(self.settings.fetch_batch, timeout=min(0.5, left)),
                                              timeout=left + 0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                return caught  # the consumer has nothing more (or did not answer in time)
            except nats.errors.Error as exc:
                log.warning("trace sink: catch-up fetch failed while draining (%s)", exc)
                return caught
            for msg in msgs:
                await self._consume(msg)
            caught += len(msgs)
        return caught
