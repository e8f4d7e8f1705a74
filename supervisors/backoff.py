"""Exponential restart backoff with optional jitter.

>>> Backoff(base=0.1, factor=2.0, max_delay=1.0).schedule(5)
[0.1, 0.2, 0.4, 0.8, 1.0]

Jitter shortens a delay by a random fraction of up to ``jitter`` (``jitter=1.0`` is "full jitter": a
uniform draw from ``[0, delay)``). Pass ``rng`` (anything with ``random() -> float``) for reproducible tests:

>>> import random
>>> b = Backoff(base=1.0, factor=2.0, max_delay=8.0, jitter=0.5, rng=random.Random(7))
>>> all(0.5 * 2.0**k <= d <= 2.0**k for k, d in enumerate(b.schedule(3)))
True
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from supervisors.errors import ChildSpecError


class RandomSource(Protocol):
    """Source of uniform floats in ``[0, 1)``; :class:`random.Random` satisfies it."""

    def random(self) -> float:
        """Return the next float in ``[0, 1)``."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Delay before the ``attempt``-th consecutive restart of a child: ``min(max_delay, base * factor**attempt)``.

    ``reset_after``: a child that ran at least this many seconds before crashing starts again at attempt 0.
    """

    base: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.0
    reset_after: float = 60.0
    rng: RandomSource = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base >= 0 and math.isfinite(self.base)):
            raise ChildSpecError(f"Backoff.base must be a finite number >= 0, got {self.base!r}")
        if not self.factor >= 1:
            raise ChildSpecError(f"Backoff.factor must be >= 1 so delays never shrink, got {self.factor!r}")
        if not self.max_delay >= 0:
            raise ChildSpecError(f"Backoff.max_delay must be >= 0, got {self.max_delay!r}")
        if not 0 <= self.jitter <= 1:
            raise ChildSpecError(f"Backoff.jitter is a fraction in [0, 1], got {self.jitter!r}")
        if not self.reset_after > 0:
            raise ChildSpecError(f"Backoff.reset_after must be > 0 seconds, got {self.reset_after!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (0-based) of a consecutive crash streak."""
        if attempt < 0:
            raise ChildSpecError(f"attempt must be >= 0, got {attempt}")
        try:
            raw = min(self.max_delay, self.base * self.factor**attempt)
        except OverflowError:
            raw = self.max_delay
        if self.jitter:
            raw *= 1.0 - self.jitter * self.rng.random()
        return raw

    def schedule(self, attempts: int) -> list[float]:
        """The delays of the first ``attempts`` consecutive restarts (draws jitter from ``rng``)."""
        return [self.delay(k) for k in range(attempts)]


NO_BACKOFF = Backoff(base=0.0)
"""Restart immediately (Erlang's behaviour)."""
