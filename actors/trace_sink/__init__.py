"""Trace sink: consumes ``TRINITY_TRACE``, redacts, exports JSONL and OpenTelemetry spans; tail rendering.

Modules: ``redact`` (secrets, key patterns, content hashing), ``jsonl`` (rotating files), ``otel`` (a span per
run and per turn, parented by the propagated ``traceparent``), ``sink`` (bounded export lanes, overflow
counted), ``render`` (one terminal line per event and filters, used by ``run.py tail``), ``actor`` (the
durable JetStream consumer).
"""
