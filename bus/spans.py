"""Spans of an actor's work, parented by the W3C trace context that came with a bus message.

Actors open spans on OpenTelemetry's global API (a process's provider is installed by ``run.py node``, see
:mod:`ops.tracing`; without one every span is non-recording and costs next to nothing). :func:`span` starts a
span as the current one, its parent taken from a :class:`~bus.provenance.Provenance` (the message's
``traceparent``); a message without one starts a new trace. Calls made inside it with :func:`bus.rpc.request`
carry the span as their ``traceparent``, so the next actor's spans become its children.

Example:
    >>> with span("trinity.agent.call", Provenance(request_id="q1"), attributes={"trinity.agent_id": 3}) as s:
    ...     s.is_recording()
    False
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from bus.provenance import Provenance

TRACER = "trinity"


def tracer() -> trace.Tracer:
    """The tracer actors open their spans on (the process's provider, or a no-op one)."""
    return trace.get_tracer(TRACER)


def provider_installed() -> bool:
    """True when this process has an SDK tracer provider (its spans are recorded and exported). Only the API
    is needed to import this module (a client install has no SDK)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return False
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def parent_context(provenance: Provenance | None) -> Context:
    """The context to parent a span on: the provenance's ``traceparent``, or an empty one (a new trace)."""
    if provenance is None or not provenance.traceparent:
        return Context()
    return provenance.otel_context()


@contextmanager
def span(name: str, provenance: Provenance | None, *, kind: SpanKind = SpanKind.SERVER,
         attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Span]:
    """Start ``name`` as the current span, child of ``provenance``'s trace context; an exception escaping the
    block is recorded on it and its status set to error. ``trinity.request_id`` and ``trinity.turn`` are set
    from the provenance when known."""
    attrs: dict[str, AttributeValue] = {}
    if provenance is not None and provenance.request_id:
        attrs["trinity.request_id"] = provenance.request_id
    if provenance is not None and provenance.turn >= 0:
        attrs["trinity.turn"] = provenance.turn
    if attributes:
        attrs.update(attributes)
    with tracer().start_as_current_span(name, context=parent_context(provenance), kind=kind, attributes=attrs,
                                        record_exception=True, set_status_on_exception=True) as s:
        yield s


def set_error(s: Span, code: str, message: str) -> None:
    """Mark ``s`` failed with a typed error (``code: message``) and ``trinity.error_code``."""
    if s.is_recording():
        s.set_attribute("trinity.error_code", code)
        s.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:256]))
