"""Client commands against any running deployment: submit a coordination request, tail the traces."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from typing import TextIO

from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from actors.trace_sink.render import TraceFilter, format_event
from bus import rpc, subjects
from bus.codec import decode
from bus.errors import MalformedPayload
from schemas import Budget, CoordinationRequest, CoordinationResult, Role, TraceEvent


def new_request_id() -> str:
    """A fresh request id (``q-`` + 12 hex characters)."""
    return f"q-{uuid.uuid4().hex[:12]}"


def build_request(query: str, *, request_id: str | None = None, max_turns: int = 5, deadline_s: float = 120.0,
                  agent_mask: list[int] | None = None, adapter: str = "base", backend: str = "torch",
                  ) -> CoordinationRequest:
    """A :class:`CoordinationRequest` from CLI values (validated by the contract)."""
    return CoordinationRequest(request_id=request_id or new_request_id(), query=query,
                               budget=Budget(max_turns=max_turns, deadline_ms=int(deadline_s * 1000)),
                               agent_mask=agent_mask, adapter=adapter, backend=backend)


async def submit(nc: Client, req: CoordinationRequest, *, timeout: float) -> CoordinationResult:
    """Publish a coordination request and wait for its result (typed bus errors propagate)."""
    return await rpc.request(nc, subjects.coord_request(), req, CoordinationResult, timeout=timeout)


def _excerpt(text: str | None, n: int = 100) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def render_result(res: CoordinationResult, agent_names: Callable[[int], str] | None = None) -> str:
    """A terminal report: one line per turn (agent, role, margins, confidence, reply excerpt, verdict), then
    the stop reason and the answer."""
    name = agent_names or (lambda a: f"agent {a}")
    lines = [f"request {res.request_id}: {res.status.value}, stopped by {res.stop_reason.value} "
             f"after {len(res.turns)} turn(s)"]
    for t in res.turns:
        d = t.decision
        role = Role(t.assignment.role).label
        note = "" if t.assignment.source.value == "router" else f" ({t.assignment.source.value})"
        lines.append(f"  turn {t.turn}: {name(t.assignment.agent_id)} as {role}{note}  margins agent "
                     f"{d.agent_margin:.3f} role {d.role_margin:.3f} [{d.confidence.value}] hash {d.route_hash[:10]}")
        for f in t.failures:
            lines.append(f"    ! agent {f.agent_id} failed ({f.error_code}): {_excerpt(f.message, 80)}")
        if t.receipt is not None:
            lines.append(f"    reply: {_excerpt(t.receipt.content)}")
        if t.verdict is not None:
            lines.append(f"    verdict: {t.verdict.verdict.value.upper()}")
    if res.error:
        lines.append(f"  error: {res.error}")
    lines.append(f"answer: {res.answer if res.answer is not None else '(no Worker reply)'}")
    return "\n".join(lines)


async def tail(nc: Client, flt: TraceFilter, *, replay: bool, follow: bool, out: TextIO = sys.stdout,
               color: bool = False, idle_timeout: float = 2.0, stop_on_finish: bool = False) -> int:
    """Print trace events matching ``flt`` from the trace stream. Returns how many were printed.

    ``replay`` starts at the first stored event (a finished run can be replayed); otherwise only new events
    are shown. Without ``follow`` it returns once no event arrived for ``idle_timeout`` seconds. With
    ``stop_on_finish`` (and a request id) it returns after that run's ``run_finished``/``run_failed``.
    """
    js = nc.jetstream()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    async def on_msg(msg: object) -> None:
        await queue.put(msg.data)  # type: ignore[attr-defined]

    sub = await js.subscribe(flt.subject(), cb=on_msg, ordered_consumer=True, stream=subjects.TRACE_STREAM,
                             deliver_policy=DeliverPolicy.ALL if replay else DeliverPolicy.NEW)
    shown = 0
    try:
        while True:
            try:
                data = await (queue.get() if follow else asyncio.wait_for(queue.get(), idle_timeout))
            except TimeoutError:
                return shown
            try:
                ev: TraceEvent = decode(data, TraceEvent)  # type: ignore[arg-type]
            except MalformedPayload as e:
                print(f"(undecodable trace event: {e})", file=out)
                continue
            if not flt.matches(ev):
                continue
            print(format_event(ev, color=color), file=out, flush=True)
            shown += 1
            if stop_on_finish and ev.kind in ("run_finished", "run_failed"):
                return shown
    finally:
        await sub.unsubscribe()
