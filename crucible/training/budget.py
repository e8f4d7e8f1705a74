"""Spending on paid agents during training: a meter with a limit, and the dry-run estimate.

Every agent call that is really made (memo hits cost nothing) adds its receipt's ``cost_usd`` (the pool prices
usage at the agent's ``price_in_per_mtok``/``price_out_per_mtok``) to a :class:`SpendMeter`. With a limit, the
episode runner checks the meter before each episode and raises :class:`BudgetExhausted` once the limit is
reached (so a run overshoots by at most one episode's calls; over the bus, by at most one batch of jobs). The
trainer then keeps its last finished generation's checkpoint, records the spend there, and stops;
``run.py train --resume DIR --budget-usd MORE`` continues.

:func:`estimate` is what ``run.py train --dry-run`` prints: an upper bound on calls, tokens and cost, made without
calling anything.

Example:
    >>> m = SpendMeter(limit_usd=0.01)
    >>> m.add(0.004); m.add(0.006); m.exhausted
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class BudgetExhausted(Exception):
    """The spend budget is used up: training stopped after its last finished generation."""

    def __init__(self, spent_usd: float, limit_usd: float) -> None:
        super().__init__(f"spend budget used up: ${spent_usd:.4f} of ${limit_usd:.4f}; raise it with "
                         "`run.py train --resume RUN_DIR --budget-usd MORE`")
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd


@dataclass
class SpendMeter:
    """USD spent on agent calls so far (across resumes: the trainer seeds ``spent_usd`` from its checkpoint)."""

    limit_usd: float | None = None
    spent_usd: float = 0.0
    calls: int = 0

    def add(self, cost_usd: float) -> None:
        """Count one real call's cost."""
        self.spent_usd += float(cost_usd)
        self.calls += 1

    @property
    def exhausted(self) -> bool:
        """True once a limit is set and reached."""
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` when :attr:`exhausted`."""
        if self.exhausted:
            assert self.limit_usd is not None
            raise BudgetExhausted(self.spent_usd, self.limit_usd)


def _tokens(text: str) -> int:
    """Rough token count (4 characters a token): the estimate needs no tokenizer."""
    return max(1, (len(text) + 3) // 4)


def estimate(*, generations: int, popsize: int, batch: int, valid: int, test: int, test_each_generation: bool,
             max_turns: int, agent_max_tokens: int, questions: Sequence[str],
             prices: dict[int, tuple[float, float]], system_chars: int = 600,
             budget_usd: float | None = None, done_generations: int = 0) -> dict[str, Any]:
    """Upper bound on the agent calls, tokens and USD of the remaining generations (plus the final scoring).

    Every episode is taken to run ``max_turns`` turns and no reply to be memoized; turn ``t``'s prompt is the
    role prompt (``system_chars``; :func:`role_prompt_chars`) plus the question plus ``t - 1`` earlier replies of
    ``agent_max_tokens`` (and an 8-token header each), and
    every reply uses the whole ``agent_max_tokens``. ``prices`` maps each agent the router may pick to
    ``(USD per 1M input tokens, per 1M output tokens)``: ``cost_usd_max`` prices every call at the dearest agent,
    ``cost_usd_uniform`` at the mean (uniform routing).
    """
    gens = max(generations - done_generations, 0)
    per_gen = popsize * batch + valid + (test if test_each_generation else 0)
    episodes = gens * per_gen + test + valid
    q_tokens = sum(_tokens(q) for q in questions) / max(len(questions), 1)
    base = _tokens("x" * system_chars) + q_tokens
    # each earlier reply: its tokens plus a header (the role pack's ``reply_header``) of at most 8
    prompt_per_episode = sum(base + (t - 1) * (agent_max_tokens + 8) for t in range(1, max_turns + 1))
    calls = episodes * max_turns
    prompt = episodes * prompt_per_episode
    completion = calls * agent_max_tokens
    price_in = [p[0] for p in prices.values()] or [0.0]
    price_out = [p[1] for p in prices.values()] or [0.0]
    dear = max((p[0] * prompt + p[1] * completion) / 1e6 for p in prices.values()) if prices else 0.0
    uniform = (sum(price_in) / len(price_in) * prompt + sum(price_out) / len(price_out) * completion) / 1e6
    out: dict[str, Any] = {"dry_run": True, "generations": gens, "episodes": int(episodes),
                           "agent_calls_max": int(calls), "prompt_tokens_max": int(prompt),
                           "completion_tokens_max": int(completion), "cost_usd_max": round(dear, 6),
                           "cost_usd_uniform": round(uniform, 6), "budget_usd": budget_usd,
                           "note": f"upper bound: {max_turns} turns per episode, no memo hit, "
                                   f"{agent_max_tokens}-token replies, 4 characters a token"}
    if budget_usd is not None:
        out["fits_budget"] = dear <= budget_usd
    return out


def role_prompt_chars() -> int:
    """Characters the default role pack adds around a question (the longest role's first-turn prompt)."""
    from actors.role_injector.builder import build
    from actors.role_injector.packs import DEFAULT_PACK
    from schemas.common import Role
    from schemas.roles import RoleInjectRequest

    out = 0
    for role in Role:
        reply = build(DEFAULT_PACK, RoleInjectRequest(request_id="dry-run", turn=0, agent_id=0, role=role, query="q"))
        out = max(out, sum(len(m.content) for m in reply.messages) - 1)
    return out
