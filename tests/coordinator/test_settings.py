"""CoordinatorSettings validation and its mapping onto the state machine's Policy."""

from __future__ import annotations

import pytest

from actors.coordinator.actor import fingerprint, policy_from_settings
from config.coordinator import CoordinatorSettings
from schemas import CoordinationRequest


def test_policy_from_settings() -> None:
    p = policy_from_settings(CoordinatorSettings(verifier_before_worker="allow", agent_mask=[1, 2],
                                                 agent_margin_floor=0.5, role_margin_floor=2.0, max_fallbacks=1,
                                                 role_pack="custom/2", trace_content=True))
    assert (p.verifier_before_worker, p.agent_mask, p.max_fallbacks, p.role_pack, p.trace_content) == (
        "allow", (1, 2), 1, "custom/2", True)
    assert (p.profile.agent_margin_floor, p.profile.role_margin_floor) == (0.5, 2.0)
    d = policy_from_settings(CoordinatorSettings())
    assert (d.verifier_before_worker, d.agent_mask, d.route_attempts) == ("worker", None, 2)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"verifier_before_worker": "never"}, "verifier_before_worker"),
    ({"role_inject_mode": "carrier-pigeon"}, "role_inject_mode"),
    ({"agent_mask": []}, "agent_mask"),
    ({"agent_timeout_s": 0}, "agent_timeout_s"),
    ({"route_attempts": 0}, "route_attempts"),
    ({"max_fallbacks": -1}, "max_fallbacks"),
    ({"agent_max_tokens": 0}, "agent_max_tokens"),
    ({"dedupe_ttl_s": -1.0}, "dedupe"),
])
def test_invalid_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CoordinatorSettings(**kwargs)  # type: ignore[arg-type]


def test_fingerprint_distinguishes_payloads() -> None:
    a = CoordinationRequest(request_id="q", query="x")
    assert fingerprint(a) == fingerprint(CoordinationRequest(request_id="q", query="x"))
    assert fingerprint(a) != fingerprint(CoordinationRequest(request_id="q", query="y"))
