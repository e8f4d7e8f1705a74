"""Helpers shared by the durability tests and ``scripts/probe_durability.py``: the whole trace stream by request
id, waiting for a trace event of every request, the fake agents' call log, submitting jobs."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import nats
from nats.aio.client import Client

from bus import subjects
from bus.codec import decode
from ops.client import build_request, submit_job
from schemas import CoordinationResult
from schemas.trace import TraceEvent


async def traces(nc: Client, timeout: float = 1.5) -> dict[str, list[TraceEvent]]:
    """Every stored trace event, by request id (one pass over the trace stream)."""
    sub = await nc.jetstream().subscribe(subjects.TRACE_ALL, ordered_consumer=True, stream=subjects.TRACE_STREAM)
    out: dict[str, list[TraceEvent]] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                return out
            ev = decode(msg.data, TraceEvent)  # type: ignore[arg-type]
            out.setdefault(ev.request_id, []).append(ev)  # type: ignore[attr-defined]
    finally:
        await sub.unsubscribe()


async def wait_for_event(nc: Client, rids: list[str], kind: str, timeout: float = 60.0) -> None:
    """Wait until every request has a stored ``kind`` trace event."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending = set(rids)
    while pending and loop.time() < end:
        for rid in list(pending):
            try:
                await js.get_last_msg(subjects.TRACE_STREAM, subjects.trace(rid, kind))
                pending.discard(rid)
            except nats.js.errors.NotFoundError:
                pass
        await asyncio.sleep(0.05)
    assert not pending, f"no {kind} for {sorted(pending)}"


def calls_of(log: Path) -> tuple[Counter[str], Counter[str]]:
    """(requests, provider calls) per call id ``request_id:turn:agent``, from the fake agents' log."""
    requests: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        what, call_id = line.split(" ", 1)
        (requests if what == "request" else calls)[call_id] += 1
    return requests, calls


def submit_all(nc: Client, rids: list[str], deadline_s: float = 90.0) -> list[asyncio.Task[CoordinationResult]]:
    return [asyncio.create_task(submit_job(nc, build_request(f"question {i}", request_id=rid, deadline_s=deadline_s),
                                           timeout=deadline_s + 10.0)) for i, rid in enumerate(rids)]
