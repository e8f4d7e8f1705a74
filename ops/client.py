"""Client commands against any running deployment: submit a coordination request, tail the traces.

Two ways to submit: :func:`submit_job` (the default of ``run.py submit``) queues the request durably on the
JetStream work queue and waits for its one stored result, so it survives a coordinator, runtime or NATS
node dying mid-run and can be resubmitted or picked up by a client that connects later;
:func:`submit` is plain request/reply on ``trinity.coord.request`` (lowest latency, nothing stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from typing import TextIO

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from actors.trace_sink.render import TraceFilter, format_event
from bus import rpc, subjects
from bus.codec import decode, encode
from bus.errors import BusError, MalformedPayload, RemoteError, RequestTimeout
from bus.jetstream import MSG_ID_HEADER
from bus.provenance import DEADLINE_AT, Provenance
from schemas import Budget, CoordinationRequest, CoordinationResult, Role, TraceEvent


class JobQueueMissing(BusError):
    """The work-queue streams do not exist: no coordinator with ``jobs_enabled`` has started yet."""

    def __init__(self) -> None:
        super().__init__(f"no coordinator has set up the job queue (stream {subjects.JOBS_STREAM} or "
                         f"{subjects.RESULTS_STREAM} not found); start one (`python run.py node`), or submit with "
                         "--via request")


_STREAM_NOT_FOUND = 10059


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
    return await rpc.request(nc, subjects.coord_request(), req, CoordinationResult, timeout=timeout,
                             provenance=Provenance(request_id=req.request_id))  # carries the caller's span


def decode_result(msg_data: bytes, headers: dict[str, str] | None, request_id: str) -> CoordinationResult:
    """A stored job result: the :class:`CoordinationResult`, or :class:`RemoteError` for an error result."""
    err = rpc.error_from_headers(msg_data, headers)
    if err is not None:
        raise RemoteError(err, subjects.coord_result(request_id))
    return decode(msg_data, CoordinationResult, max_bytes=16 * 1_048_576, subject=subjects.coord_result(request_id))


async def stored_result(nc: Client, request_id: str) -> CoordinationResult | None:
    """The stored result of job ``request_id`` (``None`` while there is none; :class:`RemoteError` for an
    error result)."""
    try:
        raw = await nc.jetstream().get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(request_id))
    except nats.js.errors.NotFoundError as e:
        if e.err_code == _STREAM_NOT_FOUND:
            raise JobQueueMissing() from None
        return None
    return decode_result(raw.data or b"", raw.headers, request_id)


async def submit_job(nc: Client, req: CoordinationRequest, *, timeout: float, poll_s: float = 2.0,
                     publish_timeout: float = 5.0, on_queued: Callable[[], None] | None = None,
                     ) -> CoordinationResult:
    """Queue ``req`` durably on the work queue and wait for its one stored result.

    The request id is the ``Nats-Msg-Id``, so publishing again (after a timeout or a reconnect, or a second
    ``submit`` with the same id) stores the job once; a job that already finished returns its stored result
    at once. The result is awaited on a subscription, with a look at the results stream every ``poll_s``
    seconds as a backstop (a result published while this client was reconnecting is not missed).
    The job carries its absolute deadline (``Trinity-Deadline-At``: now plus the budget's ``deadline_ms``),
    which holds across redeliveries, so a ``timeout`` of the deadline plus a few seconds sees its result.
    ``on_queued`` is called once JetStream has stored the job (not when a stored result was found at once).
    Raises :class:`RemoteError` for an error result, :class:`RequestTimeout` past ``timeout`` (the job
    stays queued: :func:`wait_job`, or submit the same id again, to keep waiting), :class:`JobQueueMissing`
    when no coordinator has created the queue.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    rid = req.request_id
    async with _ResultWatch(nc, rid) as watch:
        done = await watch.stored()
        if done is not None:
            return done
        # the caller's active span (the gateway's request span, a client's own) parents the run's spans
        headers = Provenance(request_id=rid, causation_id=rid).with_current_trace().to_headers()
        headers[MSG_ID_HEADER] = rid
        if req.budget.deadline_ms is not None:  # absolute: a redelivered job keeps it, and so does this wait
            headers[DEADLINE_AT] = f"{time.time() + req.budget.deadline_ms / 1000.0:.3f}"
        js = nc.jetstream()
        while True:
            try:
                await js.publish(subjects.coord_jobs(), encode(req), stream=subjects.JOBS_STREAM, headers=headers,
                                 timeout=min(publish_timeout, max(0.1, deadline - loop.time())))
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError,
                    nats.errors.ConnectionReconnectingError):
                # a cluster electing a leader or a reconnect in progress: retry until the deadline
                if loop.time() >= deadline:
                    raise RequestTimeout(subjects.coord_jobs(), timeout) from None
                await asyncio.sleep(0.25)  # same Nats-Msg-Id: a retry cannot queue the job twice
        if on_queued is not None:
            on_queued()
        return await watch.wait(deadline, timeout, poll_s)


async def wait_job(nc: Client, request_id: str, *, timeout: float, poll_s: float = 2.0) -> CoordinationResult:
    """Wait for the stored result of job ``request_id``, submitted earlier (by anyone), without resubmitting.

    Returns at once when the result is stored. Raises :class:`JobResultTimeout` when none is stored within
    ``timeout`` seconds (``0``: look once), :class:`RemoteError` for an error result, :class:`JobQueueMissing`
    when no coordinator has created the queue.
    """
    loop = asyncio.get_running_loop()
    async with _ResultWatch(nc, request_id) as watch:
        done = await watch.stored()
        if done is not None:
            return done
        try:
            return await watch.wait(loop.time() + timeout, timeout, poll_s)
        except RequestTimeout:
            raise JobResultTimeout(request_id, timeout) from None


class JobResultTimeout(RequestTimeout):
    """No stored result for a job within the wait (it may still be queued or running, or never was submitted)."""

    def __init__(self, request_id: str, timeout: float) -> None:
        self.subject, self.timeout, self.request_id = subjects.coord_result(request_id), timeout, request_id
        BusError.__init__(self, f"no stored result for job {request_id} within {timeout:g}s: it may still be queued "
                          f"or running (wait again: `run.py result {request_id}`), or it was never queued (submit "
                          f"it again: `run.py submit --request-id {request_id} QUESTION`)")


class _ResultWatch:
    """A subscription to one job's result subject plus reads of the results stream (the stored result)."""

    def __init__(self, nc: Client, request_id: str) -> None:
        self._nc, self._rid = nc, request_id
        self._arrived: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> _ResultWatch:
        async def on_result(msg: Msg) -> None:
            await self._arrived.put(msg)

        self._sub = await self._nc.subscribe(subjects.coord_result(self._rid), cb=on_result)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def stored(self) -> CoordinationResult | None:
        """The stored result now, or ``None``."""
        try:
            return await stored_result(self._nc, self._rid)
        except nats.js.errors.ServiceUnavailableError:
            raise JobQueueMissing() from None

    async def wait(self, deadline: float, timeout: float, poll_s: float) -> CoordinationResult:
        """Wait until the result is stored or the loop time reaches ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise RequestTimeout(subjects.coord_result(self._rid), timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.get(), min(poll_s, left))
            # what counts is the stored result: a result seen in flight whose store failed (its publisher
            # died, the stream leader changed) is not the answer until JetStream has it
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                done = await stored_result(self._nc, self._rid)
                if done is not None:
                    return done


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


async def tail(nc: Client, flt: TraceFilter, *, replay: bool, follow: bool, out: TextIO | None = None,
               color: bool = False, idle_timeout: float = 2.0, stop_on_finish: bool = False) -> int:
    """Print trace events matching ``flt`` from the trace stream. Returns how many were printed.

    ``replay`` starts at the first stored event (a finished run can be replayed); otherwise only new events
    are shown. Without ``follow`` it returns once no event arrived for ``idle_timeout`` seconds. With
    ``stop_on_finish`` (and a request id) it returns after that run's ``run_finished``/``run_failed``.
    """
    out = out or sys.stdout  # looked up per call (pytest's capsys and redirections replace sys.stdout)
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
