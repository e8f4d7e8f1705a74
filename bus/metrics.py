"""Prometheus metrics of one process: every actor records where the work happens; each process serves its own.

The metrics live in ``prometheus_client``'s default registry of the process that does the work, so a node
started with ``metrics_port`` exposes what *its* actors did (scrape each node; Prometheus adds ``instance``).

- Every :class:`~bus.service.ActorService` endpoint and work-queue endpoint (all actors):
  ``trinity_endpoint_requests_total{service,endpoint,outcome}`` (``ok`` or an :class:`~schemas.wire.ErrorCode`),
  ``trinity_endpoint_seconds{service,endpoint}`` (histogram, the real handler's time),
  ``trinity_endpoint_in_flight{service,endpoint}``, and ``trinity_errors_total{source,code}``.
- The coordinator, from the trace events it emits (:func:`observe_event`): ``trinity_requests_total``,
  ``trinity_runs_total{outcome,stop_reason}``, ``trinity_run_seconds``, ``trinity_turns_total``,
  ``trinity_routes_total{agent,role}``, ``trinity_route_seconds``, ``trinity_agent_calls_total{agent,outcome}``,
  ``trinity_agent_seconds{agent}``, ``trinity_agent_tokens_total{agent,kind}``,
  ``trinity_agent_cost_usd_total{agent}``, ``trinity_redeliveries_total``; run failures also count in
  ``trinity_errors_total{source="run"}``.
- Queues: ``trinity_jobs_pending`` (work-queue jobs not yet delivered, from the last fetched job's metadata),
  ``trinity_jobs_running``, ``trinity_runtime_queue_depth`` (route requests waiting for a batch),
  ``trinity_trace_events_pending{actor}`` (events buffered, not yet published or
  exported), ``trinity_trace_events_unconsumed`` (on the stream, not yet delivered to the trace sink).
- Model runtime: ``trinity_adapter_loads_total{outcome}``.
- Node (when it serves metrics): ``trinity_node_ready``, ``trinity_actor_serving{actor}``.

Example:
    >>> from bus import metrics
    >>> metrics.observe_event(event)                      # doctest: +SKIP
    >>> server = metrics.serve(9464, host="127.0.0.1")    # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from schemas.trace import (
    AgentCallFailed,
    AgentCallFinished,
    RouteDecided,
    RunFailed,
    RunFinished,
    RunRedelivered,
    RunStarted,
    TraceEvent,
)

#: Buckets (seconds) for latencies from sub-millisecond bus hops to multi-minute runs.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

ENDPOINT_REQUESTS = Counter("trinity_endpoint_requests", "Requests and work-queue jobs an endpoint handled, by outcome",
                            ["service", "endpoint", "outcome"])
ENDPOINT_SECONDS = Histogram("trinity_endpoint_seconds", "Time from receiving a request (or job) to its reply",
                             ["service", "endpoint"], buckets=LATENCY_BUCKETS)
ENDPOINT_IN_FLIGHT = Gauge("trinity_endpoint_in_flight", "Requests (or jobs) an endpoint is serving now",
                           ["service", "endpoint"])
ERRORS = Counter("trinity_errors", "Errors by where they happened and their code", ["source", "code"])

REQUESTS = Counter("trinity_requests", "Coordination runs started")
RUNS = Counter("trinity_runs", "Coordination runs ended", ["outcome", "stop_reason"])
RUN_SECONDS = Histogram("trinity_run_seconds", "Coordination run time, run_started to its end", buckets=LATENCY_BUCKETS)
TURNS = Counter("trinity_turns", "Turns routed (one route decision each)")
ROUTES = Counter("trinity_routes", "Route decisions by chosen agent and role", ["agent", "role"])
ROUTE_SECONDS = Histogram("trinity_route_seconds", "Router latency per turn", buckets=LATENCY_BUCKETS)
AGENT_CALLS = Counter("trinity_agent_calls", "Agent calls by agent and outcome (ok or error code)",
                      ["agent", "outcome"])
AGENT_SECONDS = Histogram("trinity_agent_seconds", "Agent call latency", ["agent"], buckets=LATENCY_BUCKETS)
AGENT_TOKENS = Counter("trinity_agent_tokens", "Tokens used by agent calls", ["agent", "kind"])
AGENT_COST = Counter("trinity_agent_cost_usd", "Cost of agent calls in US dollars", ["agent"])
REDELIVERIES = Counter("trinity_redeliveries", "Work-queue jobs redelivered after a coordinator stopped mid-run")

JOBS_PENDING = Gauge("trinity_jobs_pending", "Work-queue jobs not yet delivered to any coordinator")
JOBS_RUNNING = Gauge("trinity_jobs_running", "Work-queue jobs running in this process")
RUNTIME_QUEUED = Gauge("trinity_runtime_queue_depth",
                       "Route requests queued in this process's model runtime batcher (at its last heartbeat)")
TRACE_UNCONSUMED = Gauge("trinity_trace_events_unconsumed",
                         "Trace events on the stream not yet delivered to the trace sink (from the last one consumed)")
TRACE_PENDING = Gauge("trinity_trace_events_pending", "Trace events buffered and not yet published or exported",
                      ["actor"])
NODE_READY = Gauge("trinity_node_ready", "1 while every actor of this node serves")
ACTOR_SERVING = Gauge("trinity_actor_serving", "1 while the actor serves", ["actor"])
ADAPTER_LOADS = Counter("trinity_adapter_loads", "Adapter loads by outcome (ok or error code)", ["outcome"])

_MAX_OPEN_RUNS = 100_000
_open_runs: OrderedDict[str, float] = OrderedDict()
_lock = threading.Lock()


def observe_event(event: TraceEvent) -> None:
    """Count one coordinator trace event (call it once per event, where it is emitted)."""
    if isinstance(event, RunStarted):
        REQUESTS.inc()
        with _lock:
            _open_runs[event.request_id] = event.ts
            while len(_open_runs) > _MAX_OPEN_RUNS:
                _open_runs.popitem(last=False)
    elif isinstance(event, RouteDecided):
        TURNS.inc()
        ROUTES.labels(agent=str(event.decision.agent_id), role=str(event.decision.role)).inc()
        if event.route_latency_ms > 0:
            ROUTE_SECONDS.observe(event.route_latency_ms / 1000.0)
    elif isinstance(event, AgentCallFinished):
        r = event.receipt
        agent = str(r.agent_id)
        AGENT_CALLS.labels(agent=agent, outcome="ok").inc()
        AGENT_SECONDS.labels(agent=agent).observe(r.latency_ms / 1000.0)
        AGENT_TOKENS.labels(agent=agent, kind="prompt").inc(r.usage.prompt_tokens)
        AGENT_TOKENS.labels(agent=agent, kind="completion").inc(r.usage.completion_tokens)
        AGENT_COST.labels(agent=agent).inc(r.cost_usd)
    elif isinstance(event, AgentCallFailed):
        AGENT_CALLS.labels(agent=str(event.agent_id), outcome=event.error_code).inc()
        ERRORS.labels(source="agent", code=event.error_code).inc()
    elif isinstance(event, RunFinished):
        RUNS.labels(outcome="finished", stop_reason=str(event.stop_reason)).inc()
        _close_run(event)
    elif isinstance(event, RunFailed):
        RUNS.labels(outcome="failed", stop_reason=str(event.stop_reason or event.error_code)).inc()
        ERRORS.labels(source="run", code=event.error_code).inc()
        _close_run(event)
    elif isinstance(event, RunRedelivered):
        REDELIVERIES.inc()


def _close_run(event: TraceEvent) -> None:
    with _lock:
        started = _open_runs.pop(event.request_id, None)
    if started is not None and event.ts >= started:
        RUN_SECONDS.observe(event.ts - started)


def scraped(value: Callable[[], float]) -> Callable[[], float]:
    """``value`` made safe to call from the scrape thread (``prometheus_client`` serves in its own thread while
    the actors change their state on the event loop): NaN when it raised (e.g. a container changed under it)."""
    def read() -> float:
        try:
            return float(value())
        except Exception:  # noqa: BLE001 - a scrape must never fail on one gauge
            return math.nan

    return read


def track_pending(actor: str, pending: Callable[[], int]) -> None:
    """Report ``pending()`` (called at scrape time) as ``trinity_trace_events_pending{actor=...}``."""
    TRACE_PENDING.labels(actor=actor).set_function(scraped(pending))


def serve(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve ``/metrics`` of this process on ``host:port`` in a daemon thread (port 0: a free port; read it from
    ``server.server_port``). Stop it with ``server.shutdown(); server.server_close()``."""
    server, _thread = start_http_server(port, addr=host)
    return server
