"""The gateway actor: an OpenAI-compatible HTTP API (Starlette on uvicorn, inside the node's event loop) that
submits every chat completion through the durable work queue.

Routes: ``POST /v1/chat/completions`` (non-streaming, or SSE with ``stream: true``), ``GET /v1/models``,
``GET /health`` (no key needed). Each completion gets a fresh request id, returned in the
``x-trinity-request-id`` header (and as ``id: chatcmpl-<request id>``), so ``run.py result <id>`` and
``run.py tail --request-id <id>`` find the run. Streaming subscribes to the run's trace subjects before the
job is queued, sends one chunk per finished turn, then the answer, then ``data: [DONE]``.

Backpressure: at most ``max_concurrency`` completions in flight; one more gets ``429`` with ``Retry-After``
(a coordinator answering ``overloaded`` maps to the same). Drain: the listening socket closes, requests in
flight finish within the drain timeout, then the server stops.

The gateway is also a nats ``micro`` service (``trinity-gateway``): ``$SRV.STATS`` counts and times its chat
completions (the ``chat_completions`` work endpoint, arrival to last byte) and the process's Prometheus metrics
count every HTTP request by route and status (:mod:`.http_metrics`).

Example:
    >>> gw = GatewayActor(nc, GatewaySettings(port=0))   # doctest: +SKIP
    >>> await gw.start(); gw.port                          # doctest: +SKIP
    51234
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import msgspec
import nats.errors
import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.gateway.http_metrics import HttpMetrics
from actors.gateway.openai_api import AuthenticationFailed as AuthFailed
from actors.gateway.openai_api import (
    ChatRequest,
    GatewayError,
    InternalError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RouteNotFound,
    TurnCollector,
    Unavailable,
    answer_chunks,
    completion_body,
    error_body,
    error_of_bus,
    error_of_result,
    models_body,
    parse_chat_request,
    role_chunk,
    served_models,
    turn_chunk,
    usage_chunk,
)
from bus import subjects
from bus.codec import decode
from bus.errors import BusError, MalformedPayload
from bus.service import ActorService, WorkEndpoint
from bus.spans import tracer
from config.gateway import GatewaySettings
from ops.client import JobQueueMissing, new_request_id, submit_job
from schemas import Budget, CoordinationRequest, CoordinationResult, TraceEvent

log = logging.getLogger(__name__)

#: The gateway's nats micro service name.
SERVICE_NAME = "trinity-gateway"

REQUEST_ID_HEADER = "x-trinity-request-id"
_DONE = object()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, headers=headers, media_type="application/json")


def _error_response(err: GatewayError) -> Response:
    return _json(error_body(err), err.status, err.headers)


def _sse(obj: Any) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT/SIGTERM and drains the gateway."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Stream(StreamingResponse):
    """A streaming response that runs ``cleanup`` however the stream ends (finished, failed, client gone)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._cleanup = cleanup
        self.ended: Callable[[], None] = lambda: None  # called last (the request's span ends there)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._cleanup()
            finally:
                self.ended()


class GatewayActor:
    """The OpenAI-compatible HTTP gateway on one NATS connection."""

    def __init__(self, nc: Client, settings: GatewaySettings | None = None) -> None:
        self.nc = nc
        self.settings = s = settings or GatewaySettings()
        self.models = served_models(s.model, s.adapters, s.backend)
        self._keys = [k.reveal().encode() for k in s.api_keys if k]
        self._in_flight = 0
        self._draining = False
        self._created = int(time.time())
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self.port: int = s.port
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
        ], exception_handlers={HTTPException: self._http_error, Exception: self._unexpected})
        self.service = ActorService(nc, name=SERVICE_NAME, endpoints=[],
                                    description="TRINITY OpenAI-compatible HTTP gateway (chat completions)",
                                    work=[WorkEndpoint(name="chat_completions", subject="/v1/chat/completions")])

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port (an error here fails the start) and serve in the background."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
        # accepted sockets inherit it; with proto 0 every keep-alive response waited ~40 ms for a delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"gateway: cannot listen on {s.host}:{s.port}: {e.strerror}; choose another "
                                   "gateway.port (0 picks a free one)") from None
        sock.listen(s.backlog)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.service.work_endpoints[0].subject = f"http://{s.host}:{self.port}/v1/chat/completions"
        await self.service.start()
        app = HttpMetrics(self.app, self.service, work_routes={"/v1/chat/completions": "chat_completions"})
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, ws="none",
                                http="h11", backlog=s.backlog,
                                timeout_keep_alive=s.keep_alive_s)  # type: ignore[arg-type]  # a float works
        self._server = _EmbeddedServer(config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="gateway-http")
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()  # raises what stopped it
                raise RuntimeError("gateway: the HTTP server stopped during start")
            await asyncio.sleep(0.01)
        if not self._keys:
            log.warning("gateway: no api_keys configured: anyone who reaches %s:%d may submit requests "
                        "(set gateway.api_keys)", s.host, self.port)
        log.info("gateway: OpenAI-compatible API on http://%s:%d/v1 (models %s; at most %d in flight)",
                 s.host, self.port, ", ".join(self.models), s.max_concurrency)

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop accepting connections and requests; finish those in flight within ``timeout`` seconds."""
        self._draining = True
        if self._server is None or self._serve_task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(1, math.ceil(timeout))
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._serve_task), timeout + 2.0)
        except TimeoutError:
            self._server.force_exit = True
            self._serve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        await self.service.stop()
        log.info("gateway: drained (%d request(s) still in flight)", self._in_flight)

    @property
    def in_flight(self) -> int:
        """Chat completions being answered now."""
        return self._in_flight

    # --- helpers ----------------------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> None:
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AuthFailed("missing API key: send `Authorization: Bearer <key>`", code="missing_api_key")
        candidate = given.strip().encode()
        ok = False
        for key in self._keys:  # every key compared, each in constant time
            ok |= hmac.compare_digest(candidate, key)
        if not ok:
            raise AuthFailed("invalid API key", code="invalid_api_key")

    def _acquire(self) -> None:
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self._draining:
            raise Unavailable("the gateway is draining; retry against another one", code="draining", headers=retry)
        if self._in_flight >= self.settings.max_concurrency:
            raise Overloaded(f"too many requests in flight (limit {self.settings.max_concurrency}); retry after "
                             f"{self.settings.retry_after_s}s", code="too_many_requests", headers=retry)
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit}", code="too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", code="too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _coordination_request(self, chat: ChatRequest, request_id: str) -> CoordinationRequest:
        try:
            budget = Budget(max_cost_usd=chat.max_cost_usd, deadline_ms=max(1, int(chat.deadline_s * 1000)),
                            **({"max_turns": chat.max_turns} if chat.max_turns is not None else {}))
            return CoordinationRequest(request_id=request_id, query=chat.query, budget=budget,
                                       agent_mask=chat.agent_mask, adapter=chat.target.adapter,
                                       backend=chat.target.backend,
                                       metadata={"via": "gateway", "model": chat.model})
        except ValueError as e:
            raise InvalidRequest(f"cannot build the coordination request: {e}", code="invalid_request") from None

    def _submit(self, req: CoordinationRequest, chat: ChatRequest,
                on_queued: Callable[[], None] | None = None) -> Coroutine[Any, Any, CoordinationResult]:
        s = self.settings
        return submit_job(self.nc, req, timeout=chat.deadline_s + s.result_grace_s, poll_s=s.result_poll_s,
                          on_queued=on_queued)

    def _map_error(self, exc: BaseException, request_id: str) -> GatewayError:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, JobQueueMissing):
            return Unavailable(str(exc), code="no_job_queue", headers={"Retry-After": str(self.settings.retry_after_s)})
        if isinstance(exc, BusError):
            return error_of_bus(exc, retry_after_s=self.settings.retry_after_s, request_id=request_id)
        if isinstance(exc, nats.errors.Error):
            return Unavailable(f"request {request_id}: NATS: {exc}", code="unavailable",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
        log.exception("gateway: request %s failed", request_id, exc_info=exc)
        return InternalError(f"request {request_id}: {type(exc).__name__}: {exc}", code="internal")

    # --- routes -----------------------------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return _json({"status": "draining" if self._draining else "ok", "in_flight": self._in_flight,
                      "max_concurrency": self.settings.max_concurrency}, 503 if self._draining else 200)

    async def _models(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except GatewayError as e:
            return _error_response(e)
        return _json(models_body(self.models, self._created))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        err = RouteNotFound(f"{request.method} {request.url.path}: "
                            f"{'no such route' if status == 404 else 'method not allowed'}; the gateway serves "
                            "POST /v1/chat/completions and GET /v1/models",
                            code="unknown_route" if status == 404 else "method_not_allowed")
        err.status = status
        return _error_response(err)

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        log.error("gateway: %s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return _error_response(InternalError(f"internal error: {type(exc).__name__}", code="internal"))

    async def _chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions`` in a SERVER span, child of the caller's ``traceparent`` header when it
        sends one; the job carries the span's context, so the whole run joins the caller's trace. A streaming
        response's span ends with its stream."""
        sp = tracer().start_span("POST /v1/chat/completions", context=extract(request.headers), kind=SpanKind.SERVER,
                                 attributes={"http.request.method": "POST", "url.path": request.url.path})
        token = otel_context.attach(trace.set_span_in_context(sp))
        try:
            response = await self._chat_in_span(request, sp)
        except BaseException as e:
            sp.record_exception(e)
            sp.end()
            raise
        finally:
            otel_context.detach(token)
        sp.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            sp.set_status(Status(StatusCode.ERROR))
        if isinstance(response, _Stream):
            response.ended = sp.end
        else:
            sp.end()
        return response

    async def _chat_in_span(self, request: Request, sp: Span) -> Response:
        try:
            self._check_key(request)
            body = await self._body(request)
            s = self.settings
            chat = parse_chat_request(body, self.models, default_deadline_s=s.request_deadline_s,
                                      max_deadline_s=s.max_deadline_s)
            self._acquire()
        except GatewayError as e:
            return _error_response(e)
        rid = new_request_id()
        sp.set_attributes({"trinity.request_id": rid, "trinity.stream": chat.stream,
                           "gen_ai.request.model": chat.model})
        if chat.stream:
            return await self._stream(chat, rid)  # releases the slot when the stream ends
        headers = {REQUEST_ID_HEADER: rid}
        try:
            req = self._coordination_request(chat, rid)
            res = await self._submit(req, chat)
            err = error_of_result(res)
            if err is not None:
                raise err
            return _json(completion_body(res, chat.model, int(time.time())), headers=headers)
        except Exception as e:  # noqa: BLE001 - every failure is answered in OpenAI's shape (bugs logged)
            err = self._map_error(e, rid)
            err.headers = {**err.headers, **headers}
            return _error_response(err)
        finally:
            self._release()

    async def _stream(self, chat: ChatRequest, rid: str) -> Response:
        headers = {REQUEST_ID_HEADER: rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sub: Subscription | None = None
        task: asyncio.Task[CoordinationResult] | None = None

        async def cleanup() -> None:
            if task is not None and not task.done():
                task.cancel()  # the job itself stays queued and runs; its result is stored under rid
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            self._release()

        async def on_event(msg: Msg) -> None:
            queue.put_nowait(msg.data)

        try:
            req = self._coordination_request(chat, rid)
            sub = await self.nc.subscribe(subjects.trace_filter(rid), cb=on_event)  # before the job is queued
            queued = asyncio.Event()
            task = asyncio.create_task(self._submit(req, chat, on_queued=queued.set), name=f"gateway-{rid}")
            task.add_done_callback(lambda _: queue.put_nowait(_DONE))
            waiter = asyncio.create_task(queued.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - failed before anything was sent: a plain error response
            await cleanup()
            err = self._map_error(e, rid)
            err.headers = {**err.headers, REQUEST_ID_HEADER: rid}
            return _error_response(err)
        run = task

        async def events() -> AsyncIterator[bytes]:
            created = int(time.time())
            yield _sse(role_chunk(rid, chat.model, created))
            turns = TurnCollector()
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                try:
                    ev: TraceEvent = decode(item, TraceEvent)  # type: ignore[arg-type]
                except MalformedPayload:
                    continue
                if (summary := turns.feed(ev)) is not None:
                    yield _sse(turn_chunk(rid, chat.model, created, summary))
            try:
                res = run.result()
            except Exception as e:  # noqa: BLE001 - the stream has started: the error goes in it, as OpenAI's does
                yield _sse(error_body(self._map_error(e, rid)))
                yield b"data: [DONE]\n\n"
                return
            for summary in turns.missing(res):
                yield _sse(turn_chunk(rid, chat.model, created, summary))
            err = error_of_result(res)
            if err is not None:
                yield _sse(error_body(err))
            else:
                for chunk in answer_chunks(res, chat.model, created):
                    yield _sse(chunk)
                if chat.include_usage:
                    yield _sse(usage_chunk(res, chat.model, created))
            yield b"data: [DONE]\n\n"

        return _Stream(events(), cleanup, headers)
