"""OpenTelemetry export: a span per run and per turn, built from (redacted) trace events.

The run span is parented by the W3C ``traceparent`` the event's message carried (so the sink's spans
join the coordinator's trace); turn spans are children of the run span. Each event becomes a span event
on its turn's span (or the run span) with its fields flattened into attributes; key fields (agent, role,
margins, usage, verdict, stop reason) are also set on the spans. Span times come from the events' ``ts``.
A run whose ``run_finished``/``run_failed`` never arrives is ended as ``trinity.incomplete`` when more
than ``max_open_runs`` runs are open. A redelivered run (``run_redelivered``, or a second ``run_started``)
ends the open run span at its last event (``trinity.superseded``) and opens a new one for the new delivery
(``trinity.delivery``), so deliveries never merge into one long span.

Coexistence with the actors' own spans (``[tracing]``): events whose coordinator records the run's spans
itself arrive marked (``actor_spans``, header ``Trinity-Spans: 1``, with the ``traceparent`` of the
coordinator's span). With ``rebuild = "auto"`` (default) they are not rebuilt: the coordinator's run and turn
spans already carry each event as a span event and its key fields as attributes. ``rebuild = "always"``
rebuilds them anyway, as children of the coordinator's spans in the same trace.

Exporter (settings): ``none``, ``console``, ``in-memory`` (tests read :attr:`OtelSpans.memory`) or
``otlp`` (only when ``opentelemetry-exporter-otlp`` is installed; otherwise a clear error).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from config.trace_sink import OtelExporterKind, OtelRebuild, OtelSettings
from schemas.trace import (
    AgentCallFinished,
    RoleAssigned,
    RouteDecided,
    RunFailed,
    RunFinished,
    RunRedelivered,
    RunStarted,
    TraceEvent,
    VerdictRecorded,
)


class OtlpUnavailable(RuntimeError):
    """``otel.exporter = otlp`` but the OTLP exporter package is not installed."""


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def flatten(value: Any, prefix: str = "trinity") -> dict[str, Any]:
    """Nested builtins flattened to OpenTelemetry attributes (``trinity.receipt.usage.prompt_tokens``)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}"))
    elif isinstance(value, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[prefix] = [float(v) for v in value]
        elif all(isinstance(v, str) for v in value):
            out[prefix] = list(value)
        else:
            for i, v in enumerate(value):
                out.update(flatten(v, f"{prefix}.{i}"))
    elif value is not None:
        out[prefix] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


@dataclass
class _Run:
    span: Span
    turns: dict[int, Span] = field(default_factory=dict)
    last_ts: float = 0.0
    events: int = 0
    redelivery: bool = False  # opened by a run_redelivered event


def _build_exporter(settings: OtelSettings) -> tuple[SpanExporter | None, InMemorySpanExporter | None]:
    kind = settings.exporter
    if kind is OtelExporterKind.NONE:
        return None, None
    if kind is OtelExporterKind.CONSOLE:
        return ConsoleSpanExporter(), None
    if kind is OtelExporterKind.MEMORY:
        mem = InMemorySpanExporter()
        return mem, mem
    try:
        mod = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        try:
            mod = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError as exc:
            raise OtlpUnavailable("otel.exporter is 'otlp' but no OTLP exporter is installed; install "
                                  "'opentelemetry-exporter-otlp' or choose none/console/in-memory") from exc
    kwargs = {"endpoint": settings.otlp_endpoint} if settings.otlp_endpoint else {}
    exporter: SpanExporter = mod.OTLPSpanExporter(**kwargs)
    return exporter, None


class OtelSpans:
    """Turns trace events into spans on its own :class:`TracerProvider` (never the global one)."""

    def __init__(self, settings: OtelSettings) -> None:
        self.settings = settings
        exporter, self.memory = _build_exporter(settings)
        self.enabled = exporter is not None
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        if exporter is not None:
            processor = (SimpleSpanProcessor(exporter) if settings.exporter is OtelExporterKind.MEMORY
                         else BatchSpanProcessor(exporter))
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("trinity.trace_sink")
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self.evicted = 0
        self.superseded = 0  # run spans ended by a redelivery of their job
        self.skipped = 0  # events of runs whose coordinator records its own spans (rebuild = auto)

    @property
    def open_runs(self) -> int:
        """Runs with a span still open."""
        return len(self._runs)

    def _run(self, ev: TraceEvent, traceparent: str | None) -> _Run:
        run = self._runs.get(ev.request_id)
        if run is not None and (isinstance(ev, RunRedelivered) or (
                isinstance(ev, RunStarted) and not (run.redelivery and run.events == 1))):
            # a new delivery of the job: the old one ends where its events stopped
            run.span.set_attribute("trinity.superseded", True)
            self._runs.pop(ev.request_id)
            self._end(run, run.last_ts)
            self.superseded += 1
            run = None
        if run is not None:
            self._runs.move_to_end(ev.request_id)
            return run
        parent: Context = extract({"traceparent": traceparent}) if traceparent else Context()
        span = self.tracer.start_span("trinity.run", context=parent, kind=SpanKind.INTERNAL, start_time=_ns(ev.ts),
                                      attributes={"trinity.request_id": ev.request_id})
        if isinstance(ev, RunRedelivered):
            span.set_attribute("trinity.delivery", ev.delivery)
        elif ev.kind != "run_started":
            span.set_attribute("trinity.partial", True)
        run = _Run(span, last_ts=ev.ts, redelivery=isinstance(ev, RunRedelivered))
        self._runs[ev.request_id] = run
        while len(self._runs) > self.settings.max_open_runs:
            _, old = self._runs.popitem(last=False)
            old.span.set_attribute("trinity.incomplete", True)
            self._end(old, None)
            self.evicted += 1
        return run

    def _turn(self, run: _Run, ev: TraceEvent) -> Span:
        span = run.turns.get(ev.turn)
        if span is None:
            for t in [t for t in run.turns if t < ev.turn]:
                run.turns.pop(t).end(end_time=_ns(ev.ts))
            span = self.tracer.start_span(f"trinity.turn {ev.turn}", context=trace.set_span_in_context(run.span),
                                          start_time=_ns(ev.ts), attributes={"trinity.request_id": ev.request_id,
                                                                             "trinity.turn": ev.turn})
            run.turns[ev.turn] = span
        return span

    @staticmethod
    def _end(run: _Run, ts: float | None) -> None:
        end = None if ts is None else _ns(ts)
        for span in run.turns.values():
            span.end(end_time=end)
        run.turns.clear()
        run.span.end(end_time=end)

    def handle(self, ev: TraceEvent, traceparent: str | None = None, *, actor_spans: bool = False) -> None:
        """Record one (redacted) event; ``actor_spans``: its coordinator records the run's spans itself."""
        if not self.enabled:
            return
        if actor_spans and self.settings.rebuild is OtelRebuild.AUTO:
            self.skipped += 1
            return
        run = self._run(ev, traceparent)
        run.last_ts = max(run.last_ts, ev.ts)
        run.events += 1
        target = self._turn(run, ev) if ev.turn >= 0 and not isinstance(ev, (RunFinished, RunFailed)) else run.span
        attrs = flatten({k: v for k, v in msgspec.to_builtins(ev).items() if k not in ("request_id", "kind")})
        target.add_event(ev.kind, attributes=attrs, timestamp=_ns(ev.ts))
        if isinstance(ev, RouteDecided):
            d = ev.decision
            target.set_attributes({"trinity.agent_id": d.agent_id, "trinity.routed_role": d.role.label,
                                   "trinity.agent_margin": d.agent_margin, "trinity.role_margin": d.role_margin,
                                   "trinity.route_hash": d.route_hash, "trinity.confidence": d.confidence.value})
        elif isinstance(ev, RoleAssigned):
            target.set_attribute("trinity.role", ev.assignment.role.label)
        elif isinstance(ev, AgentCallFinished):
            r = ev.receipt
            target.set_attributes({"trinity.provider": r.provider, "trinity.model": r.model,
                                   "trinity.latency_ms": r.latency_ms, "trinity.prompt_tokens": r.usage.prompt_tokens,
                                   "trinity.completion_tokens": r.usage.completion_tokens,
                                   "trinity.cost_usd": r.cost_usd})
        elif isinstance(ev, VerdictRecorded):
            target.set_attribute("trinity.verdict", ev.verdict.verdict.value)
        elif isinstance(ev, RunFinished):
            run.span.set_attributes({"trinity.stop_reason": ev.stop_reason.value, "trinity.turns": ev.turns})
            self._runs.pop(ev.request_id, None)
            self._end(run, ev.ts)
        elif isinstance(ev, RunFailed):
            run.span.set_status(Status(StatusCode.ERROR, f"{ev.error_code}: {ev.message}"[:256]))
            if ev.stop_reason is not None:
                run.span.set_attribute("trinity.stop_reason", ev.stop_reason.value)
            self._runs.pop(ev.request_id, None)
            self._end(run, ev.ts)

    def close(self) -> None:
        """End open spans as incomplete, flush and shut the provider down."""
        for run in self._runs.values():
            run.span.set_attribute("trinity.incomplete", True)
            self._end(run, None)
        self._runs.clear()
        self.provider.force_flush()
        self.provider.shutdown()
