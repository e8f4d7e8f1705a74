"""Reading what the system stored, for the end-to-end tests: a request's trace events and its results."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from bus import subjects
from bus.codec import decode
from schemas.trace import TraceEvent


async def trace_of(nc: Client, request_id: str) -> list[TraceEvent]:
    """Every stored trace event of one request, in stream order."""
    for attempt in range(10):  # right after a server kill the stream may still be electing a leader
        try:
            sub = await nc.jetstream().subscribe(subjects.trace_filter(request_id), ordered_consumer=True,
                                                 stream=subjects.TRACE_STREAM)
            break
        except nats.errors.TimeoutError:
            if attempt == 9:
                raise
            await asyncio.sleep(1.0)
    events: list[TraceEvent] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                return events
            events.append(decode(msg.data, TraceEvent))  # type: ignore[arg-type]
    finally:
        await sub.unsubscribe()


async def results_stored(nc: Client, request_id: str) -> int:
    """How many results the results stream holds for ``request_id``."""
    info = await nc.jetstream().stream_info(subjects.RESULTS_STREAM, subjects_filter=subjects.coord_result(request_id))
    return sum((info.state.subjects or {}).values())
