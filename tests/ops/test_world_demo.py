"""The trained router bundle the demo serves: pin verification, settings from its manifest, graded questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from config.settings import load_settings
from crucible.registry.pins import build_pin, write_pin
from crucible.world.tasks import FAMILIES, build_suite
from ops.world_demo import BUNDLE_DIR, BundleError, bundle_settings, grade_answer, load_bundle, world_questions

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_bundle_verifies_and_fits_the_runtime() -> None:
    from actors.model_runtime.head import RoutingHead
    from schemas.sakana import HeadSpec

    bundle = load_bundle(REPO)
    m = bundle.manifest
    # exported in the Sakana layout; trained (and so served) under the elixir-port routing profile: see the bundle
    # README for why (on this 135M backbone the sakana router text's fixed suffix left the head at ~77% test)
    assert m["exported_layout"]["name"] == "sakana" and m["routing_profile"] == "elixir-port"
    assert m["layout"]["hidden"] == 576 and bundle.vector.stat().st_size < 1_000_000
    vec = np.load(bundle.vector)
    assert vec.shape == (m["exported_layout"]["size"],) and not vec[:m["exported_layout"]["size"] - 10 * 576].any()
    head = RoutingHead.load(bundle.vector, HeadSpec(cols=576)).weight.numpy()
    np.testing.assert_allclose(head, np.load(bundle.root / "head.npy"), rtol=1e-6)
    assert m["test_accuracy"] >= 0.8 and (REPO / BUNDLE_DIR / "README.md").is_file()


def _bundle(tmp: Path) -> Path:
    root = tmp / "b"
    shutil.copytree(REPO / BUNDLE_DIR, root)
    return root


def test_an_altered_or_unpinned_bundle_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    assert load_bundle(REPO, root).manifest["kind"] == "trinity-trained-router"
    raw = bytearray((root / "vector.npy").read_bytes())
    raw[-3] ^= 0x10
    (root / "vector.npy").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"differ from artifact_pin\.json"):
        load_bundle(REPO, root)
    (root / "artifact_pin.json").unlink()
    with pytest.raises(BundleError, match=r"artifact_pin\.json"):
        load_bundle(REPO, root)
    with pytest.raises(BundleError, match="no trained router bundle"):
        load_bundle(REPO, tmp_path / "nowhere")


def test_a_bundle_of_another_suite_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    m["suite_fingerprint"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(m))
    pin_files = [f for f in json.loads((root / "artifact_pin.json").read_text())["files"]]
    write_pin(build_pin(root, [f["path"] for f in pin_files], repo_id="local/x", revision="v1"),
              root / "artifact_pin.json")
    with pytest.raises(BundleError, match="another task suite"):
        load_bundle(REPO, root)


def test_settings_serve_what_was_trained(tmp_path: Path) -> None:
    bundle = load_bundle(REPO)
    m = bundle.manifest
    s = bundle_settings(load_settings(environ={}), bundle, tmp_path)
    rt, co = s.model_runtime, s.coordinator
    assert rt.checkpoint_dir == str(tmp_path) and rt.head_path == str(bundle.vector)
    assert rt.routing_profile == co.routing_profile == m["routing_profile"] and rt.dtype == m["dtype"] == "float32"
    assert co.route_rule == m["route_rule"] and co.agent_mask == m["agent_mask"]
    assert co.agent_max_tokens == m["agent_max_tokens"] and bundle.max_turns == m["max_turns"]
    assert co.role_pack == m["role_pack"] == "trinity-default/2"  # the pack the episodes injected with
    assert {a.agent_id for a in s.provider_agents.agents} == set(range(7))
    assert s.provider_agents.provider(s.provider_agents.agents[1].provider).kind.value == "tool-arithmetic"


def test_world_questions_come_from_the_test_split_per_family() -> None:
    qs = world_questions(2, seed=0)
    test_ids = {t.id for t in build_suite(0).split("test")}
    assert [t.family for t in qs] == [f for f in FAMILIES for _ in range(2)]
    assert all(t.id in test_ids for t in qs) and len({t.id for t in qs}) == 8
    assert [t.id for t in world_questions(2, seed=0)] == [t.id for t in qs]
    assert [t.id for t in world_questions(2, seed=1)] != [t.id for t in qs]
    assert grade_answer(qs[0], f"so it is {qs[0].answer}") and not grade_answer(qs[0], None)
