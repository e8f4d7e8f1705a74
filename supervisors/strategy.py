"""Restart strategies and restart-intensity accounting.

>>> w = RestartWindow(Intensity(max_restarts=2, period=10.0))
>>> [w.record(t) for t in (0.0, 1.0, 2.0)]
[True, True, False]
>>> w.record(20.0)
True
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from supervisors.errors import ChildSpecError


class Strategy(StrEnum):
    """Which children restart when one crashes.

    * ``ONE_FOR_ONE``: only the crashed child.
    * ``REST_FOR_ONE``: the crashed child and every running child after it in the spec list (its dependents).
    * ``ONE_FOR_ALL``: every running child.
    """

    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


@dataclass(frozen=True)
class Intensity:
    """At most ``max_restarts`` restarts within any ``period`` seconds; one more escalates to the parent."""

    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ChildSpecError(f"Intensity.max_restarts must be >= 0, got {self.max_restarts}")
        if not (self.period > 0 and math.isfinite(self.period)):
            raise ChildSpecError(f"Intensity.period must be a finite number of seconds > 0, got {self.period}")


class RestartWindow:
    """Sliding window of restart times checked against an :class:`Intensity`."""

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.intensity.period:
            self._times.popleft()

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; return False when it exceeds the intensity (escalate)."""
        self._expire(now)
        self._times.append(now)
        return len(self._times) <= self.intensity.max_restarts

    def count(self, now: float) -> int:
        """Restarts recorded within the last ``period`` seconds."""
        self._expire(now)
        return len(self._times)

    def reset(self) -> None:
        """Forget every recorded restart."""
        self._times.clear()
