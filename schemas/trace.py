"""Trace events: one per coordination step, published on ``trinity.trace.<request_id>.<kind>``.

They form a tagged union on ``kind`` (decode any of them with ``TraceEvent``). Every event carries its
provenance: request id, turn, event id, causation id (the event or request that caused it), and, where it
applies, artifact identity, adapter and route hash. Content is stored hashed unless the trace sink is
configured otherwise.

Example:
    >>> import msgspec
    >>> ev = RunStarted(request_id="q1", event_id="e1", causation_id="q1", ts=0.0, query_sha256="0" * 64)
    >>> msgspec.json.decode(msgspec.json.encode(ev), type=TraceEvent).kind
    'run_started'
"""

from __future__ import annotations

from typing import Union

import msgspec

from schemas.common import RequestId
from schemas.coordination import AgentCallReceipt, BudgetSnapshot, RoleAssignment, StopReason, VerifierVerdict
from schemas.routing import RouteDecision


class TraceBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    """Provenance every trace event carries."""

    request_id: RequestId
    event_id: str
    causation_id: str
    ts: float
    turn: int = -1
    artifact: str = ""
    adapter: str = ""
    route_hash: str = ""
    attrs: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The event's tag (``route_decided``, ``agent_call_finished``...)."""
        tag = type(self).__struct_config__.tag
        return str(tag)


class RunStarted(TraceBase, tag="run_started", frozen=True):
    """A coordination run began."""

    query_sha256: str
    query_text: str | None = None


class RouteDecided(TraceBase, tag="route_decided", frozen=True):
    """The router's decision for a turn, with logits and margins."""

    decision: RouteDecision
    token_count: int = 0
    cached_tokens: int = 0
    route_latency_ms: float = 0.0
    runtime_id: str = ""
    routing_profile: str = "elixir-port"


class RoleAssigned(TraceBase, tag="role_assigned", frozen=True):
    """The role the turn's agent plays and why."""

    assignment: RoleAssignment


class AgentCallStarted(TraceBase, tag="agent_call_started", frozen=True):
    """An agent call went out."""

    agent_id: int
    role: str
    prompt_sha256: str
    prompt_text: str | None = None


class AgentCallFinished(TraceBase, tag="agent_call_finished", frozen=True):
    """An agent answered; the reply is hashed unless full text is configured."""

    receipt: AgentCallReceipt


class AgentCallFailed(TraceBase, tag="agent_call_failed", frozen=True):
    """An agent call failed; ``fallback_agent_id`` is the agent tried next, if any."""

    agent_id: int
    error_code: str
    message: str
    fallback_agent_id: int | None = None


class VerdictRecorded(TraceBase, tag="verdict_recorded", frozen=True):
    """A Verifier's verdict."""

    verdict: VerifierVerdict


class BudgetRecorded(TraceBase, tag="budget_recorded", frozen=True):
    """Budget consumed after a turn."""

    budget: BudgetSnapshot


class RunFinished(TraceBase, tag="run_finished", frozen=True):
    """A run ended with an answer (or none) and a stop reason."""

    stop_reason: StopReason
    answer_sha256: str | None = None
    answer_text: str | None = None
    answer_turn: int | None = None
    turns: int = 0


class RunFailed(TraceBase, tag="run_failed", frozen=True):
    """A run could not complete."""

    error_code: str
    message: str
    stop_reason: StopReason | None = None


class RunRedelivered(TraceBase, tag="run_redelivered", frozen=True):
    """A queued job came back from the work queue (its previous coordinator stopped acknowledging it, e.g.
    killed mid-run) and runs again from the start: delivery ``delivery`` of at most ``max_deliver``."""

    delivery: int
    max_deliver: int
    stream_seq: int = 0


class RouteDeferred(TraceBase, tag="route_deferred", frozen=True):
    """No runtime serves the run's route yet (the fleet is still starting, or every runtime left) — or, with
    ``attrs["waiting_for"] == "agents"``, no agent serves the turn's call yet: the run waits and retries
    every ``retry_in_s`` until one joins or its wait ends (its deadline, or the coordinator's
    ``fleet_wait_s``). ``attempt`` counts the attempts of the turn so far."""

    error_code: str
    message: str
    attempt: int
    retry_in_s: float
    waited_s: float = 0.0
    wait_limit_s: float | None = None


TraceEvent = Union[  # noqa: UP007 - msgspec needs a runtime Union object for decoding
    RunStarted,
    RouteDecided,
    RoleAssigned,
    AgentCallStarted,
    AgentCallFinished,
    AgentCallFailed,
    VerdictRecorded,
    BudgetRecorded,
    RunFinished,
    RunFailed,
    RunRedelivered,
    RouteDeferred,
]

TRACE_KINDS: tuple[str, ...] = tuple(
    str(t.__struct_config__.tag)
    for t in (RunStarted, RouteDecided, RoleAssigned, AgentCallStarted, AgentCallFinished, AgentCallFailed,
              VerdictRecorded, BudgetRecorded, RunFinished, RunFailed, RunRedelivered, RouteDeferred)
)
