"""How many queued jobs a coordinator takes at once: additive increase, multiplicative decrease (AIMD).

The work queue holds jobs nobody has taken; a job taken and then stuck behind an ``overloaded`` runtime only
holds a slot (and keeps other coordinators from it). So the intake follows what the runtimes can serve: every
``overloaded`` route halves the limit (at most once per ``cut_interval_s``, never below ``floor``), every job
that finishes raises it by one, up to ``ceiling`` (the ``jobs_concurrency`` setting).

Example:
    >>> t = [0.0]
    >>> limit = IntakeLimit(ceiling=64, clock=lambda: t[0])
    >>> limit.overloaded(); limit.value
    32
    >>> limit.overloaded(); limit.value      # within the cut interval: one cut per burst of overloads
    32
    >>> limit.finished(); limit.value
    33
"""

from __future__ import annotations

import time
from collections.abc import Callable


class IntakeLimit:
    """The AIMD limit of jobs running at once (see the module docstring); ``adaptive=False`` pins it."""

    def __init__(self, ceiling: int, *, floor: int = 1, adaptive: bool = True, cut_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling, self.floor = ceiling, max(1, min(floor, ceiling))
        self.adaptive = adaptive
        self.cut_interval_s = cut_interval_s
        self._clock = clock
        self._limit = float(ceiling)
        self._last_cut = float("-inf")
        self.cuts = 0

    @property
    def value(self) -> int:
        """Jobs that may run at once now."""
        return max(self.floor, int(self._limit))

    def overloaded(self) -> None:
        """A route was answered ``overloaded``: halve the limit (once per burst)."""
        if not self.adaptive:
            return
        now = self._clock()
        if now - self._last_cut < self.cut_interval_s:
            return
        self._last_cut = now
        self._limit = max(float(self.floor), self._limit / 2.0)
        self.cuts += 1

    def finished(self) -> None:
        """A job finished: one more may run at once (up to the ceiling)."""
        if self.adaptive:
            self._limit = min(float(self.ceiling), self._limit + 1.0)
