"""Vector layouts and the fitness terms (Sakana's ``fugu`` formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crucible.router_vector import TRINITY_SVF_SLOTS, TRINITY_VECTOR_LENGTH
from crucible.training.fitness import FitnessWeights, agent_entropy, episode_fitness, turn_bonus
from crucible.training.layout import LayoutError, VectorLayout, make_layout


def test_sakana_preset_is_the_released_layout() -> None:
    lay = make_layout("sakana", n_agents=7, hidden=1024, num_layers=28)
    assert lay.size == TRINITY_VECTOR_LENGTH
    assert [n for n, _ in lay.svf_blocks] == [s[0] for s in TRINITY_SVF_SLOTS]
    x = np.arange(lay.size, dtype=np.float64)
    head = lay.head(x)
    assert head.shape == (10, 1024) and head[0, 0] == 9216 and head[9, 1023] == lay.size - 1


def test_head_only_layout_round_trips_and_rejects_bad_vectors() -> None:
    lay = make_layout("head-only", n_agents=4, hidden=3)
    assert lay.size == 21 and lay.head_only and lay.head_shape == (7, 3)
    assert VectorLayout.from_dict(lay.to_dict()) == lay
    assert lay.head(np.ones(21)).sum() == 21
    with pytest.raises(LayoutError, match="21 values"):
        lay.head(np.ones(20))
    with pytest.raises(LayoutError, match="NaN"):
        lay.head(np.full(21, np.nan))
    with pytest.raises(LayoutError, match="unknown layout"):
        make_layout("svf-everywhere", n_agents=7, hidden=8)


def test_fitness_terms_follow_fugu() -> None:
    assert agent_entropy([3, 3, 3]) == 0.0
    assert agent_entropy([1, 5]) == pytest.approx(math.log(2))
    assert turn_bonus(1, 5, 0.1) == 0.0
    assert turn_bonus(5, 5, 0.1) == pytest.approx(-((5 - 1) / 5) / 4 * 0.1)
    w = FitnessWeights(diversity=0.15, turn=0.1, max_turns=5)
    assert episode_fitness(True, [1, 5], w) == pytest.approx(1 + 0.15 * math.log(2) - 0.005)
    assert episode_fitness(False, [2, 2, 2, 2, 2], w) == pytest.approx(-0.02)
    assert episode_fitness(True, [1], FitnessWeights(diversity=0.0, turn=0.0)) == 1.0
