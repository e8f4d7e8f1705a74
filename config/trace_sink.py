"""Settings of the trace sink actor: the stream and durable consumer, redaction, exports, buffers.

No environment is read here; :func:`trace_sink_env_doc` takes the mapping explicitly.

Example:
    >>> s = TraceSinkSettings()
    >>> (s.durable, s.redaction.store_full_text, s.otel.exporter.value)
    ('trace-sink', False, 'none')
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from config.secrets import Secret


class RedactionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What is removed before anything is stored or exported.

    Built-in patterns catch OpenAI/Anthropic (``sk-...``, ``sk-ant-...``), Google (``AIza...``) keys and
    bearer tokens; ``secrets`` are exact values (e.g. every configured provider key; at least 6 characters),
    ``patterns`` extra regular expressions. Message content (query, prompts, replies, answers) is stored as
    its sha256 unless ``store_full_text``.
    """

    secrets: list[Secret] = msgspec.field(default_factory=list)
    patterns: list[str] = msgspec.field(default_factory=list)
    builtin_patterns: bool = True
    store_full_text: bool = False
    marker: str = "[REDACTED]"

    def __post_init__(self) -> None:
        for s in self.secrets:
            if len(s.reveal()) < 6:
                raise ValueError("redaction.secrets: a secret value shorter than 6 characters would redact ordinary "
                                 "text; use a pattern instead")
            if s.reveal() in self.marker:
                raise ValueError("redaction.secrets: a secret value must not occur in the redaction marker")


class JsonlSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """JSONL export with size rotation: ``path`` -> ``path.1`` ... ``path.<keep>`` (oldest dropped)."""

    enabled: bool = True
    path: str = "~/.cache/trinity-nats/traces/trace.jsonl"
    max_bytes: int = 64 * 1024 * 1024
    keep: int = 5

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError(f"jsonl.max_bytes: must be >= 1024, got {self.max_bytes}")
        if self.keep < 0:
            raise ValueError(f"jsonl.keep: must be >= 0, got {self.keep}")

    def resolved_path(self) -> Path:
        """The path with ``~`` expanded."""
        return Path(self.path).expanduser()


class OtelExporterKind(enum.StrEnum):
    """Where OpenTelemetry spans go. ``otlp`` needs the ``opentelemetry-exporter-otlp`` package."""

    NONE = "none"
    CONSOLE = "console"
    MEMORY = "in-memory"
    OTLP = "otlp"


class OtelRebuild(enum.StrEnum):
    """Which runs the trace sink rebuilds as spans from their events."""

    AUTO = "auto"
    ALWAYS = "always"


class OtelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OpenTelemetry export: a span per run and per turn, rebuilt from events, parented by the propagated
    ``traceparent``.

    ``rebuild``: ``auto`` (default) rebuilds only runs whose coordinator does not record its own spans (its
    events come without ``Trinity-Spans: 1``; see ``[tracing]``): a traced run is not exported twice.
    ``always`` rebuilds every run; a traced run's rebuilt spans are then children of the coordinator's
    spans in the same trace.
    """

    exporter: OtelExporterKind = OtelExporterKind.NONE
    otlp_endpoint: str | None = None
    service_name: str = "trinity-nats"
    max_open_runs: int = 4096
    rebuild: OtelRebuild = OtelRebuild.AUTO


class TraceSinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The trace sink: consume ``TRINITY_TRACE`` with a durable consumer, redact, export.

    ``start_timeout_s``: how long ``start()`` waits for the first fetch round trip (after ``fetch_timeout_s``);
    ``stall_after_s``: a fetch loop that consumes nothing this long while the consumer has messages pending
    is declared stalled, and the actor restarted.
    ``storage_check_s``: how often the sink checks that its stream and durable consumer exist (recreating
    them, with a log line, when deleted); a JetStream store too small for the stream is logged as a typed
    error and retried while the node keeps running.
    ``buffer_size`` bounds each exporter's queue; when it is full the event is dropped for that exporter,
    counted, and reported in the stats and a log line (at most every ``overflow_log_interval_s``).
    """

    stream: str = "TRINITY_TRACE"
    filter_subject: str = "trinity.trace.>"
    durable: str = "trace-sink"
    fetch_batch: int = 128
    fetch_timeout_s: float = 1.0
    start_timeout_s: float = 30.0
    stall_after_s: float = 30.0
    ack_wait_s: float = 30.0
    storage_check_s: float = 2.0
    buffer_size: int = 4096
    max_payload_bytes: int = 4 * 1024 * 1024
    overflow_log_interval_s: float = 10.0
    redaction: RedactionSettings = msgspec.field(default_factory=RedactionSettings)
    jsonl: JsonlSettings = msgspec.field(default_factory=JsonlSettings)
    otel: OtelSettings = msgspec.field(default_factory=OtelSettings)

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.fetch_batch < 1:
            raise ValueError("buffer_size and fetch_batch must be >= 1")
        for name in ("fetch_timeout_s", "start_timeout_s", "stall_after_s", "storage_check_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")


def _int_var(environ: Mapping[str, str], var: str) -> int | None:
    text = environ.get(var)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{var}: expected an integer, got {text!r}") from None


def trace_sink_env_doc(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[trace_sink]`` fields the ``TRINITY_TRACE_*`` variables give, as a partial document.

    Only variables that are set contribute, so an override of another field keeps them (see
    :mod:`config.settings`). Variables: ``TRINITY_TRACE_FULL_TEXT`` (1/true/yes/on, else false),
    ``TRINITY_TRACE_JSONL`` (path, or ``off``), ``TRINITY_TRACE_JSONL_MAX_BYTES``, ``TRINITY_TRACE_JSONL_KEEP``,
    ``TRINITY_TRACE_OTEL`` (none|console|in-memory|otlp), ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``TRINITY_TRACE_REDACT_PATTERNS`` (regexes separated by newlines), ``TRINITY_TRACE_DURABLE``.
    Redaction secrets are not read here: :func:`config.settings.load_settings` adds every configured secret
    after the last layer.

    Example:
        >>> trace_sink_env_doc({"TRINITY_TRACE_JSONL": "off", "TRINITY_TRACE_DURABLE": "ts-2"})
        {'jsonl': {'enabled': False}, 'durable': 'ts-2'}
    """
    doc: dict[str, Any] = {}
    redaction: dict[str, Any] = {}
    if (full := environ.get("TRINITY_TRACE_FULL_TEXT")) is not None:
        redaction["store_full_text"] = full.strip().lower() in ("1", "true", "yes", "on")
    if patterns := [p for p in environ.get("TRINITY_TRACE_REDACT_PATTERNS", "").split("\n") if p.strip()]:
        redaction["patterns"] = patterns
    if redaction:
        doc["redaction"] = redaction
    jsonl: dict[str, Any] = {}
    if path := environ.get("TRINITY_TRACE_JSONL"):
        jsonl.update({"enabled": False} if path.lower() == "off" else {"path": path})
    if (max_bytes := _int_var(environ, "TRINITY_TRACE_JSONL_MAX_BYTES")) is not None:
        jsonl["max_bytes"] = max_bytes
    if (keep := _int_var(environ, "TRINITY_TRACE_JSONL_KEEP")) is not None:
        jsonl["keep"] = keep
    if jsonl:
        doc["jsonl"] = jsonl
    otel: dict[str, Any] = {}
    if exporter := environ.get("TRINITY_TRACE_OTEL"):
        if exporter not in {k.value for k in OtelExporterKind}:
            raise ValueError(f"TRINITY_TRACE_OTEL: expected one of {', '.join(k.value for k in OtelExporterKind)}, "
                             f"got {exporter!r}")
        otel["exporter"] = exporter
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        otel["otlp_endpoint"] = endpoint
    if otel:
        doc["otel"] = otel
    if durable := environ.get("TRINITY_TRACE_DURABLE"):
        doc["durable"] = durable
    return doc


def trace_sink_settings_from_env(environ: Mapping[str, str], *, secrets: list[Secret] | None = None,
                                 ) -> TraceSinkSettings:
    """Defaults updated by :func:`trace_sink_env_doc` (pass ``os.environ``); ``secrets`` adds values to redact."""
    s = msgspec.convert(trace_sink_env_doc(environ), TraceSinkSettings, strict=False)
    if secrets:
        s = msgspec.structs.replace(s, redaction=msgspec.structs.replace(s.redaction, secrets=list(secrets)))
    return s
