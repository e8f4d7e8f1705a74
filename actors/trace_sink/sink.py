"""The sink's core, without NATS: redact each event, then hand it to every exporter through a bounded queue.

:meth:`TraceSink.offer` never waits: when an exporter's queue is full the record is dropped *for that
exporter*, counted in :meth:`TraceSink.stats`, and reported in a warning log line (rate-limited), so a
slow disk or collector can never hold up the consumer, and so never the coordination that publishes.

Example:
    >>> # sink = TraceSink(TraceSinkSettings(), exporters=[JsonlExporter(...), OtelExporter(...)])
    >>> # await sink.start(); sink.offer(event, traceparent=None); await sink.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.trace_sink.jsonl import RotatingJsonlWriter, TraceRecord, record_line
from actors.trace_sink.otel import OtelSpans
from actors.trace_sink.redact import Redactor, UnsafeEvent
from config.trace_sink import JsonlSettings, OtelSettings, TraceSinkSettings
from schemas.trace import TraceEvent
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)


class Exporter(Protocol):
    """Somewhere redacted records go."""

    name: str

    async def export(self, batch: list[TraceRecord]) -> None:
        """Store or send a batch (may raise; the sink counts and logs the failure)."""
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...


class JsonlExporter:
    """Writes records to rotating JSONL files (file I/O in a worker thread)."""

    name = "jsonl"

    def __init__(self, settings: JsonlSettings) -> None:
        self.writer = RotatingJsonlWriter(settings.resolved_path(), max_bytes=settings.max_bytes, keep=settings.keep)

    async def export(self, batch: list[TraceRecord]) -> None:
        """Append the batch."""
        lines = [record_line(r) for r in batch]
        await asyncio.to_thread(self.writer.write, lines)

    async def close(self) -> None:
        """Close the file."""
        await asyncio.to_thread(self.writer.close)


class OtelExporter:
    """Builds OpenTelemetry spans from records."""

    name = "otel"

    def __init__(self, settings: OtelSettings) -> None:
        self.spans = OtelSpans(settings)

    async def export(self, batch: list[TraceRecord]) -> None:
        """Record the batch's events as span events/spans."""
        for r in batch:
            self.spans.handle(r.event, r.traceparent, actor_spans=r.actor_spans)

    async def close(self) -> None:
        """End open spans and flush the span processor."""
        await asyncio.to_thread(self.spans.close)


def default_exporters(settings: TraceSinkSettings) -> list[Exporter]:
    """The exporters the settings ask for (JSONL if enabled, OpenTelemetry unless ``none``)."""
    out: list[Exporter] = []
    if settings.jsonl.enabled:
        out.append(JsonlExporter(settings.jsonl))
    if settings.otel.exporter.value != "none":
        out.append(OtelExporter(settings.otel))
    return out


@dataclass
class ExporterStats:
    """Counters of one exporter."""

    exported: int = 0
    dropped_overflow: int = 0
    errors: int = 0
    batches: int = 0


class _Lane:
    def __init__(self, exporter: Exporter, size: int) -> None:
        self.exporter = exporter
        self.queue: asyncio.Queue[TraceRecord] = asyncio.Queue(maxsize=size)
        self.stats = ExporterStats()
        self.task: asyncio.Task[None] | None = None
        self.last_overflow_log = float("-inf")
        self.dropped_since_log = 0
        self.watch: LoopWatch | None = None
        self.in_hand = 0  # records of the batch the exporter is working on

    async def waiting(self) -> int:
        """Records waiting for this exporter, the batch in its hands included."""
        return self.queue.qsize() + self.in_hand


class TraceSink:
    """Redacts and fans records out to exporters over bounded queues; see the module docstring."""

    def __init__(self, settings: TraceSinkSettings, *, exporters: list[Exporter] | None = None,
                 clock: Callable[[], float] = time.monotonic, batch_size: int = 256) -> None:
        self.settings = settings
        self.redactor = Redactor(settings.redaction)
        self._lanes = [_Lane(e, settings.buffer_size) for e in
                       (exporters if exporters is not None else default_exporters(settings))]
        self._clock = clock
        self._batch_size = batch_size
        self.received = 0
        self.accepted = 0
        self.unsafe_dropped = 0

    @property
    def exporters(self) -> list[Exporter]:
        """The exporters, in lane order."""
        return [lane.exporter for lane in self._lanes]

    async def start(self) -> None:
        """Start one worker per exporter."""
        for lane in self._lanes:
            if lane.task is None:
                lane.task = asyncio.create_task(self._work(lane), name=f"trace-sink.{lane.exporter.name}")
                lane.watch = LoopWatch(f"trace sink {lane.exporter.name} exporter loop",
                                       stall_after_s=self.settings.stall_after_s, pending=lane.waiting)
                lane.watch.attach(lane.task)

    def watches(self) -> list[LoopWatch]:
        """One watch per exporter loop: it died, or exported nothing for ``stall_after_s`` while records wait
        (a hung collector or disk)."""
        return [lane.watch for lane in self._lanes if lane.watch is not None]

    def offer(self, event: TraceEvent, *, subject: str = "", stream_seq: int = 0,
              traceparent: str | None = None, actor_spans: bool = False) -> TraceRecord | None:
        """Redact ``event`` and enqueue it for every exporter without waiting. Returns the stored record.
        ``actor_spans``: the coordinator that emitted it records the run's spans itself."""
        self.received += 1
        try:
            clean = self.redactor.redact_event(event)
        except UnsafeEvent as exc:
            self.unsafe_dropped += 1
            log.warning("trace sink: %s", exc)
            return None
        record = TraceRecord(event=clean, subject=self.redactor.redact_text(subject), stream_seq=stream_seq,
                             traceparent=traceparent, received_ts=time.time(), actor_spans=actor_spans)
        self.accepted += 1
        for lane in self._lanes:
            try:
                lane.queue.put_nowait(record)
            except asyncio.QueueFull:
                lane.stats.dropped_overflow += 1
                lane.dropped_since_log += 1
                now = self._clock()
                if now - lane.last_overflow_log >= self.settings.overflow_log_interval_s:
                    log.warning("trace sink: %s exporter buffer full (%d); dropped %d events since last report, "
                                "%d in total; the exporter is slower than the trace rate (raise buffer_size or "
                                "fix the exporter)", lane.exporter.name, lane.queue.maxsize,
                                lane.dropped_since_log, lane.stats.dropped_overflow)
                    lane.last_overflow_log = now
                    lane.dropped_since_log = 0
        return record

    async def _work(self, lane: _Lane) -> None:
        while True:
            first = await lane.queue.get()
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    batch.append(lane.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            lane.in_hand = len(batch)
            try:
                await lane.exporter.export(batch)
                lane.stats.exported += len(batch)
                lane.stats.batches += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # an exporter failure must not stop tracing; it is counted and logged
                lane.stats.errors += 1
                log.exception("trace sink: %s exporter failed on a batch of %d", lane.exporter.name, len(batch))
            finally:
                lane.in_hand = 0
                for _ in batch:
                    lane.queue.task_done()
                if lane.watch is not None:
                    lane.watch.progress()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued record has been handed to its exporter."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for lane in self._lanes:
                    await lane.queue.join()

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout``), stop the workers and close the exporters."""
        await self.flush(timeout)
        for lane in self._lanes:
            if lane.watch is not None:
                lane.watch.detach()
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
            await lane.exporter.close()

    def stats(self) -> dict[str, Any]:
        """Received/accepted/unsafe counts and, per exporter, exported/dropped/errors/queued."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "unsafe_dropped": self.unsafe_dropped,
            "exporters": {lane.exporter.name: {**lane.stats.__dict__, "queued": lane.queue.qsize(),
                                               "capacity": lane.queue.maxsize} for lane in self._lanes},
        }
