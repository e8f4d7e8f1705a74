"""Pure rendering for ``run.py tail``: one readable terminal line per trace event, and event filters.

Example:
    >>> from schemas.trace import RunFinished
    >>> from schemas.coordination import StopReason
    >>> ev = RunFinished(request_id="q1", event_id="e9", causation_id="e8", ts=0.0, turn=3,
    ...                  stop_reason=StopReason.ACCEPTED, answer_turn=2, turns=4)
    >>> format_event(ev)
    '00:00:00.000 q1 t3 run_finished        stop=accepted answer_turn=2 turns=4'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from schemas.trace import (
    TRACE_KINDS,
    AgentCallFailed,
    AgentCallFinished,
    AgentCallStarted,
    BudgetRecorded,
    RoleAssigned,
    RouteDecided,
    RunFailed,
    RunFinished,
    RunStarted,
    TraceEvent,
    VerdictRecorded,
)

_COLORS = {"run_started": "36", "route_decided": "35", "role_assigned": "34", "agent_call_started": "90",
           "agent_call_finished": "32", "agent_call_failed": "31", "verdict_recorded": "33",
           "budget_recorded": "90", "run_finished": "1;32", "run_failed": "1;31"}
KIND_WIDTH = max(len(k) for k in TRACE_KINDS)


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _hash(h: str | None) -> str:
    if not h:
        return "-"
    return h[7:19] if h.startswith("sha256:") else h[:12]


def _content(text: str) -> str:
    return f"sha256:{_hash(text)}" if text.startswith("sha256:") else repr(_short(text))


def event_details(ev: TraceEvent) -> str:
    """The kind-specific part of the line: agent/role/margins, latency/usage, verdict, stop reason..."""
    if isinstance(ev, RunStarted):
        return f"query={repr(_short(ev.query_text)) if ev.query_text else 'sha256:' + _hash(ev.query_sha256)}"
    if isinstance(ev, RouteDecided):
        d = ev.decision
        return (f"agent={d.agent_id} role={d.role.label} margin(agent={d.agent_margin:.3f} role={d.role_margin:.3f}) "
                f"{d.confidence.value} tokens={ev.token_count} cached={ev.cached_tokens} "
                f"route={ev.route_latency_ms:.1f}ms hash={d.route_hash[:12]}")
    if isinstance(ev, RoleAssigned):
        a = ev.assignment
        routed = f" routed={a.routed_role.label}" if a.routed_role is not None and a.routed_role != a.role else ""
        return f"agent={a.agent_id} role={a.role.label} source={a.source.value}{routed}"
    if isinstance(ev, AgentCallStarted):
        return f"agent={ev.agent_id} role={ev.role} prompt=sha256:{_hash(ev.prompt_sha256)}"
    if isinstance(ev, AgentCallFinished):
        r = ev.receipt
        return (f"agent={r.agent_id} {r.provider}/{r.model} latency={r.latency_ms:.0f}ms "
                f"tokens={r.usage.prompt_tokens}+{r.usage.completion_tokens} cost=${r.cost_usd:.6f} "
                f"attempts={r.attempts} finish={r.finish_reason} reply={_content(r.content)}")
    if isinstance(ev, AgentCallFailed):
        fb = f" fallback={ev.fallback_agent_id}" if ev.fallback_agent_id is not None else ""
        return f"agent={ev.agent_id} error={ev.error_code}{fb} {_short(ev.message, 80)!r}"
    if isinstance(ev, VerdictRecorded):
        v = ev.verdict
        return f"verdict={v.verdict.value.upper()}{'' if v.parsed else ' (unparsed)'}"
    if isinstance(ev, BudgetRecorded):
        b = ev.budget
        return (f"turns={b.turns}/{b.limits.max_turns} calls={b.agent_calls} tokens={b.tokens} "
                f"cost=${b.cost_usd:.6f} elapsed={b.elapsed_ms:.0f}ms")
    if isinstance(ev, RunFinished):
        ans = f" answer={_short(ev.answer_text)!r}" if ev.answer_text else ""
        return f"stop={ev.stop_reason.value} answer_turn={ev.answer_turn} turns={ev.turns}{ans}"
    if isinstance(ev, RunFailed):
        stop = f" stop={ev.stop_reason.value}" if ev.stop_reason is not None else ""
        return f"error={ev.error_code}{stop} {_short(ev.message, 80)!r}"
    return ""


def format_event(ev: TraceEvent, *, color: bool = False, tz: dt.tzinfo = dt.UTC, date: bool = False) -> str:
    """One terminal line: ``time request_id turn kind details`` (ANSI colours when ``color``)."""
    when = dt.datetime.fromtimestamp(ev.ts, tz=tz)
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if date else when.strftime("%H:%M:%S.%f")[:-3]
    turn = f"t{ev.turn}" if ev.turn >= 0 else "t-"
    kind = ev.kind.ljust(KIND_WIDTH)
    if color:
        kind = f"\x1b[{_COLORS.get(ev.kind, '0')}m{kind}\x1b[0m"
    return f"{stamp} {ev.request_id} {turn} {kind} {event_details(ev)}".rstrip()


class TraceFilter(msgspec.Struct, frozen=True):
    """Which events to show: by request id and/or kinds (``None`` = any).

    Example:
        >>> f = TraceFilter(request_id="q1", kinds=frozenset({"route_decided"}))
        >>> f.subject()
        'trinity.trace.q1.route_decided'
    """

    request_id: str | None = None
    kinds: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.kinds is not None:
            unknown = sorted(self.kinds - set(TRACE_KINDS))
            if unknown:
                raise ValueError(f"unknown trace kinds {unknown}; choose from {', '.join(TRACE_KINDS)}")

    @classmethod
    def parse(cls, request_id: str | None = None, kinds: str | Iterable[str] | None = None) -> TraceFilter:
        """From CLI values: ``kinds`` as ``"route_decided,agent_call_finished"`` or an iterable."""
        if isinstance(kinds, str):
            kinds = [k for k in (s.strip() for s in kinds.split(",")) if k]
        return cls(request_id=request_id or None, kinds=frozenset(kinds) if kinds else None)

    def matches(self, ev: TraceEvent) -> bool:
        """Whether ``ev`` passes the filter."""
        if self.request_id is not None and ev.request_id != self.request_id:
            return False
        return self.kinds is None or ev.kind in self.kinds

    def subject(self) -> str:
        """The narrowest NATS subject filter covering this filter (one kind or any)."""
        rid = self.request_id or "*"
        kind = next(iter(self.kinds)) if self.kinds is not None and len(self.kinds) == 1 else "*"
        return f"trinity.trace.{rid}.{kind}"
