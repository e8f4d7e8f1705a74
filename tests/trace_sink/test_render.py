"""The pure rendering behind ``run.py tail``: one line per event, and filters."""

from __future__ import annotations

import datetime as dt

import pytest

from actors.trace_sink.redact import Redactor
from actors.trace_sink.render import TraceFilter, format_event
from config.trace_sink import RedactionSettings
from tests.trace_sink.events import failed_run, run_events


def lines() -> dict[str, str]:
    out: dict[str, str] = {}
    for ev in run_events():
        out.setdefault(ev.kind, format_event(ev))
    return out


def test_each_kind_renders_its_key_fields() -> None:
    got = lines()
    assert got["run_started"] == "00:00:00.000 req-1 t- run_started         query='What is 17 + 25?'"
    assert got["route_decided"].startswith("00:00:01.000 req-1 t0 route_decided       agent=2 role=Worker "
                                           "margin(agent=0.500 role=3.000) clear tokens=40 cached=30 route=12.5ms")
    assert got["role_assigned"].endswith("agent=2 role=Worker source=router")
    assert got["agent_call_finished"].endswith(
        "agent=2 openai/gpt-5 latency=480ms tokens=120+8 cost=$0.000230 attempts=2 finish=stop "
        "reply='The answer is 42.'")
    assert got["agent_call_failed"].endswith("agent=2 error=upstream fallback=3 'provider 503'")
    assert got["verdict_recorded"].endswith("verdict=ACCEPT")
    assert got["budget_recorded"].endswith("turns=1/5 calls=2 tokens=128 cost=$0.000230 elapsed=1000ms")
    assert got["run_finished"].endswith("stop=accepted answer_turn=0 turns=2 answer='The answer is 42.'")
    failed = format_event(failed_run()[1])
    assert failed == "00:00:02.000 req-f t- run_failed          error=unavailable stop=no_agent_available 'no agent'"


def test_redacted_events_show_hashes_not_text() -> None:
    r = Redactor(RedactionSettings())
    evs = {e.kind: r.redact_event(e) for e in run_events()}
    assert format_event(evs["run_started"]).endswith("query=sha256:cdcdcdcdcdcd")
    assert "reply=sha256:" in format_event(evs["agent_call_finished"])
    assert "42" not in format_event(evs["run_finished"])


def test_colour_date_and_timezone() -> None:
    ev = run_events()[0]
    assert "\x1b[36mrun_started" in format_event(ev, color=True)
    assert format_event(ev, date=True).startswith("2026-01-01 00:00:00.000 ")
    assert format_event(ev, tz=dt.timezone(dt.timedelta(hours=9))).startswith("09:00:00.000 ")


def test_filter() -> None:
    evs = run_events("a") + run_events("b")
    f = TraceFilter.parse("a", "route_decided,run_finished")
    assert [(e.request_id, e.kind) for e in evs if f.matches(e)] == [
        ("a", "route_decided"), ("a", "route_decided"), ("a", "run_finished")]
    assert f.subject() == "trinity.trace.a.*"
    assert TraceFilter.parse(kinds=["verdict_recorded"]).subject() == "trinity.trace.*.verdict_recorded"
    assert TraceFilter.parse().subject() == "trinity.trace.*.*"
    assert all(TraceFilter.parse().matches(e) for e in evs)
    with pytest.raises(ValueError, match="unknown trace kinds"):
        TraceFilter.parse(kinds="route_decidd")
