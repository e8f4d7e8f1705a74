"""Budget accounting for one run: turns, agent calls, tokens, cost and a wall-clock deadline.

Counting rules:

- ``turns``: turns *started* (a route was asked for). Checked before each turn: ``turns >= max_turns``
  stops with ``MAX_TURNS``.
- ``agent_calls``: every agent call *attempted*, failed ones included (a failed call still costs the
  provider a request). Checked before each attempt: ``agent_calls >= max_agent_calls`` -> ``MAX_AGENT_CALLS``.
- ``tokens`` and ``cost_usd``: summed from receipts. A call may overshoot them (its size is not known in
  advance, but completions are capped at the tokens left); the next check stops with ``MAX_TOKENS`` /
  ``MAX_COST`` once the total reaches the limit.
- ``deadline_ms``: measured from the run's start on the injected monotonic clock (a queued job's run starts
  ``elapsed_s`` in: the time since the job was queued, so its deadline is absolute); checked before every
  route and every agent attempt (``DEADLINE``), and every bus call's timeout is capped at the time left.

Checks run in the order deadline, turns, agent calls, tokens, cost; the first that trips is the stop
reason.

Example:
    >>> from schemas import Budget
    >>> t = [0.0]
    >>> b = BudgetTracker(Budget(max_turns=2, deadline_ms=1000), clock=lambda: t[0])
    >>> b.start_turn(); b.check_turn()
    >>> b.start_turn(); b.check_turn()
    <StopReason.MAX_TURNS: 'max_turns'>
    >>> t[0] = 2.0; b.check_call()
    <StopReason.DEADLINE: 'deadline'>
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.coordination import AgentCallReceipt, Budget, BudgetSnapshot, StopReason

Clock = Callable[[], float]


class BudgetTracker:
    """Consumption of one run against its :class:`~schemas.Budget` (see the module docstring)."""

    def __init__(self, limits: Budget, clock: Clock, *, elapsed_s: float = 0.0) -> None:
        """``elapsed_s``: time the run already spent before this tracker (a resumed or queued run whose
        deadline is absolute)."""
        self.limits = limits
        self._clock = clock
        self._started = clock() - max(0.0, elapsed_s)
        self.turns = 0
        self.agent_calls = 0
        self.tokens = 0
        self.cost_usd = 0.0

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since the run started."""
        return max(0.0, (self._clock() - self._started) * 1000.0)

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (``None`` when there is none; may be <= 0)."""
        if self.limits.deadline_ms is None:
            return None
        return (self.limits.deadline_ms - self.elapsed_ms) / 1000.0

    def remaining_tokens(self) -> int | None:
        """Tokens left (``None`` when unlimited)."""
        if self.limits.max_tokens is None:
            return None
        return self.limits.max_tokens - self.tokens

    def _check_spend(self) -> StopReason | None:
        if self.limits.max_tokens is not None and self.tokens >= self.limits.max_tokens:
            return StopReason.MAX_TOKENS
        if self.limits.max_cost_usd is not None and self.cost_usd >= self.limits.max_cost_usd:
            return StopReason.MAX_COST
        return None

    def check_deadline(self) -> StopReason | None:
        """``DEADLINE`` once the deadline has passed."""
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            return StopReason.DEADLINE
        return None

    def check_turn(self) -> StopReason | None:
        """Why a new turn may not start, or ``None``."""
        if (reason := self.check_deadline()) is not None:
            return reason
        if self.turns >= self.limits.max_turns:
            return StopReason.MAX_TURNS
        if self.limits.max_agent_calls is not None and self.agent_calls >= self.limits.max_agent_calls:
            return StopReason.MAX_AGENT_CALLS
        return self._check_spend()

    def check_call(self) -> StopReason | None:
        """Why another agent call may not be attempted, or ``None``."""
        if (reason := self.check_deadline()) is not None:
            return reason
        if self.limits.max_agent_calls is not None and self.agent_calls >= self.limits.max_agent_calls:
            return StopReason.MAX_AGENT_CALLS
        return self._check_spend()

    def start_turn(self) -> None:
        """Count a turn as started."""
        self.turns += 1

    def start_call(self) -> None:
        """Count an agent call as attempted."""
        self.agent_calls += 1

    def record_receipt(self, receipt: AgentCallReceipt) -> None:
        """Add a successful call's tokens and cost."""
        self.tokens += receipt.usage.total_tokens
        self.cost_usd += receipt.cost_usd

    def snapshot(self) -> BudgetSnapshot:
        """Consumption so far, against the limits."""
        return BudgetSnapshot(turns=self.turns, agent_calls=self.agent_calls, tokens=self.tokens,
                              cost_usd=self.cost_usd, elapsed_ms=self.elapsed_ms, limits=self.limits)
