"""A process's OpenTelemetry tracer provider, built from ``[tracing]`` (:class:`config.tracing.TracingSettings`).

Actors open their spans on OpenTelemetry's global API (``opentelemetry.trace.get_tracer``); until a provider
is installed those spans are non-recording and cost next to nothing. :func:`configure_tracing` installs the
SDK provider once per process (``run.py node`` does, before the actors start), with the exporter the settings
name and OpenTelemetry's httpx instrumentation (provider agents' HTTP calls become child spans, and carry the
``traceparent`` to the provider). :meth:`Tracing.shutdown` exports what is still buffered.

Example:
    >>> t = configure_tracing(TracingSettings(exporter="otlp"), node_id="n1", actors=["coordinator"])  # doctest: +SKIP
    >>> ...; t.shutdown()                                                                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config.tracing import TracingExporter, TracingSettings

log = logging.getLogger(__name__)


class TracingUnavailable(RuntimeError):
    """The settings ask for an exporter whose package is not installed."""


@dataclass
class Tracing:
    """The installed provider (``None`` when tracing is off) and, for ``in-memory``, its exporter."""

    settings: TracingSettings
    provider: TracerProvider | None = None
    memory: InMemorySpanExporter | None = None

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now; False when it did not finish within ``timeout_ms``."""
        return True if self.provider is None else self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop exporting (spans ended later are dropped)."""
        if self.provider is not None:
            self.provider.force_flush(5000)
            self.provider.shutdown()


def _exporter(s: TracingSettings) -> tuple[SpanExporter, InMemorySpanExporter | None]:
    if s.exporter is TracingExporter.CONSOLE:
        return ConsoleSpanExporter(), None
    if s.exporter is TracingExporter.MEMORY:
        mem = InMemorySpanExporter()
        return mem, mem
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingUnavailable("tracing.exporter is 'otlp' but opentelemetry-exporter-otlp-proto-http is not "
                                 "installed; pip install 'opentelemetry-exporter-otlp-proto-http>=1.45,<2' or set "
                                 "tracing.exporter=none") from exc
    return OTLPSpanExporter(endpoint=s.traces_url()), None


def _instrument_httpx() -> None:
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        log.warning("tracing: opentelemetry-instrumentation-httpx is not installed; provider HTTP calls get no "
                    "spans (pip install 'opentelemetry-instrumentation-httpx>=0.66b2,<1')")
        return
    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def configure_tracing(settings: TracingSettings, *, node_id: str = "", actors: Sequence[str] = ()) -> Tracing:
    """Install this process's tracer provider (once per process; a second call keeps the first provider).

    Resource: ``service.name`` = ``settings.service_name``, ``service.instance.id`` = ``node_id``,
    ``trinity.actors`` (the process's actors) and ``process.pid``. Raises :class:`TracingUnavailable` when the
    exporter's package is missing.
    """
    if not settings.enabled:
        return Tracing(settings)
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        log.warning("tracing: a tracer provider is already installed in this process; keeping it")
        return Tracing(settings, current)
    exporter, memory = _exporter(settings)
    resource = Resource.create({"service.name": settings.service_name, "service.instance.id": node_id,
                                "trinity.actors": list(actors), "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter) if memory is not None
                                else BatchSpanProcessor(exporter, schedule_delay_millis=settings.batch_delay_ms))
    trace.set_tracer_provider(provider)
    if settings.instrument_httpx:
        _instrument_httpx()
    if settings.exporter is TracingExporter.OTLP:
        log.info("tracing: spans of %s go to %s (OTLP/HTTP)", node_id or "this process", settings.traces_url())
    return Tracing(settings, provider, memory)
