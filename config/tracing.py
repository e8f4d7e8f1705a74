"""Settings of a process's own OpenTelemetry spans (``[tracing]``): where the actors' spans go.

Every actor of a node process opens its own spans (coordinator run and turns, runtime route, agent call,
provider HTTP, gateway HTTP request) on the process's tracer provider, which ``run.py node`` builds from
these settings (:mod:`ops.tracing`). ``exporter``: ``none`` (default: spans are not recorded, nothing is
exported), ``console``, ``in-memory`` (tests in one process) or ``otlp`` (OTLP over HTTP/protobuf to
``otlp_endpoint``; a base URL such as ``http://collector:4318`` gets ``/v1/traces`` appended).
``batch_delay_ms``: how long finished spans wait before a batch is exported; ``service_name`` is the
resource's ``service.name`` (the node id and the actors of the process are resource attributes too).

Not to be confused with ``[trace_sink] otel``, the trace sink's spans rebuilt from trace events.

No environment is read here; :func:`tracing_env_doc` takes the mapping explicitly.

Example:
    >>> tracing_env_doc({"TRINITY_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    {'exporter': 'otlp', 'otlp_endpoint': 'http://c:4318'}
    >>> TracingSettings(exporter="otlp", otlp_endpoint="http://c:4318").traces_url()
    'http://c:4318/v1/traces'
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

TRACES_PATH = "/v1/traces"


class TracingExporter(enum.StrEnum):
    """Where a process's spans go."""

    NONE = "none"
    CONSOLE = "console"
    MEMORY = "in-memory"
    OTLP = "otlp"


class TracingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A process's own spans (see the module docstring)."""

    exporter: TracingExporter = TracingExporter.NONE
    otlp_endpoint: str = "http://127.0.0.1:4318"
    service_name: str = "trinity-nats"
    batch_delay_ms: int = 1000
    instrument_httpx: bool = True

    def __post_init__(self) -> None:
        if self.batch_delay_ms < 1:
            raise ValueError(f"batch_delay_ms: must be >= 1, got {self.batch_delay_ms}")
        if self.exporter is TracingExporter.OTLP and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint: must be an http(s) URL (OTLP over HTTP), got {self.otlp_endpoint!r}")

    @property
    def enabled(self) -> bool:
        """True when spans are recorded and exported."""
        return self.exporter is not TracingExporter.NONE

    def traces_url(self) -> str:
        """The OTLP/HTTP traces URL: ``otlp_endpoint`` with ``/v1/traces`` appended unless it ends with it."""
        url = self.otlp_endpoint.rstrip("/")
        return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


def tracing_env_doc(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[tracing]`` fields the environment gives: ``TRINITY_TRACING`` (none|console|in-memory|otlp),
    OpenTelemetry's ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, which wins)
    and ``OTEL_SERVICE_NAME``; only those set contribute."""
    doc: dict[str, Any] = {}
    if exporter := environ.get("TRINITY_TRACING"):
        if exporter not in {k.value for k in TracingExporter}:
            raise ValueError(f"TRINITY_TRACING: expected one of {', '.join(k.value for k in TracingExporter)}, "
                             f"got {exporter!r}")
        doc["exporter"] = exporter
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        doc["otlp_endpoint"] = endpoint
    if name := environ.get("OTEL_SERVICE_NAME"):
        doc["service_name"] = name
    return doc
