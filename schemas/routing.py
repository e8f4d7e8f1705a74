"""Routing contracts: what the coordinator asks the model runtime, what comes back, and what it means.

The runtime returns :class:`RouteLogits` (never the hidden vector); :func:`decide` turns them into a
:class:`RouteDecision`: argmax per group, margins (winner minus runner-up), a confidence band from the
runtime profile's margin floors and the cross-port ``route_hash``.

Example:
    >>> logits = RouteLogits(request_id="r1", turn=0,
    ...     agent_logits=[1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0], role_logits=[0.5, 2.0, -1.0],
    ...     token_count=12, transcript_hash="0" * 64)
    >>> d = decide(logits, RuntimeProfile())
    >>> (d.agent_id, d.role, d.agent_margin, d.role_margin, d.confidence)
    (1, <Role.THINKER: 1>, 1.0, 1.5, <Confidence.NEAR_FLOOR: 'near_floor'>)
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence

import msgspec

from schemas.common import (
    MAX_AGENTS,
    NUM_AGENTS,
    NUM_ROLES,
    Message,
    RequestId,
    Role,
    check_finite,
    check_sha256,
    check_token,
)
from schemas.errors import SchemaError, require
from schemas.fingerprint import elixir_round6, route_hash
from schemas.profiles import DEFAULT_ROUTING_PROFILE, check_routing_profile
from schemas.sakana import BASE_ADAPTER_TOKEN, RuntimeProfile


class Confidence(enum.StrEnum):
    """How far a decision's margins sit above the profile's floors.

    ``clear``: both margins >= 2x their floor; ``near_floor``: both >= floor, one < 2x;
    ``below_floor``: a margin under its floor (the decision may flip on another backend).
    """

    CLEAR = "clear"
    NEAR_FLOOR = "near_floor"
    BELOW_FLOOR = "below_floor"


class RouteRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ask a model runtime for routing logits over a transcript.

    ``run_id`` keys the runtime's prefix cache (turns of one run extend the same transcript);
    ``adapter`` is the adapter token the runtime must hold (``"base"`` for none); ``base_model`` the base
    model identity it must serve (``None``: any runtime of ``backend``; see ``schemas.fleet``).
    """

    request_id: RequestId
    turn: int
    messages: list[Message]
    backend: str = "torch"
    adapter: str = BASE_ADAPTER_TOKEN
    run_id: str | None = None
    deadline_ms: int | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        require(self.turn >= 0, "turn", f"must be >= 0, got {self.turn}")
        require(len(self.messages) > 0, "messages", "must hold at least the user query")
        check_token(self.backend, "backend")
        check_token(self.adapter, "adapter")
        if self.deadline_ms is not None:
            require(self.deadline_ms > 0, "deadline_ms", f"must be positive, got {self.deadline_ms}")
        if self.base_model is not None:
            require(bool(self.base_model), "base_model", "must be null (any) or a base model identity")


class RouteLogits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The runtime's answer: agent and role logits plus labels. The only thing that crosses the bus.

    ``profile`` is the runtime lane (backend/device/dtype label); ``routing_profile`` the routing convention
    the runtime built its input under (``elixir-port`` or ``sakana``, see :mod:`schemas.profiles`).
    """

    request_id: RequestId
    turn: int
    agent_logits: list[float]
    role_logits: list[float]
    token_count: int
    transcript_hash: str
    backend: str = "torch"
    profile: str = "cpu-f32"
    adapter: str = BASE_ADAPTER_TOKEN
    cached_tokens: int = 0
    latency_ms: float = 0.0
    runtime_id: str = ""
    routing_profile: str = DEFAULT_ROUTING_PROFILE

    def __post_init__(self) -> None:
        check_routing_profile(self.routing_profile)
        require(2 <= len(self.agent_logits) <= MAX_AGENTS, "agent_logits",
                f"must hold 2..{MAX_AGENTS} agent logits, got {len(self.agent_logits)}")
        require(len(self.role_logits) == NUM_ROLES, "role_logits",
                f"must hold {NUM_ROLES} logits (worker, thinker, verifier), got {len(self.role_logits)}")
        check_finite(self.agent_logits, "agent_logits")
        check_finite(self.role_logits, "role_logits")
        require(self.token_count >= 1, "token_count", f"must be >= 1, got {self.token_count}")
        require(0 <= self.cached_tokens <= self.token_count, "cached_tokens",
                f"must be in 0..token_count, got {self.cached_tokens}")
        check_sha256(self.transcript_hash, "transcript_hash")

    @property
    def logits(self) -> list[float]:
        """All logits in head order: agents, then roles."""
        return [*self.agent_logits, *self.role_logits]


class RouteDecision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the logits mean: the chosen agent and role, margins, confidence and the route hash.

    ``agent_ranking`` lists the allowed agents best first (used to fall back when an agent fails); a sampled
    decision puts the sampled agent first, then the rest by logit. ``routing_profile`` is the convention the
    decision was made under; ``rule`` how it was made (``argmax``, or ``sample`` from the softmax at
    ``temperature``); margins are always winner-minus-runner-up of the logits.
    """

    agent_id: int
    role: Role
    agent_margin: float
    role_margin: float
    confidence: Confidence
    route_hash: str
    agent_logits: list[float]
    role_logits: list[float]
    agent_ranking: list[int]
    routing_profile: str = DEFAULT_ROUTING_PROFILE
    rule: str = "argmax"
    temperature: float | None = None

    def __post_init__(self) -> None:
        check_routing_profile(self.routing_profile)
        require(self.rule in ("argmax", "sample"), "rule", f"must be argmax or sample, got {self.rule!r}")
        require(0 <= self.agent_id < len(self.agent_logits), "agent_id",
                f"must index agent_logits (0..{len(self.agent_logits) - 1}), got {self.agent_id}")
        require(self.agent_margin >= 0, "agent_margin", f"must be >= 0, got {self.agent_margin}")
        require(self.role_margin >= 0, "role_margin", f"must be >= 0, got {self.role_margin}")
        require(bool(self.agent_ranking) and self.agent_ranking[0] == self.agent_id, "agent_ranking",
                "must start with the chosen agent")
        check_sha256(self.route_hash, "route_hash")


def _argmax_margin(values: Sequence[float], allowed: Sequence[int]) -> tuple[int, float, list[int]]:
    ranking = sorted(allowed, key=lambda i: (-values[i], i))
    best = ranking[0]
    # finite logits far apart can overflow their difference: keep the margin finite (JSON has no infinity;
    # inf below means "no runner-up")
    margin = min(values[best] - values[ranking[1]], sys.float_info.max) if len(ranking) > 1 else float("inf")
    return best, margin, ranking


def _band(margin: float, floor: float) -> Confidence:
    if margin < floor:
        return Confidence.BELOW_FLOOR
    if margin < 2 * floor:
        return Confidence.NEAR_FLOOR
    return Confidence.CLEAR


def decide(logits: RouteLogits, profile: RuntimeProfile, agent_mask: Sequence[int] | None = None) -> RouteDecision:
    """Interpret routing logits: independent argmax over agents and roles, margins, confidence, hash.

    ``agent_mask`` lists the agents available in this deployment (default: all); masked-out agents are
    never chosen and do not count as runner-up. Ties go to the lowest index, like ``argmax``.
    The ``route_hash`` is computed over the ids and *all* logits rounded to 6 decimals, as the Elixir port
    does, so it compares across ports.
    """
    n = len(logits.agent_logits)
    allowed = sorted(set(range(n) if agent_mask is None else agent_mask))
    if not allowed:
        raise SchemaError("agent_mask", "leaves no agent to route to")
    for a in allowed:
        require(0 <= a < n, "agent_mask", f"agent {a} is outside 0..{n - 1}")
    agent, agent_margin, ranking = _argmax_margin(logits.agent_logits, allowed)
    role_idx, role_margin, _ = _argmax_margin(logits.role_logits, range(NUM_ROLES))
    # A single allowed agent has no runner-up: the agent choice cannot flip, so its band is clear and
    # its recorded margin is 0.0 (JSON has no infinity).
    bands = (_band(agent_margin, profile.agent_margin_floor), _band(role_margin, profile.role_margin_floor))
    order = [Confidence.BELOW_FLOOR, Confidence.NEAR_FLOOR, Confidence.CLEAR]
    confidence = min(bands, key=order.index)
    if agent_margin == float("inf"):
        agent_margin = 0.0
    return RouteDecision(
        agent_id=agent,
        role=Role(role_idx),
        agent_margin=float(agent_margin),
        role_margin=float(role_margin),
        confidence=confidence,
        route_hash=route_hash(agent, role_idx, logits.logits),
        agent_logits=list(logits.agent_logits),
        role_logits=list(logits.role_logits),
        agent_ranking=ranking,
        routing_profile=logits.routing_profile,
    )


def rounded_logits(values: Sequence[float]) -> list[float]:
    """Logits rounded as the route hash rounds them (6 decimals, ties away from zero)."""
    return [elixir_round6(v) for v in values]


__all__ = [
    "NUM_AGENTS",
    "Confidence",
    "RouteDecision",
    "RouteLogits",
    "RouteRequest",
    "decide",
    "rounded_logits",
]
