"""A realistic run's trace events, for the trace sink tests."""

from __future__ import annotations

from schemas.common import Role
from schemas.coordination import (
    AgentCallReceipt,
    Budget,
    BudgetSnapshot,
    RoleAssignment,
    StopReason,
    Usage,
    Verdict,
    VerifierVerdict,
)
from schemas.routing import RouteLogits, decide
from schemas.sakana import RuntimeProfile
from schemas.trace import (
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

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
H = "ab" * 32


def decision(agent: int, role: Role) -> RouteDecided:
    agents = [0.0] * 7
    agents[agent] = 2.5
    agents[(agent + 1) % 7] = 2.0
    roles = [0.0, 0.0, 0.0]
    roles[int(role)] = 3.0
    logits = RouteLogits(request_id="x", turn=0, agent_logits=agents, role_logits=roles, token_count=9,
                         transcript_hash=H)
    d = decide(logits, RuntimeProfile())
    return RouteDecided(request_id="x", event_id="x", causation_id="x", ts=0.0, decision=d)


def run_events(rid: str = "req-1", *, reply: str = "The answer is 42.", query: str = "What is 17 + 25?",
               error_message: str = "provider 503", attrs: dict[str, str] | None = None) -> list[TraceEvent]:
    """A two-turn run: Worker answers (after one failed call), Verifier accepts."""
    a = attrs or {}
    evs: list[TraceEvent] = [RunStarted(request_id=rid, event_id=f"{rid}-0", causation_id=rid, ts=T0,
                                        query_sha256="cd" * 32, query_text=query, attrs=a)]
    t = T0
    for turn, (agent, role, content) in enumerate([(2, Role.WORKER, reply), (1, Role.VERIFIER, "ACCEPT")]):
        t += 1.0
        d = decision(agent, role).decision
        evs += [
            RouteDecided(request_id=rid, event_id=f"{rid}-{turn}-r", causation_id=f"{rid}-0", ts=t, turn=turn,
                         adapter="base", route_hash=d.route_hash, decision=d, token_count=40 + turn,
                         cached_tokens=30, route_latency_ms=12.5, attrs=a),
            RoleAssigned(request_id=rid, event_id=f"{rid}-{turn}-a", causation_id=f"{rid}-{turn}-r", ts=t + 0.01,
                         turn=turn, assignment=RoleAssignment(request_id=rid, turn=turn, agent_id=agent, role=role)),
            AgentCallStarted(request_id=rid, event_id=f"{rid}-{turn}-s", causation_id=f"{rid}-{turn}-a",
                             ts=t + 0.02, turn=turn, agent_id=agent, role=role.label, prompt_sha256="ef" * 32,
                             prompt_text=f"You are the {role.label}. {query}"),
        ]
        if turn == 0:
            evs.append(AgentCallFailed(request_id=rid, event_id=f"{rid}-{turn}-f", causation_id=f"{rid}-{turn}-s",
                                       ts=t + 0.3, turn=turn, agent_id=agent, error_code="upstream",
                                       message=error_message, fallback_agent_id=3, attrs=a))
        evs += [
            AgentCallFinished(request_id=rid, event_id=f"{rid}-{turn}-d", causation_id=f"{rid}-{turn}-s",
                              ts=t + 0.5, turn=turn,
                              receipt=AgentCallReceipt(request_id=rid, turn=turn, agent_id=agent, content=content,
                                                       provider="openai", model="gpt-5",
                                                       usage=Usage(prompt_tokens=120, completion_tokens=8),
                                                       cost_usd=0.00023, latency_ms=480.0, attempts=2)),
            BudgetRecorded(request_id=rid, event_id=f"{rid}-{turn}-b", causation_id=f"{rid}-{turn}-d",
                           ts=t + 0.6, turn=turn,
                           budget=BudgetSnapshot(turns=turn + 1, agent_calls=turn + 2, tokens=128 * (turn + 1),
                                                 cost_usd=0.00023 * (turn + 1), elapsed_ms=1000.0 * (turn + 1),
                                                 limits=Budget())),
        ]
    evs.append(VerdictRecorded(request_id=rid, event_id=f"{rid}-1-v", causation_id=f"{rid}-1-d", ts=t + 0.55,
                               turn=1, verdict=VerifierVerdict(request_id=rid, turn=1, verdict=Verdict.ACCEPT,
                                                               excerpt="ACCEPT")))
    evs.append(RunFinished(request_id=rid, event_id=f"{rid}-end", causation_id=f"{rid}-1-v", ts=t + 1.0, turn=1,
                           stop_reason=StopReason.ACCEPTED, answer_text=reply, answer_turn=0, turns=2))
    return evs


def failed_run(rid: str = "req-f", message: str = "no agent") -> list[TraceEvent]:
    return [RunStarted(request_id=rid, event_id=f"{rid}-0", causation_id=rid, ts=T0, query_sha256="cd" * 32),
            RunFailed(request_id=rid, event_id=f"{rid}-1", causation_id=f"{rid}-0", ts=T0 + 2, error_code="unavailable",
                      message=message, stop_reason=StopReason.NO_AGENT_AVAILABLE)]
