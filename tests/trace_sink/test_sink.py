"""The sink core: JSONL rotation, OpenTelemetry spans per run/turn with traceparent parents, and
bounded export buffers whose overflow is counted and logged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from opentelemetry.trace import StatusCode

from actors.trace_sink.jsonl import RotatingJsonlWriter, TraceRecord, read_jsonl, record_line
from actors.trace_sink.otel import OtelSpans, OtlpUnavailable
from actors.trace_sink.sink import JsonlExporter, OtelExporter, TraceSink
from config.trace_sink import JsonlSettings, OtelExporterKind, OtelSettings, TraceSinkSettings
from tests.trace_sink.events import T0, failed_run, run_events

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def test_jsonl_rotation_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "t" / "trace.jsonl"
    w = RotatingJsonlWriter(path, max_bytes=2000, keep=2)
    records = [TraceRecord(event=e, stream_seq=i) for i, e in enumerate(run_events() * 4)]
    lines = [record_line(r) for r in records]
    assert all(len(line) < 2000 for line in lines)
    w.write(lines)
    w.close()
    files = w.files()
    assert [f.name for f in files] == ["trace.jsonl", "trace.jsonl.1", "trace.jsonl.2"]
    assert all(f.stat().st_size <= 2000 for f in files)
    assert not (path.parent / "trace.jsonl.3").exists()
    assert w.rotations > 2
    kept = [r.stream_seq for f in reversed(files) for r in read_jsonl(f)]
    assert kept == list(range(len(records) - len(kept), len(records)))  # newest lines, in order, none lost inside
    assert [r.event for f in reversed(files) for r in read_jsonl(f)] == [r.event for r in records[-len(kept):]]


def test_jsonl_appends_across_restarts_and_keep_zero(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    line = record_line(TraceRecord(event=run_events()[0]))
    w = RotatingJsonlWriter(path, max_bytes=len(line) * 2, keep=0)
    w.write([line])
    w.close()
    w = RotatingJsonlWriter(path, max_bytes=len(line) * 2, keep=0)
    w.write([line, line])
    w.close()
    assert w.files() == [path] and len(list(read_jsonl(path))) == 1 and w.rotations == 1


def test_spans_per_run_and_turn_parented_by_traceparent() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    for ev in run_events("req-1"):
        spans.handle(ev, TRACEPARENT)
    for ev in failed_run("req-f"):
        spans.handle(ev, None)
    spans.close()
    assert spans.memory is not None
    finished = spans.memory.get_finished_spans()
    runs = [s for s in finished if s.name == "trinity.run"]
    turns = [s for s in finished if s.name.startswith("trinity.turn")]
    assert len(runs) == 2 and sorted(s.name for s in turns) == ["trinity.turn 0", "trinity.turn 1"]
    run = next(s for s in runs if s.attributes and s.attributes["trinity.request_id"] == "req-1")
    assert run.context is not None and run.parent is not None
    assert format(run.context.trace_id, "032x") == TRACE_ID
    assert format(run.parent.span_id, "016x") == PARENT_SPAN
    assert run.start_time == int(T0 * 1e9) and run.end_time == int((T0 + 3.0) * 1e9)
    assert run.attributes is not None and run.attributes["trinity.stop_reason"] == "accepted"
    for t in turns:
        assert t.parent is not None and t.parent.span_id == run.context.span_id
        assert t.context is not None and t.context.trace_id == run.context.trace_id
    t0 = next(t for t in turns if t.name == "trinity.turn 0")
    assert t0.attributes is not None
    assert (t0.attributes["trinity.agent_id"], t0.attributes["trinity.routed_role"]) == (2, "Worker")
    assert t0.attributes["trinity.agent_margin"] == pytest.approx(0.5)
    assert (t0.attributes["trinity.prompt_tokens"], t0.attributes["trinity.latency_ms"]) == (120, 480.0)
    assert [e.name for e in t0.events] == ["route_decided", "role_assigned", "agent_call_started",
                                          "agent_call_failed", "agent_call_finished", "budget_recorded"]
    assert t0.end_time == int((T0 + 2.0) * 1e9)  # ends when turn 1 begins
    failed = next(s for s in runs if s.attributes and s.attributes["trinity.request_id"] == "req-f")
    assert failed.parent is None and failed.status.status_code is StatusCode.ERROR
    assert failed.context is not None and failed.context.trace_id != run.context.trace_id


def test_open_runs_are_bounded() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY, max_open_runs=2))
    for rid in ("a", "b", "c"):
        spans.handle(run_events(rid)[0])
    assert spans.open_runs == 2 and spans.evicted == 1
    assert spans.memory is not None
    [evicted] = spans.memory.get_finished_spans()
    assert evicted.attributes is not None and evicted.attributes["trinity.incomplete"] is True
    assert evicted.attributes["trinity.request_id"] == "a"


def test_otlp_without_package_is_a_clear_error() -> None:
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
    except ImportError:
        with pytest.raises(OtlpUnavailable, match="opentelemetry-exporter-otlp"):
            OtelSpans(OtelSettings(exporter=OtelExporterKind.OTLP))
    else:
        pytest.skip("an OTLP exporter is installed")


async def test_sink_redacts_then_exports_to_jsonl_and_spans(tmp_path: Path) -> None:
    settings = TraceSinkSettings(jsonl=JsonlSettings(path=str(tmp_path / "trace.jsonl")),
                                 otel=OtelSettings(exporter=OtelExporterKind.MEMORY))
    sink = TraceSink(settings)
    await sink.start()
    for i, ev in enumerate(run_events(reply="secret-ish reply sk-live-abcdefghijklmnopqrstu")):
        assert sink.offer(ev, subject=f"trinity.trace.req-1.{ev.kind}", stream_seq=i + 1,
                          traceparent=TRACEPARENT) is not None
    await sink.stop()
    stored = list(read_jsonl(tmp_path / "trace.jsonl"))
    n = len(run_events())
    assert [r.stream_seq for r in stored] == list(range(1, n + 1))
    assert all(r.traceparent == TRACEPARENT for r in stored)
    assert b"sk-live" not in (tmp_path / "trace.jsonl").read_bytes()
    assert b"secret-ish" not in (tmp_path / "trace.jsonl").read_bytes()  # content hashed by default
    st = sink.stats()
    assert st["exporters"]["jsonl"]["exported"] == n and st["exporters"]["otel"]["exported"] == n
    assert st["exporters"]["jsonl"]["dropped_overflow"] == 0
    otel = sink.exporters[1]
    assert isinstance(otel, OtelExporter) and otel.spans.memory is not None
    assert len(otel.spans.memory.get_finished_spans()) == 3


class StuckExporter:
    """An exporter that never finishes until released (a hung disk or collector)."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.got = 0

    async def export(self, batch: list[TraceRecord]) -> None:
        await self.release.wait()
        self.got += len(batch)

    async def close(self) -> None:
        return None


class FailingExporter:
    name = "failing"

    async def export(self, batch: list[TraceRecord]) -> None:
        raise OSError("disk full")

    async def close(self) -> None:
        return None


async def test_overflow_is_counted_and_logged_never_blocking(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    stuck = StuckExporter()
    jsonl = JsonlExporter(JsonlSettings(path=str(tmp_path / "t.jsonl")))
    sink = TraceSink(TraceSinkSettings(buffer_size=4, overflow_log_interval_s=3600.0),
                     exporters=[stuck, jsonl, FailingExporter()], batch_size=2)
    await sink.start()
    events = run_events() * 3
    with caplog.at_level(logging.WARNING, logger="actors.trace_sink.sink"):
        for ev in events:
            sink.offer(ev)  # synchronous and never waits: a burst faster than every exporter
    st = sink.stats()["exporters"]
    # each lane holds its 4 buffered events; the rest of the burst was dropped, and counted, per lane
    assert st["stuck"]["queued"] == 4 and st["stuck"]["dropped_overflow"] == len(events) - 4
    assert st["jsonl"]["dropped_overflow"] == len(events) - 4
    overflow_logs = [r for r in caplog.records if "stuck exporter buffer full" in r.getMessage()]
    assert len(overflow_logs) == 1  # rate-limited to one line per interval
    for _ in range(1000):
        if sink.stats()["exporters"]["jsonl"]["exported"] == 4:
            break
        await asyncio.sleep(0.01)
    assert sink.stats()["exporters"]["jsonl"]["exported"] == 4  # the healthy lane is not held up by the stuck one
    # stuck now holds a batch of 2 in export and 2 queued: of 3 more events, 2 fit and 1 is dropped
    for ev in events[:3]:
        sink.offer(ev)
    stuck.release.set()
    await sink.stop()
    st = sink.stats()["exporters"]
    assert stuck.got == 6 and st["stuck"]["exported"] == 6
    assert st["stuck"]["dropped_overflow"] == len(events) - 4 + 1
    assert st["jsonl"]["exported"] == 4 + 3 and st["jsonl"]["dropped_overflow"] == len(events) - 4
    assert st["failing"]["errors"] >= 1 and st["failing"]["exported"] == 0
    assert sink.stats()["received"] == len(events) + 3
