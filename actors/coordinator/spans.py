"""The coordinator's own spans: one ``trinity.coordinator.run`` per run (per delivery of a queued job), one
``trinity.coordinator.turn`` per turn under it, and a CLIENT span per port call (route, role inject, agent
call) under its turn, whose context rides on the call's ``traceparent`` so the runtime's and the agents' spans
become its children.

The run span's parent is the ``traceparent`` the request or job carried (the client's or the gateway's span);
without one the run starts a trace. Each trace event the run emits is added to its turn's span (or the run
span) as a span event, and the key fields (agent, role, margins, tokens, cost, verdict, stop reason) become
attributes, so the trace holds what the trace sink used to rebuild from events. A redelivered job runs again
under a new run span (the killed coordinator's spans end with it), never stretched over both deliveries.

Without a tracer provider (``[tracing] exporter = "none"``) every span is non-recording.

Example:
    >>> spans = RunSpans("q1", Provenance(request_id="q1"))
    >>> spans.traceparent(0) is None       # no provider installed here: nothing recorded
    True
    >>> spans.close()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from bus.provenance import TRACEPARENT, Provenance
from bus.spans import parent_context
from bus.spans import tracer as bus_tracer
from schemas.coordination import CoordinationResult
from schemas.trace import (
    AgentCallFailed,
    AgentCallFinished,
    RoleAssigned,
    RouteDecided,
    RunFailed,
    RunFinished,
    TraceEvent,
    VerdictRecorded,
)


def _event_attributes(ev: TraceEvent) -> dict[str, AttributeValue]:
    """The attributes an event sets on its turn's (or run's) span."""
    if isinstance(ev, RouteDecided):
        d = ev.decision
        return {"trinity.agent_id": d.agent_id, "trinity.routed_role": d.role.label,
                "trinity.agent_margin": d.agent_margin, "trinity.role_margin": d.role_margin,
                "trinity.route_hash": d.route_hash, "trinity.token_count": ev.token_count,
                "trinity.runtime_id": ev.runtime_id}
    if isinstance(ev, RoleAssigned):
        return {"trinity.role": ev.assignment.role.label}
    if isinstance(ev, AgentCallFinished):
        r = ev.receipt
        return {"trinity.provider": r.provider, "trinity.model": r.model,
                "trinity.prompt_tokens": r.usage.prompt_tokens,
                "trinity.completion_tokens": r.usage.completion_tokens, "trinity.cost_usd": r.cost_usd}
    if isinstance(ev, AgentCallFailed):
        return {"trinity.agent_error_code": ev.error_code}
    if isinstance(ev, VerdictRecorded):
        return {"trinity.verdict": ev.verdict.verdict.value}
    if isinstance(ev, RunFinished):
        return {"trinity.stop_reason": ev.stop_reason.value, "trinity.turns": ev.turns}
    if isinstance(ev, RunFailed):
        return {"trinity.error_code": ev.error_code}
    return {}


class RunSpans:
    """The spans of one run (see the module docstring). Not thread-safe; one per run, on the event loop."""

    def __init__(self, request_id: str, base: Provenance, *, adapter: str = "",
                 tracer: trace.Tracer | None = None) -> None:
        attrs: dict[str, AttributeValue] = {"trinity.request_id": request_id}
        if adapter:
            attrs["trinity.adapter"] = adapter
        self._tracer = tracer or bus_tracer()  # the process's (``run.py node`` installs it), unless given
        self.run: Span = self._tracer.start_span("trinity.coordinator.run", context=parent_context(base),
                                             kind=SpanKind.CONSUMER, attributes=attrs)
        self.request_id = request_id
        self._turns: dict[int, Span] = {}
        self._closed = False

    @property
    def recording(self) -> bool:
        """True when this run's spans are recorded (a provider is installed and the trace is sampled)."""
        return self.run.is_recording()

    def _turn(self, turn: int) -> Span:
        if turn < 0:
            return self.run
        span = self._turns.get(turn)
        if span is None:
            for t in [t for t in self._turns if t < turn]:
                self._turns.pop(t).end()
            span = self._tracer.start_span("trinity.coordinator.turn", context=trace.set_span_in_context(self.run),
                                       attributes={"trinity.request_id": self.request_id, "trinity.turn": turn})
            self._turns[turn] = span
        return span

    def context(self, turn: int) -> Context:
        """The context a call of ``turn`` is parented on (its turn span, opened on first use)."""
        return trace.set_span_in_context(self._turn(turn))

    @contextmanager
    def call(self, name: str, turn: int, attributes: dict[str, AttributeValue]) -> Iterator[Span]:
        """A CLIENT span for one port call of ``turn``, current while the call runs (errors recorded)."""
        attrs: dict[str, AttributeValue] = {"trinity.request_id": self.request_id, "trinity.turn": turn, **attributes}
        with self._tracer.start_as_current_span(name, context=self.context(turn), kind=SpanKind.CLIENT,
                                                attributes=attrs, record_exception=True,
                                                set_status_on_exception=True) as span:
            yield span

    def traceparent(self, turn: int) -> str | None:
        """The W3C ``traceparent`` of ``turn``'s span (the run span for ``-1``); ``None`` when not recording."""
        return self._traceparent(self._turn(turn) if not self._closed else self.run)

    def _traceparent(self, span: Span) -> str | None:
        if not span.is_recording():
            return None
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get(TRACEPARENT)

    def on_event(self, ev: TraceEvent) -> str | None:
        """Record ``ev`` on its turn's span (run-level events on the run span); returns that span's
        ``traceparent`` (``None`` when not recording), which the event is published with."""
        if self._closed or not self.run.is_recording():
            return None
        span = self.run if isinstance(ev, (RunFinished, RunFailed)) else self._turn(ev.turn)
        span.add_event(ev.kind, attributes={"trinity.event_id": ev.event_id, "trinity.causation_id": ev.causation_id})
        if attrs := _event_attributes(ev):
            span.set_attributes(attrs)
        if isinstance(ev, RunFailed):
            self.run.set_status(Status(StatusCode.ERROR, f"{ev.error_code}: {ev.message}"[:256]))
        return self._traceparent(span)

    def finish(self, result: CoordinationResult) -> None:
        """Set the run's outcome on the run span and end every span."""
        if self.run.is_recording():
            self.run.set_attributes({"trinity.status": result.status.value,
                                     "trinity.stop_reason": result.stop_reason.value,
                                     "trinity.turns": len(result.turns)})
            if result.error:
                self.run.set_status(Status(StatusCode.ERROR, result.error[:256]))
        self.close()

    def close(self, error: BaseException | None = None) -> None:
        """End the turn spans and the run span (``error``, when given, is recorded on the run span)."""
        if self._closed:
            return
        self._closed = True
        if error is not None and self.run.is_recording():
            self.run.record_exception(error)
            self.run.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:256]))
        for span in self._turns.values():
            span.end()
        self._turns.clear()
        self.run.end()
