"""Spans in one process, on a tracer provider of the test's own (the process's global one is left alone):
a bus request carries the active span as its ``traceparent`` (real nats-server), a handler's span is its
child, the coordinator's run/turn/call spans nest and carry the events' fields, and trace events name the
span they belong to. The cross-process test is ``tests/e2e/test_spans.py``."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors.coordinator.spans import RunSpans
from actors.coordinator.tracing import TracePublisher
from bus import rpc
from bus.provenance import SPANS, TRACEPARENT, Provenance
from bus.service import ActorService, Endpoint, RequestContext
from bus.spans import parent_context
from config.settings import SettingsError, load_settings
from config.tracing import TracingExporter, TracingSettings, tracing_env_doc
from schemas import Message
from tests.coordinator.test_tracing import FakeJS
from tests.trace_sink.events import run_events

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ids(traceparent: str | None) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C ``traceparent`` (its flags left out)."""
    assert traceparent is not None
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


@pytest.fixture
def memory() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_a_request_carries_the_active_span_and_the_handler_span_is_its_child(
        nc: Client, memory: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = memory
    seen: list[Provenance] = []

    async def handle(req: Message, ctx: RequestContext) -> Message:
        seen.append(ctx.provenance)
        with tracer.start_as_current_span("handler", context=parent_context(ctx.provenance), kind=SpanKind.SERVER):
            return req

    svc = ActorService(nc, name="traced", endpoints=[Endpoint("echo", "t.traced", Message, handle)])
    await svc.start()
    try:
        with tracer.start_as_current_span("caller") as caller:
            await rpc.request(nc, "t.traced", Message(role="user", content="hi"), Message, timeout=5,
                              provenance=Provenance(request_id="q1", traceparent=CALLER))
        # without an active span the provenance's own traceparent goes out unchanged
        await rpc.request(nc, "t.traced", Message(role="user", content="hi"), Message, timeout=5,
                          provenance=Provenance(request_id="q2", traceparent=CALLER))
    finally:
        await svc.drain()
    ctx = caller.get_span_context()
    assert ids(seen[0].traceparent) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert seen[1].traceparent == CALLER
    handlers = [s for s in exporter.get_finished_spans() if s.name == "handler"]
    assert handlers[0].parent is not None and handlers[0].parent.span_id == ctx.span_id
    assert handlers[0].context is not None and handlers[0].context.trace_id == ctx.trace_id
    assert handlers[1].parent is not None and f"{handlers[1].parent.span_id:016x}" == "00f067aa0ba902b7"


async def test_run_spans_nest_and_carry_the_events(memory: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = memory
    spans = RunSpans("req-1", Provenance(request_id="req-1", traceparent=CALLER), adapter="base", tracer=tracer)
    events = run_events("req-1")
    with spans.call("trinity.coordinator.route", 0, {"trinity.backend": "torch"}):
        tp = Provenance(request_id="req-1").with_current_trace().traceparent  # what rpc.request sends
    published = [spans.on_event(ev) for ev in events]  # the traceparent each event is published with
    with pytest.raises(ZeroDivisionError), spans.call("trinity.coordinator.agent_call", 1, {"trinity.agent_id": 1}):
        raise ZeroDivisionError("boom")
    turn1 = spans.traceparent(1)
    spans.close()
    done = {s.name: s for s in exporter.get_finished_spans() if s.name != "trinity.coordinator.turn"}
    turns = sorted((s for s in exporter.get_finished_spans() if s.name == "trinity.coordinator.turn"),
                   key=lambda s: s.attributes["trinity.turn"] if s.attributes else -1)
    run = done["trinity.coordinator.run"]
    assert run.context is not None and run.parent is not None
    assert (f"{run.context.trace_id:032x}", f"{run.parent.span_id:016x}") == ids(CALLER)
    assert [t.attributes["trinity.turn"] for t in turns if t.attributes] == [0, 1]
    assert all(t.parent is not None and t.parent.span_id == run.context.span_id for t in turns)
    route = done["trinity.coordinator.route"]
    assert route.kind is SpanKind.CLIENT and route.parent is not None
    assert route.parent.span_id == turns[0].context.span_id
    assert ids(tp) == (f"{run.context.trace_id:032x}", f"{route.context.span_id:016x}")
    assert ids(turn1) == (f"{run.context.trace_id:032x}", f"{turns[1].context.span_id:016x}")
    trace_id = f"{run.context.trace_id:032x}"
    assert events[1].turn == 0 and ids(published[1]) == (trace_id, f"{turns[0].context.span_id:016x}")
    assert events[-1].kind == "run_finished" and ids(published[-1]) == (trace_id, f"{run.context.span_id:016x}")
    failed = done["trinity.coordinator.agent_call"]
    assert failed.status.status_code is StatusCode.ERROR and failed.events[0].name == "exception"
    t0 = turns[0].attributes or {}
    assert (t0["trinity.agent_id"], t0["trinity.routed_role"], t0["trinity.role"]) == (2, "Worker", "Worker")
    assert (t0["trinity.prompt_tokens"], t0["trinity.provider"]) == (120, events[5].receipt.provider)  # type: ignore[attr-defined]
    assert "route_decided" in [e.name for e in turns[0].events]
    assert (turns[1].attributes or {})["trinity.verdict"] == "accept"
    assert (run.attributes or {})["trinity.stop_reason"] == "accepted"


async def test_run_spans_without_a_provider_record_nothing_and_start_no_trace() -> None:
    spans = RunSpans("q", Provenance(request_id="q"))  # the global provider: none installed in tests
    assert not spans.recording and spans.traceparent(0) is None
    spans.close()


async def test_trace_events_name_their_span_and_that_spans_are_recorded() -> None:
    js = FakeJS()
    pub = TracePublisher(js, capacity=10)  # type: ignore[arg-type]
    await pub.start()
    ev = run_events("q1")[0]
    await pub.emit(ev)
    await pub.emit(ev, traceparent=CALLER)
    pub.spans = True  # a coordinator process that records spans marks even events without a span
    await pub.emit(ev)
    assert await pub.flush(2.0)
    await pub.close()
    headers: list[dict[str, Any]] = [h for _, h in js.published]
    assert TRACEPARENT not in headers[0] and SPANS not in headers[0]
    assert (headers[1][TRACEPARENT], headers[1][SPANS]) == (CALLER, "1")
    assert TRACEPARENT not in headers[2] and headers[2][SPANS] == "1"


def test_tracing_settings_from_the_environment() -> None:
    s = load_settings(environ={"TRINITY_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                               "OTEL_SERVICE_NAME": "edge"})
    assert (s.tracing.exporter, s.tracing.traces_url(), s.tracing.service_name) == (
        TracingExporter.OTLP, "http://c:4318/v1/traces", "edge")
    assert tracing_env_doc({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/v1/traces",
                            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == {"otlp_endpoint": "http://t/v1/traces"}
    assert TracingSettings(otlp_endpoint="http://t:1/v1/traces").traces_url() == "http://t:1/v1/traces"
    assert not load_settings(environ={}).tracing.enabled
    with pytest.raises(SettingsError, match="TRINITY_TRACING"):
        load_settings(environ={"TRINITY_TRACING": "jaeger"})
    with pytest.raises(SettingsError, match="otlp_endpoint"):
        load_settings(environ={}, overrides=["tracing.exporter=otlp", "tracing.otlp_endpoint=c:4317"])

