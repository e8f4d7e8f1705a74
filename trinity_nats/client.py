"""The Python client of TRINITY over NATS: submit a question, wait for its result, resubmit by id, and read a
run's trace as typed events. Needs only ``nats-py``, ``msgspec`` and ``opentelemetry-api`` (the ``client``
install extra: ``pip install 'trinity-nats[client]'``), never torch.

Submissions go through the durable work queue (``trinity.coord.jobs``): the request id is the JetStream
``Nats-Msg-Id``, so submitting the same id twice runs it once, and its one result is stored
(``trinity.coord.result.<id>``) for any client, now or later, to read.

Example:
    >>> from trinity_nats.client import TrinityClient
    >>> async with await TrinityClient.connect("nats://127.0.0.1:4222") as trinity:   # doctest: +SKIP
    ...     rid = await trinity.submit("What is 17 + 25?")
    ...     async for event in trinity.events(rid):          # typed: RunStarted, RouteDecided, ...
    ...         print(event.kind, event.turn)
    ...     result = await trinity.wait(rid, timeout=120)
    ...     print(result.answer, result.stop_reason)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bus import subjects
from bus.codec import decode, encode
from bus.errors import BusError, MalformedPayload, RemoteError, RequestTimeout
from bus.jetstream import MSG_ID_HEADER
from bus.provenance import Provenance
from ops.client import JobQueueMissing, JobResultTimeout, build_request, new_request_id, stored_result, wait_job
from schemas import (
    AgentCallFailed,
    AgentCallFinished,
    AgentCallStarted,
    Budget,
    CoordinationRequest,
    CoordinationResult,
    ErrorCode,
    RoleAssigned,
    RouteDecided,
    RunFailed,
    RunFinished,
    RunRedelivered,
    RunStarted,
    RunStatus,
    StopReason,
    TraceEvent,
    VerdictRecorded,
)
from schemas.trace import TRACE_KINDS, BudgetRecorded, RouteDeferred

__all__ = [
    "AgentCallFailed",
    "AgentCallFinished",
    "AgentCallStarted",
    "Budget",
    "BudgetRecorded",
    "BusError",
    "CoordinationRequest",
    "CoordinationResult",
    "ErrorCode",
    "JobQueueMissing",
    "JobResultTimeout",
    "RemoteError",
    "RequestTimeout",
    "RoleAssigned",
    "RouteDecided",
    "RouteDeferred",
    "RunFailed",
    "RunFinished",
    "RunRedelivered",
    "RunStarted",
    "RunStatus",
    "StopReason",
    "TraceEvent",
    "TrinityClient",
    "UnknownRequest",
    "VerdictRecorded",
    "build_request",
    "new_request_id",
]

_END_KINDS = frozenset({"run_finished", "run_failed"})
_REMEMBERED = 10_000


class UnknownRequest(BusError):
    """:meth:`TrinityClient.resubmit` was given an id this client never submitted and no result is stored for."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"request {request_id} was not submitted by this client and has no stored result; "
                         "resubmit the CoordinationRequest itself (resubmit(request)) or submit it again")


class TrinityClient:
    """A connection to a TRINITY deployment (see the module docstring). Create it with :meth:`connect`, or
    wrap a connected ``nats.aio.client.Client`` (then closing this client leaves that connection open)."""

    def __init__(self, nc: Client, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self._owns = owns_connection
        self._submitted: OrderedDict[str, CoordinationRequest] = OrderedDict()

    @classmethod
    async def connect(cls, servers: str | list[str] = "nats://127.0.0.1:4222", **options: Any) -> TrinityClient:
        """Connect to NATS (``options`` go to ``nats.connect``: credentials, TLS, reconnect policy, name)."""
        options.setdefault("name", "trinity-client")
        return cls(await nats.connect(servers, **options), owns_connection=True)

    async def close(self) -> None:
        """Close the connection when this client opened it."""
        if self._owns and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> TrinityClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- submit / wait / resubmit -------------------------------------------------------------------------------

    async def submit(self, query: str | CoordinationRequest, *, request_id: str | None = None, max_turns: int = 5,
                     deadline_s: float = 120.0, agent_mask: list[int] | None = None, adapter: str = "base",
                     backend: str = "torch", timeout: float = 10.0) -> str:
        """Queue a question (or a prepared :class:`CoordinationRequest`) durably and return its request id at
        once; read the outcome with :meth:`wait` or :meth:`events`. Submitting an id again queues it once.

        Raises :class:`JobQueueMissing` when no coordinator has set up the queue, :class:`RequestTimeout` when
        JetStream did not store the job within ``timeout`` seconds.
        """
        req = query if isinstance(query, CoordinationRequest) else build_request(
            query, request_id=request_id, max_turns=max_turns, deadline_s=deadline_s, agent_mask=agent_mask,
            adapter=adapter, backend=backend)
        await self._publish(req, timeout)
        self._remember(req)
        return req.request_id

    async def wait(self, request_id: str, *, timeout: float, poll_s: float = 2.0) -> CoordinationResult:
        """The stored result of ``request_id``, waiting up to ``timeout`` seconds (``0``: look once).

        Raises :class:`JobResultTimeout` when none is stored in time (the job may still run: wait again),
        :class:`RemoteError` for an error result (``code``, ``retryable``), :class:`JobQueueMissing`.
        """
        return await wait_job(self.nc, request_id, timeout=timeout, poll_s=poll_s)

    async def run(self, query: str | CoordinationRequest, *, timeout: float = 180.0, **options: Any,
                  ) -> CoordinationResult:
        """:meth:`submit` then :meth:`wait`: the result of one question."""
        rid = await self.submit(query, **options)
        return await self.wait(rid, timeout=timeout)

    async def result(self, request_id: str) -> CoordinationResult | None:
        """The stored result of ``request_id`` now, or ``None`` while there is none."""
        return await stored_result(self.nc, request_id)

    async def resubmit(self, request: str | CoordinationRequest, *, timeout: float = 10.0) -> str:
        """Queue a request again under its own id: after a client crash, a timeout, or a job that ran out of
        deliveries and was removed. A finished run is not run again (its stored result stands); a job still
        queued is not queued twice. Given an id, the request is the one this client submitted under it.
        Returns the request id."""
        if isinstance(request, CoordinationRequest):
            req = request
        else:
            known = self._submitted.get(request)
            if known is None:
                if await self.result(request) is not None:
                    return request  # finished: nothing to run again
                raise UnknownRequest(request)
            req = known
        if await self.result(req.request_id) is None:
            await self._publish(req, timeout)
        self._remember(req)
        return req.request_id

    def _remember(self, req: CoordinationRequest) -> None:
        self._submitted[req.request_id] = req
        self._submitted.move_to_end(req.request_id)
        while len(self._submitted) > _REMEMBERED:
            self._submitted.popitem(last=False)

    async def _publish(self, req: CoordinationRequest, timeout: float) -> None:
        rid = req.request_id
        headers = Provenance(request_id=rid, causation_id=rid).with_current_trace().to_headers()
        headers[MSG_ID_HEADER] = rid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        js = self.nc.jetstream()
        while True:
            try:
                await js.publish(subjects.coord_jobs(), encode(req), stream=subjects.JOBS_STREAM, headers=headers,
                                 timeout=max(0.1, min(5.0, deadline - loop.time())))
                return
            except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                if not await self._queue_exists() or loop.time() >= deadline:
                    raise JobQueueMissing() from None
            except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.ConnectionReconnectingError):
                if loop.time() >= deadline:
                    raise RequestTimeout(subjects.coord_jobs(), timeout) from None
            await asyncio.sleep(0.25)  # same Nats-Msg-Id: a retry cannot queue the job twice

    async def _queue_exists(self) -> bool:
        try:
            await self.nc.jetstream().stream_info(subjects.JOBS_STREAM)
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, nats.js.errors.Error):
            return True  # cannot tell (e.g. a leader election): keep retrying until the deadline
        return True

    # -- trace events --------------------------------------------------------------------------------------------

    async def events(self, request_id: str | None = None, *, kinds: Iterable[str] | None = None,
                     replay: bool = True, until_finished: bool | None = None,
                     idle_timeout: float | None = None) -> AsyncIterator[TraceEvent]:
        """Trace events as typed structs (:data:`TraceEvent`: ``RunStarted``, ``RouteDecided``, ...), in
        stream order.

        ``request_id``: one run's events (``None``: every run's). ``kinds``: only these kinds (e.g.
        ``{"route_decided"}``). ``replay``: start at the first stored event (a finished run can be read again),
        else only new ones. ``until_finished`` (default: when a request id is given): stop after the run's
        ``run_finished``/``run_failed``. ``idle_timeout``: stop when no event came for that many seconds.
        Undecodable messages are skipped.
        """
        wanted = frozenset(kinds) if kinds is not None else None
        if wanted is not None and (unknown := sorted(wanted - set(TRACE_KINDS))):
            raise ValueError(f"unknown trace kinds {unknown}; choose from {', '.join(TRACE_KINDS)}")
        stop_at_end = (request_id is not None) if until_finished is None else until_finished
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg: Msg) -> None:
            await queue.put(msg)

        sub = await self.nc.jetstream().subscribe(
            subjects.trace_filter(request_id), cb=on_msg, ordered_consumer=True, stream=subjects.TRACE_STREAM,
            deliver_policy=DeliverPolicy.ALL if replay else DeliverPolicy.NEW)
        try:
            while True:
                try:
                    msg = await (asyncio.wait_for(queue.get(), idle_timeout) if idle_timeout else queue.get())
                except TimeoutError:
                    return
                try:
                    event: TraceEvent = decode(msg.data, TraceEvent)  # type: ignore[arg-type]
                except MalformedPayload:
                    continue
                if wanted is None or event.kind in wanted:
                    yield event
                if stop_at_end and event.kind in _END_KINDS:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

