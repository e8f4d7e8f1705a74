"""RouteDecision from logits: the 37 reference rows reproduce ids, margins and route_hash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import Confidence, Role, RouteLogits, RuntimeProfile, decide, route_hash
from schemas.fingerprint import elixir_round6, route_term_bytes

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"
CASES: list[dict[str, Any]] = json.loads((ANCHORS / "qwen_router_prompt_eval_logits.json").read_text())["cases"]
CUDA = RuntimeProfile(name="cuda-ref", agent_margin_floor=0.24, role_margin_floor=1.06)


def _logits(case: dict[str, Any]) -> RouteLogits:
    return RouteLogits(request_id=case["id"].replace(".", "-"), turn=0, agent_logits=case["agent_logits_rounded"],
                       role_logits=case["role_logits_rounded"], token_count=case["token_count"],
                       transcript_hash=case["transcript_hash"])


def test_there_are_37_reference_cases() -> None:
    assert len(CASES) == 37


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_reference_case_reproduces_ids_margins_and_hash(case: dict[str, Any]) -> None:
    d = decide(_logits(case), CUDA)
    assert d.agent_id == case["agent_id"]
    assert d.role == Role(case["role_id"])
    assert d.route_hash == case["route_hash"]
    # reference margins were computed on unrounded logits: rounding to 6 decimals moves them by <= 1e-6
    assert d.agent_margin == pytest.approx(case["agent_margin"], abs=2e-6)
    assert d.role_margin == pytest.approx(case["role_margin"], abs=2e-6)
    assert d.confidence != Confidence.BELOW_FLOOR  # the CUDA floors are 80% of the smallest margins
    assert d.agent_ranking[0] == d.agent_id and sorted(d.agent_ranking) == list(range(7))


def test_smallest_reference_margins_match_the_documented_floors() -> None:
    assert min(c["agent_margin"] for c in CASES) == pytest.approx(0.3015, abs=1e-4)
    assert min(c["role_margin"] for c in CASES) == pytest.approx(1.3352, abs=1e-4)


def test_term_bytes_layout() -> None:
    b = route_term_bytes(4, 2, [1.5] * 10)
    assert len(b) == 107 and b[:2] == bytes([131, 108]) and b[-2:] == bytes([106, 106])


def test_elixir_rounding_ties_away_from_zero() -> None:
    assert elixir_round6(0.0078125) == 0.007813  # exact binary tie: Python's round() would give 0.007812
    assert elixir_round6(-0.0078125) == -0.007813
    assert elixir_round6(1.23456749) == 1.234567
    with pytest.raises(ValueError):
        elixir_round6(math.nan)


def test_mask_confidence_and_ties() -> None:
    lg = RouteLogits(request_id="r", turn=0, agent_logits=[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                     role_logits=[0.0, 0.0, 3.0], token_count=3, transcript_hash="0" * 64)
    d = decide(lg, CUDA, agent_mask=[2, 4])
    assert (d.agent_id, d.agent_margin, d.agent_ranking) == (2, 2.0, [2, 4])
    assert d.role == Role.VERIFIER and d.role_margin == 3.0 and d.confidence == Confidence.CLEAR
    assert d.route_hash == route_hash(2, 2, lg.logits)
    tie = RouteLogits(request_id="r", turn=0, agent_logits=[1.0, 1.0, 0, 0, 0, 0, 0], role_logits=[2.0, 2.0, 0.0],
                      token_count=3, transcript_hash="0" * 64)
    t = decide(tie, CUDA)
    assert (t.agent_id, t.role, t.agent_margin, t.confidence) == (0, Role.WORKER, 0.0, Confidence.BELOW_FLOOR)
    near = decide(RouteLogits(request_id="r", turn=0, agent_logits=[1.3, 1.0, 0, 0, 0, 0, 0],
                              role_logits=[5.0, 0.0, 0.0], token_count=3, transcript_hash="0" * 64), CUDA)
    assert near.confidence == Confidence.NEAR_FLOOR
    with pytest.raises(ValueError, match="agent_mask"):
        decide(lg, CUDA, agent_mask=[9])
    with pytest.raises(ValueError, match="agent_mask"):
        decide(lg, CUDA, agent_mask=[])


def test_route_logits_invariants() -> None:
    base = {"request_id": "r", "turn": 0, "agent_logits": [0.0] * 7, "role_logits": [0.0] * 3, "token_count": 2,
            "transcript_hash": "0" * 64}
    for patch, field in [({"role_logits": [0.0] * 2}, "role_logits"), ({"agent_logits": [float("nan")] * 7},
                         "agent_logits"), ({"token_count": 0}, "token_count"), ({"cached_tokens": 5}, "cached_tokens"),
                         ({"transcript_hash": "x"}, "transcript_hash"), ({"request_id": "has space"}, "request_id")]:
        with pytest.raises(msgspec.ValidationError, match=field):
            msgspec.json.decode(msgspec.json.encode(base | patch), type=RouteLogits)


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(agents=st.lists(finite, min_size=7, max_size=7), roles=st.lists(finite, min_size=3, max_size=3))
def test_decision_is_argmax_with_nonnegative_margins(agents: list[float], roles: list[float]) -> None:
    d = decide(RouteLogits(request_id="r", turn=0, agent_logits=agents, role_logits=roles, token_count=2,
                           transcript_hash="0" * 64), CUDA)
    assert agents[d.agent_id] == max(agents) and roles[int(d.role)] == max(roles)
    assert d.agent_margin == max(agents) - sorted(agents)[-2]
    assert d.role_margin == max(roles) - sorted(roles)[-2]
    assert len(d.route_hash) == 64
