"""Coordination contracts: the request a user submits, each turn's role/intent/receipt/verdict, the result.

Example:
    >>> req = CoordinationRequest(request_id="q1", query="What is 17 + 25?")
    >>> req.budget.max_turns
    5
"""

from __future__ import annotations

import enum

import msgspec

from schemas.common import Message, NonNegFloat, NonNegInt, RequestId, Role, check_token
from schemas.errors import require
from schemas.routing import RouteDecision
from schemas.sakana import BASE_ADAPTER_TOKEN

#: TRINITY's turn limit K.
DEFAULT_MAX_TURNS = 5
MAX_QUERY_CHARS = 200_000


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits on one coordination run. ``None`` means unlimited (turns are always limited)."""

    max_turns: int = DEFAULT_MAX_TURNS
    max_agent_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    deadline_ms: int | None = 120_000

    def __post_init__(self) -> None:
        require(1 <= self.max_turns <= 64, "max_turns", f"must be in 1..64, got {self.max_turns}")
        if self.max_agent_calls is not None:
            require(self.max_agent_calls >= 1, "max_agent_calls", f"must be >= 1, got {self.max_agent_calls}")
        if self.max_tokens is not None:
            require(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.max_cost_usd is not None:
            require(self.max_cost_usd >= 0, "max_cost_usd", f"must be >= 0, got {self.max_cost_usd}")
        if self.deadline_ms is not None:
            require(self.deadline_ms >= 1, "deadline_ms", f"must be >= 1 ms, got {self.deadline_ms}")


class CoordinationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A question for TRINITY. ``agent_mask`` restricts the agents that may be chosen."""

    request_id: RequestId
    query: str
    budget: Budget = msgspec.field(default_factory=Budget)
    agent_mask: list[int] | None = None
    backend: str = "torch"
    adapter: str = BASE_ADAPTER_TOKEN
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(self.query.strip()), "query", "must not be empty")
        require(len(self.query) <= MAX_QUERY_CHARS, "query",
                f"is {len(self.query)} characters; the limit is {MAX_QUERY_CHARS}")
        if self.agent_mask is not None:
            require(len(self.agent_mask) > 0, "agent_mask", "must allow at least one agent (or be null for all)")
            require(all(a >= 0 for a in self.agent_mask), "agent_mask", "agent ids are >= 0")
        check_token(self.backend, "backend")
        check_token(self.adapter, "adapter")


class RoleSource(enum.StrEnum):
    """Why a turn got its role."""

    ROUTER = "router"
    THINKER_SUGGESTION = "thinker_suggestion"
    VERIFIER_BEFORE_WORKER = "verifier_before_worker_fallback"


class RoleAssignment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The role a turn's agent plays, where it came from, and the role-pack version used.

    ``suggestion`` is the raw text of the previous Thinker's ``<suggested_role>`` tag, if any (applied when
    ``source`` is ``thinker_suggestion``; otherwise ignored, with ``note`` saying why).
    """

    request_id: RequestId
    turn: NonNegInt
    agent_id: NonNegInt
    role: Role
    source: RoleSource = RoleSource.ROUTER
    routed_role: Role | None = None
    role_pack: str = "trinity-default/1"
    suggestion: str | None = None
    note: str = ""


class AgentCallIntent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A call the coordinator wants made: which agent, in which role, with which messages."""

    request_id: RequestId
    turn: NonNegInt
    agent_id: NonNegInt
    role: Role
    messages: list[Message]
    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    deadline_ms: int | None = None

    def __post_init__(self) -> None:
        require(len(self.messages) > 0, "messages", "must not be empty")
        require(1 <= self.max_tokens <= 131072, "max_tokens", f"must be in 1..131072, got {self.max_tokens}")
        require(0.0 <= self.temperature <= 2.0, "temperature", f"must be in 0..2, got {self.temperature}")


class Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Token accounting of one agent call."""

    prompt_tokens: NonNegInt = 0
    completion_tokens: NonNegInt = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class AgentCallReceipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an agent answered, with usage, cost, latency and the provider that served it."""

    request_id: RequestId
    turn: NonNegInt
    agent_id: NonNegInt
    content: str
    provider: str = ""
    model: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: NonNegFloat = 0.0
    latency_ms: NonNegFloat = 0.0
    finish_reason: str = "stop"
    attempts: int = 1


class Verdict(enum.StrEnum):
    """A Verifier's judgement."""

    ACCEPT = "accept"
    REVISE = "revise"


class VerifierVerdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Verifier reply parsed: ACCEPT ends the run; anything else (unparseable included) is REVISE."""

    request_id: RequestId
    turn: NonNegInt
    verdict: Verdict
    parsed: bool = True
    excerpt: str = ""


class BudgetSnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Budget consumed so far, against its limits."""

    turns: NonNegInt
    agent_calls: NonNegInt
    tokens: NonNegInt
    cost_usd: NonNegFloat
    elapsed_ms: NonNegFloat
    limits: Budget


class StopReason(enum.StrEnum):
    """Why a run ended."""

    ACCEPTED = "accepted"
    MAX_TURNS = "max_turns"
    MAX_AGENT_CALLS = "max_agent_calls"
    MAX_TOKENS = "max_tokens"
    MAX_COST = "max_cost"
    DEADLINE = "deadline"
    NO_AGENT_AVAILABLE = "no_agent_available"
    ROUTE_FAILED = "route_failed"
    ROLE_INJECT_FAILED = "role_inject_failed"
    CANCELLED = "cancelled"
    #: ``sakana`` profile: a Verifier was chosen before any Worker reply; the run ends with no call (reward 0).
    VERIFIER_BEFORE_WORKER = "verifier_before_worker"


class AgentFailure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agent call that failed, and the agent tried next."""

    agent_id: NonNegInt
    error_code: str
    message: str
    fallback_agent_id: int | None = None


class TurnRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything one turn did: decision, role, intent, receipt, verdict, failures and budget after it."""

    turn: NonNegInt
    decision: RouteDecision
    assignment: RoleAssignment
    intent: AgentCallIntent | None = None
    receipt: AgentCallReceipt | None = None
    verdict: VerifierVerdict | None = None
    failures: list[AgentFailure] = msgspec.field(default_factory=list)
    budget: BudgetSnapshot | None = None


class RunStatus(enum.StrEnum):
    """Outcome of a run."""

    OK = "ok"
    FAILED = "failed"


class CoordinationResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The full record of a run: its answer (the latest Worker reply), every turn, and why it stopped."""

    request_id: RequestId
    status: RunStatus
    answer: str | None
    stop_reason: StopReason
    turns: list[TurnRecord]
    budget: BudgetSnapshot
    error: str | None = None
    answer_turn: int | None = None
    routing_profile: str = "elixir-port"
    route_seed: int | None = None
