"""A released vector given as the runtime's head routes under the profile it was trained under (issue 15)."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings

HEAD = "model_runtime.head_path=/data/anchors/sakana_model_iter_60.npy"


def test_the_released_vector_defaults_to_sakana_for_runtime_and_coordinator() -> None:
    s = load_settings(environ={}, overrides=[HEAD])
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile) == ("sakana", "sakana")
    assert s.model_runtime.dtype == "bfloat16"  # the sakana profile's numerics follow


def test_the_same_vector_from_the_environment_too() -> None:
    s = load_settings(environ={"TRINITY__MODEL_RUNTIME__HEAD_PATH": "/x/sakana_model_iter_60.npy"})
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile) == ("sakana", "sakana")


def test_a_profile_that_is_set_wins() -> None:
    s = load_settings(environ={}, overrides=[HEAD, "model_runtime.routing_profile=elixir-port"])
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile) == ("elixir-port", "elixir-port")
    s = load_settings(environ={"TRINITY__MODEL_RUNTIME__ROUTING_PROFILE": "elixir-port"}, overrides=[HEAD])
    assert s.model_runtime.routing_profile == "elixir-port"


@pytest.mark.parametrize("head", [None, "/x/my_head.npy", "/x/sakana_model_iter_60.npy.bak"])
def test_other_heads_keep_the_default(head: str | None) -> None:
    s = load_settings(environ={}, overrides=[f"model_runtime.head_path={head}"] if head else [])
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile) == ("elixir-port", "elixir-port")


def test_a_bad_profile_is_still_refused() -> None:
    with pytest.raises(SettingsError, match="routing_profile"):
        load_settings(environ={}, overrides=[HEAD, "coordinator.routing_profile=nope"])


def test_the_previous_demo_routes_the_released_vector_under_sakana(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ops.demo import demo_settings

    vector = tmp_path / "sakana_model_iter_60.npy"
    vector.write_bytes(b"")
    s, label = demo_settings(load_settings(environ={}), vector)
    assert s.model_runtime.head_path == str(vector) and "routing profile sakana" in label
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile, s.model_runtime.dtype) == \
        ("sakana", "sakana", "bfloat16")
    other = tmp_path / "model_iter_60.npy"  # not the released file name: no opinion
    s, _ = demo_settings(load_settings(environ={}), other)
    assert (s.model_runtime.routing_profile, s.coordinator.routing_profile) == ("elixir-port", "elixir-port")
