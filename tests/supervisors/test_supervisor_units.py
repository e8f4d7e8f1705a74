"""Pure pieces of the supervision tree: backoff, intensity window, spec validation, health, errors."""

from __future__ import annotations

import doctest
import json
import random

import pytest

import supervisors
from supervisors import (
    Backoff,
    ChildHealth,
    ChildSpec,
    ChildSpecError,
    ChildState,
    Intensity,
    RestartIntensityExceeded,
    RestartWindow,
    Supervisor,
    SupervisorHealth,
    SupervisorState,
)
from supervisors import backoff as backoff_mod
from supervisors import context as context_mod
from supervisors import health as health_mod
from supervisors import spec as spec_mod
from supervisors import strategy as strategy_mod


class FixedRng:
    """Returns the given values in order (a stub RNG)."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


async def _idle(ctx: supervisors.ChildContext) -> None:
    await ctx.wait_draining()


def test_backoff_schedule_is_exponential_and_capped() -> None:
    b = Backoff(base=0.1, factor=2.0, max_delay=1.0)
    assert b.schedule(6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], rel=1e-12)
    assert Backoff(base=0.5, factor=1.0).schedule(3) == [0.5, 0.5, 0.5]
    assert Backoff(base=0.1, factor=2.0, max_delay=3.0).delay(5000) == 3.0  # no OverflowError


def test_backoff_jitter_shrinks_by_rng_fraction() -> None:
    b = Backoff(base=1.0, factor=2.0, max_delay=100.0, jitter=0.5, rng=FixedRng(0.0, 0.5, 0.999))
    # delay(k) = 2**k * (1 - 0.5 * r)
    assert b.schedule(3) == pytest.approx([1.0, 2.0 * 0.75, 4.0 * (1 - 0.5 * 0.999)], rel=1e-12)
    full = Backoff(base=8.0, factor=1.0, max_delay=8.0, jitter=1.0, rng=FixedRng(0.25))
    assert full.delay(0) == pytest.approx(6.0)


def test_backoff_jitter_is_reproducible_with_seeded_rng() -> None:
    a = Backoff(base=0.2, factor=3.0, max_delay=5.0, jitter=0.3, rng=random.Random(1234)).schedule(8)
    b = Backoff(base=0.2, factor=3.0, max_delay=5.0, jitter=0.3, rng=random.Random(1234)).schedule(8)
    assert a == b
    raw = Backoff(base=0.2, factor=3.0, max_delay=5.0).schedule(8)
    assert all(0.7 * r <= j <= r for j, r in zip(a, raw, strict=True))
    assert a != raw


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0},
        {"base": float("inf")},
        {"factor": 0.5},
        {"max_delay": -0.1},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"reset_after": 0.0},
    ],
)
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ChildSpecError):
        Backoff(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # ChildSpecError is also a ValueError
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ChildSpecError, match="attempt"):
        Backoff().delay(-1)


def test_restart_window_counts_within_period_only() -> None:
    w = RestartWindow(Intensity(max_restarts=2, period=10.0))
    assert w.record(0.0) is True
    assert w.record(5.0) is True
    assert w.record(9.9) is False  # third restart within 10 s
    assert w.count(9.9) == 3
    assert w.count(10.0) == 2  # the t=0 restart expires exactly one period later
    assert w.count(15.0) == 1
    assert w.record(15.0) is True  # window holds 9.9 and 15.0
    w.reset()
    assert w.count(15.0) == 0


def test_restart_window_zero_intensity_escalates_on_first_restart() -> None:
    assert RestartWindow(Intensity(max_restarts=0, period=1.0)).record(0.0) is False


@pytest.mark.parametrize("kwargs", [{"max_restarts": -1}, {"period": 0.0}, {"period": float("inf")}])
def test_intensity_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ChildSpecError):
        Intensity(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "a/b"},
        {"shutdown_timeout": -1.0},
        {"shutdown_timeout": float("nan")},
        {"liveness_timeout": 0.0},
        {"liveness_timeout": float("inf")},
        {"health_interval": 0.0},
    ],
)
def test_child_spec_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "ok", "run": _idle, **kwargs}
    with pytest.raises(ChildSpecError):
        ChildSpec(**args)  # type: ignore[arg-type]


def test_child_spec_defaults() -> None:
    spec = ChildSpec("w", _idle)
    assert (spec.restart, spec.shutdown_timeout, spec.liveness_timeout, spec.health_check) == (
        supervisors.RestartType.PERMANENT,
        5.0,
        None,
        None,
    )
    assert ChildSpec("w", _idle, shutdown_timeout=None).shutdown_timeout is None
    assert ChildSpec("w", _idle, shutdown_timeout=0).shutdown_timeout == 0


def test_supervisor_rejects_duplicate_child_names() -> None:
    with pytest.raises(ChildSpecError, match=r"duplicate child names \['a'\]"):
        Supervisor("s", [ChildSpec("a", _idle), ChildSpec("b", _idle), ChildSpec("a", _idle)])
    with pytest.raises(ChildSpecError):
        Supervisor("", [])
    with pytest.raises(ChildSpecError):
        Supervisor("s", [], kill_timeout=0.0)


def test_health_snapshot_ok_and_dict_form() -> None:
    leaf = ChildHealth("leaf", ChildState.RUNNING, "permanent", 0, None, 1.0)
    inner = SupervisorHealth("inner", SupervisorState.RUNNING, "one_for_one", 0, 2.0, None, (leaf,))
    top = SupervisorHealth(
        "top",
        SupervisorState.RUNNING,
        "rest_for_one",
        1,
        3.0,
        None,
        (
            ChildHealth("inner", ChildState.RUNNING, "permanent", 1, "ValueError('x')", 2.0, inner),
            ChildHealth("once", ChildState.STOPPED, "transient", 0, None, None),
        ),
    )
    assert top.ok
    data = json.loads(json.dumps(top.to_dict()))
    assert data["children"][0]["nested"]["children"][0] == {
        "name": "leaf",
        "state": "running",
        "restart_type": "permanent",
        "restarts": 0,
        "last_error": None,
        "uptime_s": 1.0,
        "nested": None,
    }
    assert data["ok"] is True
    assert top.child("once").state is ChildState.STOPPED
    with pytest.raises(KeyError, match="no child 'nope'"):
        top.child("nope")
    sick_leaf = ChildHealth("leaf", ChildState.RESTARTING, "permanent", 3, "boom", None)
    sick = SupervisorHealth("inner", SupervisorState.RUNNING, "one_for_one", 3, 2.0, None, (sick_leaf,))
    assert not sick.ok
    assert not ChildHealth("inner", ChildState.RUNNING, "permanent", 0, None, 1.0, sick).ok
    assert not ChildHealth("t", ChildState.FAILED, "temporary", 0, "boom", None).ok


def test_intensity_error_is_actionable() -> None:
    err = RestartIntensityExceeded(
        supervisor="top", child="db", max_restarts=3, period=5.0, last_error="ValueError('x')"
    )
    assert (err.supervisor, err.child, err.restarts, err.period) == ("top", "db", 4, 5.0)
    assert "more than 3 restarts within 5.0 s" in str(err)
    assert "raise Intensity(" in str(err)


@pytest.mark.parametrize(
    "module", [supervisors, backoff_mod, strategy_mod, health_mod, spec_mod, context_mod], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
