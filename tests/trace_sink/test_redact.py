"""Redaction: no configured secret or key-shaped token survives into a stored trace or an exported span."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors.trace_sink.jsonl import TraceRecord, record_line
from actors.trace_sink.otel import OtelSpans
from actors.trace_sink.redact import Redactor, UnsafeEvent, sha256_text
from config.provider_agents import Secret
from config.trace_sink import OtelExporterKind, OtelSettings, RedactionSettings
from schemas.trace import AgentCallFinished, RunFinished, RunStarted, TraceEvent
from tests.trace_sink.events import run_events

MARKER = "[REDACTED]"


def strings(value: Any) -> list[str]:
    """Every string in a builtins tree, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return []


def span_strings(spans: OtelSpans) -> list[str]:
    assert spans.memory is not None
    out: list[str] = []
    for sp in spans.memory.get_finished_spans():
        out.append(sp.name)
        out.append(sp.status.description or "")
        out += strings(dict(sp.attributes or {}))
        for ev in sp.events:
            out.append(ev.name)
            out += strings(dict(ev.attributes or {}))
    return out


def test_builtin_patterns() -> None:
    r = Redactor(RedactionSettings())
    samples = {
        "openai sk-proj-AbCdEfGhIjKlMnOpQrStUv123 end": "openai [REDACTED] end",
        "anthropic: sk-ant-api03-xyzXYZ0123456789_- ok": "anthropic: [REDACTED] ok",
        "google AIzaSyA1234567890abcdefghijklmnopqrstuv.": "google [REDACTED].",
        "Authorization: Bearer abc.def-ghi_jkl=": "Authorization: [REDACTED]",
        '{"api_key": "hunter2hunter2"}': '{"api_key": "[REDACTED]"}',
        "GET /v1beta/models/x:generateContent?key=AIzaNOTLONG123&alt=json": (
            "GET /v1beta/models/x:generateContent?key=[REDACTED]&alt=json"),
        "nothing secret here: sk-short": "nothing secret here: sk-short",
    }
    for text, want in samples.items():
        assert r.redact_text(text) == want


def test_configured_secrets_and_patterns() -> None:
    r = Redactor(RedactionSettings(secrets=[Secret("correct-horse-battery"), Secret("tok_live_9f8e7d")],
                                   patterns=[r"ssn=\d{3}-\d{2}-\d{4}"]))
    assert r.redact_text("a correct-horse-batterycorrect-horse-battery b tok_live_9f8e7d ssn=123-45-6789") == \
        "a [REDACTED] b [REDACTED] [REDACTED]"
    # overlapping occurrences merge into one redaction
    r2 = Redactor(RedactionSettings(secrets=[Secret("abcabc")]))
    assert r2.redact_text("xabcabcabcx") == "x[REDACTED]x"
    with pytest.raises(ValueError, match="shorter than 6"):
        RedactionSettings(secrets=[Secret("abc")])
    with pytest.raises(ValueError, match="invalid regular expression"):
        Redactor(RedactionSettings(patterns=["(unclosed"]))


def test_content_is_hashed_by_default_and_kept_when_configured() -> None:
    evs = run_events(reply="The answer is 42.")
    hashed: dict[str, TraceEvent] = {}
    for e in evs:
        hashed.setdefault(e.kind, Redactor(RedactionSettings()).redact_event(e))
    start = hashed["run_started"]
    assert isinstance(start, RunStarted) and start.query_text is None and start.query_sha256 == "cd" * 32
    fin = hashed["agent_call_finished"]
    assert isinstance(fin, AgentCallFinished)
    assert fin.receipt.content == "sha256:" + sha256_text("The answer is 42.")
    end = hashed["run_finished"]
    assert isinstance(end, RunFinished) and end.answer_text is None
    assert end.answer_sha256 == sha256_text("The answer is 42.")
    full: dict[str, TraceEvent] = {}
    for e in evs:
        full.setdefault(e.kind, Redactor(RedactionSettings(store_full_text=True)).redact_event(e))
    assert full["run_started"].query_text == "What is 17 + 25?"  # type: ignore[union-attr]
    assert full["agent_call_finished"].receipt.content == "The answer is 42."  # type: ignore[union-attr]


def test_secret_in_an_identifier_drops_the_event() -> None:
    r = Redactor(RedactionSettings(secrets=[Secret("req-1-secret")]))
    ev = run_events("req-1-secret")[0]
    with pytest.raises(UnsafeEvent) as ei:
        r.redact_event(ev)
    assert "req-1-secret" not in str(ei.value)


KEY_SHAPES = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=20, max_size=40)
    .map(lambda s: "sk-" + s),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=12, max_size=40).map(lambda s: "sk-ant-api03-" + s),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=35, max_size=35)
    .map(lambda s: "AIza" + s),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=10, max_size=40).map(lambda s: "Bearer " + s),
)
CONFIGURED = st.text(min_size=8, max_size=32).filter(lambda s: s not in MARKER and s.strip() != "")


@st.composite
def embedded(draw: st.DrawFn, secret: str, spaced: bool) -> str:
    """``secret`` at a random position inside random text (with separators for pattern-shaped keys)."""
    before = draw(st.text(max_size=40))
    after = draw(st.text(max_size=40))
    return f"{before} {secret} {after}" if spaced else before + secret + after


def _vocabulary() -> str:
    """Everything a secret-free run stores or exports: field names, kinds, fixed values. A 'secret' that is a
    substring of this cannot be told apart from the structure, so the property excludes such values."""
    r = Redactor(RedactionSettings())
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    out: list[str] = []
    for ev in run_events("req-h", reply="", query="", error_message="", attrs={"echo": "", "": "as a key"}):
        clean = r.redact_event(ev)
        out.append(record_line(TraceRecord(event=clean, subject=f"trinity.trace.req-h.{clean.kind}")).decode())
        spans.handle(clean, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    spans.close()
    return "\n".join(out + span_strings(spans))


VOCABULARY = _vocabulary()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), configured=st.lists(CONFIGURED, min_size=1, max_size=3),
       shaped=st.lists(KEY_SHAPES, min_size=1, max_size=2), full_text=st.booleans())
def test_no_secret_survives_anywhere(data: st.DataObject, configured: list[str], shaped: list[str],
                                     full_text: bool) -> None:
    assume(not any(s in VOCABULARY for s in configured))
    everything = configured + shaped

    def carrier() -> str:
        i = data.draw(st.integers(0, len(everything) - 1))
        return data.draw(embedded(everything[i], spaced=i >= len(configured)))

    evs = run_events("req-h", reply=carrier(), query=carrier(), error_message=carrier(),
                     attrs={"echo": carrier(), carrier(): "as a key"})
    redaction = RedactionSettings(secrets=[Secret(s) for s in configured], store_full_text=full_text)
    r = Redactor(redaction)
    spans = OtelSpans(OtelSettings(exporter=OtelExporterKind.MEMORY))
    stored: list[TraceEvent] = []
    for ev in evs:
        try:
            clean = r.redact_event(ev)
        except UnsafeEvent:
            continue
        stored.append(clean)
        line = record_line(TraceRecord(event=clean, subject=r.redact_text(f"trinity.trace.req-h.{clean.kind}")))
        for s in everything:
            assert s.encode() not in line
            assert msgspec.json.encode(s)[1:-1] not in line
        for text in strings(msgspec.to_builtins(clean)):
            for s in everything:
                assert s not in text
        spans.handle(clean, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    spans.close()
    assert stored, "every event was dropped: the property would hold vacuously"
    for text in span_strings(spans):
        for s in everything:
            assert s not in text
