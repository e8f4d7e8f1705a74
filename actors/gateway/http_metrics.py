"""The gateway's HTTP requests in ``$SRV.STATS`` and the Prometheus metrics: an ASGI middleware.

Every HTTP request is timed from its arrival to the last byte of its response (a stream included) and counted
with its status in ``trinity_gateway_http_requests_total{route,status}`` and
``trinity_gateway_http_seconds{route}``; chat completions are also the gateway service's ``chat_completions``
work endpoint (``$SRV.STATS``: a 4xx/5xx answer is an error, its ``last_error`` the HTTP status).

Example:
    >>> app = HttpMetrics(app, service, work_routes={"/v1/chat/completions": "chat_completions"})  # doctest: +SKIP
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.metrics import LATENCY_BUCKETS
from bus.service import ActorService

HTTP_REQUESTS = Counter("trinity_gateway_http_requests", "Gateway HTTP requests by route and status",
                        ["route", "status"])
HTTP_SECONDS = Histogram("trinity_gateway_http_seconds", "Gateway HTTP request time, arrival to the last byte",
                         ["route"], buckets=LATENCY_BUCKETS)
KNOWN_ROUTES = ("/v1/chat/completions", "/v1/models", "/health")


class HttpMetrics:
    """ASGI middleware counting and timing every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, service: ActorService, *, work_routes: dict[str, str]) -> None:
        self.app = app
        self.service = service
        self.work_routes = work_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter_ns()
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"  # bounded label values
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_REQUESTS.labels(route=route, status=str(status)).inc()
            HTTP_SECONDS.labels(route=route).observe((time.perf_counter_ns() - started) / 1e9)
            work = self.work_routes.get(path)
            if work is not None:
                self.service.record(work, started, "ok" if status < 400 else f"http_{status}")
