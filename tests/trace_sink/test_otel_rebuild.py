"""The trace sink's rebuilt spans next to the actors' own: a redelivered run is split per delivery, and runs
whose coordinator records its own spans are not rebuilt (``rebuild = "auto"``) unless asked (``always``)."""

from __future__ import annotations

import msgspec

from actors.trace_sink.otel import OtelSpans
from config.trace_sink import OtelExporterKind, OtelRebuild, OtelSettings
from schemas.trace import RunRedelivered
from tests.trace_sink.events import T0, run_events

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _shift(evs: list, dt: float) -> list:  # type: ignore[type-arg]
    return [msgspec.structs.replace(e, ts=e.ts + dt) for e in evs]


def test_a_redelivered_run_gets_one_run_span_per_delivery() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    first = run_events("job-1")[:4]  # run_started, then turn 0 until the coordinator died
    redelivered = RunRedelivered(request_id="job-1", event_id="rd", causation_id="job-1", ts=T0 + 190.0,
                                 delivery=2, max_deliver=5)
    second = _shift(run_events("job-1"), 191.0)
    for ev in [*first, redelivered, *second]:
        spans.handle(ev)
    spans.close()
    assert spans.memory is not None and spans.superseded == 1
    finished = spans.memory.get_finished_spans()
    runs = sorted((s for s in finished if s.name == "trinity.run"), key=lambda s: s.start_time or 0)
    assert len(runs) == 2
    old, new = runs
    assert old.attributes is not None and old.attributes["trinity.superseded"] is True
    assert old.end_time == int(max(e.ts for e in first) * 1e9)  # ends at its last event, not at the redelivery
    assert new.attributes is not None and new.attributes["trinity.delivery"] == 2
    assert new.start_time == int((T0 + 190.0) * 1e9) and new.attributes["trinity.stop_reason"] == "accepted"
    turn0 = [s for s in finished if s.name == "trinity.turn 0"]
    assert len(turn0) == 2  # one per delivery, none spanning the 190 s gap
    for t in turn0:
        assert t.end_time is not None and t.start_time is not None
        assert (t.end_time - t.start_time) / 1e9 < 5.0


def test_a_second_run_started_also_starts_a_new_span() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    for ev in [*run_events("job-2")[:3], *_shift(run_events("job-2"), 100.0)]:
        spans.handle(ev)
    spans.close()
    assert spans.memory is not None
    runs = [s for s in spans.memory.get_finished_spans() if s.name == "trinity.run"]
    assert len(runs) == 2 and spans.superseded == 1


def test_auto_leaves_traced_runs_to_the_coordinator() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    for ev in run_events("traced"):
        spans.handle(ev, TRACEPARENT, actor_spans=True)
    for ev in run_events("untraced"):
        spans.handle(ev)
    spans.close()
    assert spans.memory is not None
    runs = [s for s in spans.memory.get_finished_spans() if s.name == "trinity.run"]
    assert [r.attributes["trinity.request_id"] for r in runs if r.attributes] == ["untraced"]
    assert spans.skipped == len(run_events("traced"))


def test_always_rebuilds_traced_runs_as_children_of_the_coordinators_span() -> None:
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY, rebuild=OtelRebuild.ALWAYS))
    for ev in run_events("traced"):
        spans.handle(ev, TRACEPARENT, actor_spans=True)
    spans.close()
    assert spans.memory is not None
    [run] = [s for s in spans.memory.get_finished_spans() if s.name == "trinity.run"]
    assert run.parent is not None and format(run.parent.span_id, "016x") == "b7ad6b7169203331"
    assert run.context is not None and format(run.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
