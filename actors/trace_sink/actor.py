"""The trace sink actor: a durable JetStream pull consumer on ``TRINITY_TRACE`` feeding :class:`TraceSink`.

Every message is decoded strictly as a :data:`~schemas.trace.TraceEvent` (bad ones are counted and
terminated, so they are not redelivered), offered to the sink (redaction, bounded export queues) with the
W3C ``traceparent`` from its headers, and acked. The stream is created if missing (never reconfigured:
its replicas and limits belong to the node's setup). Several sinks may share the durable name: JetStream
spreads the messages among them.

Example:
    >>> actor = TraceSinkActor(nc, TraceSinkSettings())   # doctest: +SKIP
    >>> await actor.start(); ...; await actor.drain()     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from actors.trace_sink.sink import TraceSink
from bus import subjects
from bus.codec import decode
from bus.errors import MalformedPayload, PayloadTooLarge
from bus.jetstream import ConsumerSpec, StreamSpec, ensure_consumer, ensure_stream
from bus.provenance import Provenance
from config.trace_sink import TraceSinkSettings
from schemas.trace import TraceEvent

log = logging.getLogger(__name__)


class TraceSinkActor:
    """Consumes the trace stream into a :class:`TraceSink`."""

    def __init__(self, nc: Client, settings: TraceSinkSettings, *, sink: TraceSink | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.sink = sink if sink is not None else TraceSink(settings)
        self.consumed = 0
        self.malformed = 0
        self.fetch_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        """Ensure the stream (if missing) and the durable consumer, start the sink and the fetch loop."""
        js = self.nc.jetstream()
        s = self.settings
        try:
            await js.stream_info(s.stream)
        except NotFoundError:
            await ensure_stream(js, StreamSpec(name=s.stream, subjects=[subjects.TRACE_ALL]))
        await ensure_consumer(js, s.stream, ConsumerSpec(durable=s.durable, filter_subject=s.filter_subject,
                                                         ack_wait_s=s.ack_wait_s,
                                                         max_ack_pending=max(1000, 2 * s.fetch_batch)))
        self._sub = await js.pull_subscribe_bind(durable=s.durable, stream=s.stream)
        await self.sink.start()
        self._task = asyncio.create_task(self._loop(), name="trace-sink.consume")

    async def _loop(self) -> None:
        assert self._sub is not None
        while True:
            try:
                msgs = await self._sub.fetch(self.settings.fetch_batch, timeout=self.settings.fetch_timeout_s)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                return
            except nats.errors.Error as exc:
                self.fetch_errors += 1
                log.warning("trace sink: fetch failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.2 * self.fetch_errors))
                continue
            for msg in msgs:
                await self._consume(msg)

    async def _consume(self, msg: Msg) -> None:
        self.consumed += 1
        try:
            event: TraceEvent = decode(msg.data, TraceEvent,  # type: ignore[arg-type]
                                       max_bytes=self.settings.max_payload_bytes, subject=msg.subject)
        except (MalformedPayload, PayloadTooLarge) as exc:
            self.malformed += 1
            log.warning("trace sink: %s on %s (%s); terminated", type(exc).__name__, msg.subject,
                        self.sink.redactor.redact_text(str(exc))[:300])
            await msg.term()
            return
        prov = Provenance.from_headers(msg.headers)
        seq = msg.metadata.sequence.stream if msg.reply else 0
        self.sink.offer(event, subject=msg.subject, stream_seq=seq, traceparent=prov.traceparent)
        await msg.ack()

    def stats(self) -> dict[str, Any]:
        """Consumer counters and the sink's (exported, dropped on overflow, unsafe, errors)."""
        return {"consumed": self.consumed, "malformed": self.malformed, "fetch_errors": self.fetch_errors,
                **self.sink.stats()}

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop fetching, flush the exporters and close them."""
        if self._task is not None:
            self._task.cancel()
            # nats-py's pull fetch can turn the cancellation into a TimeoutError or a nats error on its way out
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.Error):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        await self.sink.stop(timeout)
