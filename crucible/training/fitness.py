"""Episode fitness: the task reward plus the bonus terms of Sakana's trainer config.

Sakana's ``fugu`` trainer (``CMAEvolutionTrainer``; run config in ``anchors/sakana_es_log.json``: diversity
bonus 0.15, turn bonus 0.1, cost bonus 0) scores a candidate by the mean terminal reward ``R in {0, 1}`` of its
episodes plus, per episode:

* **diversity bonus** ``w_div * H``: ``H`` the Shannon entropy (nats) of the agents the episode called
  (``_calculate_diversity_bonus``): 0 when one agent did every turn, ``ln 2`` for two agents used equally;
* **turn bonus** ``-((turns - 1) / max_turns) / 4 * w_turn`` (``_calculate_turn_bonus``): a small penalty for
  every turn after the first.

Example:
    >>> w = FitnessWeights()
    >>> round(episode_fitness(True, [1, 5], w), 4)          # 1 + 0.15 ln 2 - (1/5)/4 * 0.1
    1.099
    >>> episode_fitness(False, [], w)
    0.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FitnessWeights:
    """Bonus weights (Sakana's released run: diversity 0.15, turn 0.1) and the turn limit they scale by."""

    diversity: float = 0.15
    turn: float = 0.1
    max_turns: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


def agent_entropy(agents: Sequence[int]) -> float:
    """Shannon entropy (nats) of the agent ids in ``agents`` (0 for none or one distinct agent)."""
    if not agents:
        return 0.0
    n = len(agents)
    return -sum(c / n * math.log(c / n) for c in Counter(agents).values())


def turn_bonus(turns: int, max_turns: int, weight: float) -> float:
    """``-((turns - 1) / max_turns) / 4 * weight`` (0 for an episode of at most one turn)."""
    if turns <= 1 or weight == 0:
        return 0.0
    return -((turns - 1) / max_turns) / 4 * weight


def episode_fitness(correct: bool, agents: Sequence[int], weights: FitnessWeights) -> float:
    """Reward (1 when the answer is right) plus the diversity and turn terms of one episode."""
    if not agents:
        return 1.0 if correct else 0.0
    return (1.0 if correct else 0.0) + weights.diversity * agent_entropy(agents) + \
        turn_bonus(len(agents), weights.max_turns, weights.turn)
