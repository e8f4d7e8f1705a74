"""Provenance headers: request id, turn, causation id and W3C trace context on every bus message.

Header names: ``Trinity-Request-Id``, ``Trinity-Turn``, ``Trinity-Causation-Id``, and the W3C
``traceparent`` / ``tracestate`` that OpenTelemetry propagates.

Example:
    >>> p = Provenance(request_id="q1", turn=2, causation_id="evt-7")
    >>> Provenance.from_headers(p.to_headers()) == p
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from opentelemetry import context as otel_context
from opentelemetry import propagate

REQUEST_ID = "Trinity-Request-Id"
TURN = "Trinity-Turn"
CAUSATION_ID = "Trinity-Causation-Id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: On a trace event: the coordinator that emitted it records the run's spans itself (see the trace sink).
SPANS = "Trinity-Spans"
#: A queued job's absolute deadline, epoch seconds (set by the client that queues it; a redelivery keeps it).
DEADLINE_AT = "Trinity-Deadline-At"


@dataclass(frozen=True)
class Provenance:
    """Where a message comes from: which request, which turn, what caused it, which trace."""

    request_id: str = ""
    turn: int = -1
    causation_id: str = ""
    traceparent: str | None = None
    tracestate: str | None = None

    def to_headers(self) -> dict[str, str]:
        """The NATS headers carrying this provenance (empty values left out)."""
        headers: dict[str, str] = {}
        if self.request_id:
            headers[REQUEST_ID] = self.request_id
        if self.turn >= 0:
            headers[TURN] = str(self.turn)
        if self.causation_id:
            headers[CAUSATION_ID] = self.causation_id
        if self.traceparent:
            headers[TRACEPARENT] = self.traceparent
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Provenance:
        """Read provenance from message headers; missing or bad values fall back to defaults."""
        if not headers:
            return cls()
        try:
            turn = int(headers.get(TURN, "-1"))
        except ValueError:
            turn = -1
        return cls(
            request_id=headers.get(REQUEST_ID, ""),
            turn=turn,
            causation_id=headers.get(CAUSATION_ID, ""),
            traceparent=headers.get(TRACEPARENT),
            tracestate=headers.get(TRACESTATE),
        )

    def caused_by(self, causation_id: str, turn: int | None = None) -> Provenance:
        """The same request and trace, caused by ``causation_id`` (and at ``turn`` if given)."""
        return replace(self, causation_id=causation_id, turn=self.turn if turn is None else turn)

    def with_current_trace(self) -> Provenance:
        """Copy carrying the active OpenTelemetry span's context (W3C ``traceparent``)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if TRACEPARENT not in carrier:
            return self
        return replace(self, traceparent=carrier[TRACEPARENT], tracestate=carrier.get(TRACESTATE))

    def otel_context(self) -> otel_context.Context:
        """The OpenTelemetry context to parent spans on (empty when no traceparent was sent)."""
        carrier = {k: v for k, v in ((TRACEPARENT, self.traceparent), (TRACESTATE, self.tracestate)) if v}
        return propagate.extract(carrier)
