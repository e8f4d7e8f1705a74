"""The optimizer loop: learning on a world where a perfect head exists, identical resume, outputs, publishing."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from actors.model_runtime.head import RoutingHead
from crucible.training.trainer import (
    CHECKPOINT,
    TrainConfig,
    Trainer,
    TrainError,
    load_state,
)
from crucible.world.tasks import build_suite
from schemas.sakana import HeadSpec
from tests.training.helpers import KeywordFeatures, tool_runner


def _config(**kw: object) -> TrainConfig:
    base = {"layout": {"name": "head-only", "n_agents": 7, "hidden": 6, "svf_blocks": []}, "generations": 4,
            "popsize": 8, "sigma0": 0.5, "seed": 3, "limit": 4, "batch": 8, "agents": "offline-world-tools"}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


async def test_resumed_run_asks_the_same_candidates_as_an_uninterrupted_one(tmp_path: Path) -> None:
    suite = build_suite(0)
    runner, pool = await tool_runner()
    try:
        whole = Trainer(tmp_path / "whole", _config(), runner, suite, progress=False)
        await whole.run()
        first = Trainer(tmp_path / "split", _config(), runner, suite, progress=False)
        await first.run(stop_after=2)  # then the process "dies": only the checkpoint survives
        assert load_state(tmp_path / "split").generation == 2
        resumed = Trainer.resume(tmp_path / "split", runner, suite, progress=False)
        await resumed.run()
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    a, b = whole.state, resumed.state
    assert [h["candidates_sha256"] for h in a.history] == [h["candidates_sha256"] for h in b.history]
    assert [h["valid_accuracy"] for h in a.history] == [h["valid_accuracy"] for h in b.history]
    assert b.generation == 4 and len({h["candidates_sha256"] for h in b.history}) == 4
    np.testing.assert_array_equal(a.best_x, b.best_x)  # type: ignore[arg-type]
    for name in (CHECKPOINT, "history.json", "progress.png"):
        assert (tmp_path / "split" / name).stat().st_size > 0


async def test_training_learns_to_route_families_and_exports_a_loadable_head(tmp_path: Path) -> None:
    suite = build_suite(0)
    runner, pool = await tool_runner(max_turns=2)
    published: list[dict[str, object]] = []

    async def publish(record: dict[str, object]) -> None:
        published.append(record)

    cfg = _config(generations=12, popsize=12, sigma0=1.0, limit=6, batch=0, max_turns=2,
                  weights={"diversity": 0.15, "turn": 0.1, "max_turns": 2})
    try:
        zero = await runner.evaluate(np.zeros(60), suite.split("valid"))
        trainer = Trainer(tmp_path, cfg, runner, suite, publish=publish, progress=False)
        await trainer.run()
        manifest = await trainer.finish()
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    # tools answer arithmetic, geography and text (3 of 4 families); general is nobody's here
    assert manifest["valid_accuracy"] >= 0.6 > zero.accuracy + 0.2
    assert manifest["test_accuracy"] >= 0.5
    assert [r["generation"] for r in published] == list(range(1, 13))
    head = RoutingHead.load(tmp_path / "head.npy", HeadSpec(rows=10, cols=6))
    assert tuple(head.weight.shape) == (10, 6)
    # the exported head is what was evaluated: the same test accuracy with no preconditioning scale
    assert trainer.state.scale is not None and not np.allclose(trainer.state.scale, 1.0)
    runner2, pool2 = await tool_runner(max_turns=2)
    try:
        again = await runner2.evaluate(head.weight.double().numpy().ravel(), trainer.test)
    finally:
        await pool2.aclose()  # type: ignore[attr-defined]
    assert again.accuracy == manifest["test_accuracy"]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["suite_fingerprint"] == suite.fingerprint and on_disk["layout"]["name"] == "head-only"
    assert on_disk["generations"] == 12 and on_disk["seed"] == 3


async def test_resume_refuses_another_suite_and_a_missing_checkpoint(tmp_path: Path) -> None:
    runner, pool = await tool_runner()
    try:
        with pytest.raises(TrainError, match="no checkpoint"):
            Trainer.resume(tmp_path, runner, build_suite(0), progress=False)
        t = Trainer(tmp_path, _config(generations=1), runner, build_suite(0), progress=False)
        await t.run()
        with pytest.raises(TrainError, match="task suite differs"):
            Trainer.resume(tmp_path, runner, build_suite(1), progress=False)
        with pytest.raises(TrainError, match="popsize"):
            Trainer(tmp_path / "x", TrainConfig(**{**asdict(_config()), "popsize": 1}), runner, build_suite(0))
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    assert KeywordFeatures.hidden == 6


async def test_projected_search_exports_a_low_rank_head_and_resumes_identically(tmp_path: Path) -> None:
    suite = build_suite(0)
    runner, pool = await tool_runner()
    try:
        whole = Trainer(tmp_path / "a", _config(project=2, generations=3), runner, suite, progress=False)
        await whole.run()
        part = Trainer(tmp_path / "b", _config(project=2, generations=3), runner, suite, progress=False)
        await part.run(stop_after=1)
        resumed = Trainer.resume(tmp_path / "b", runner, suite, progress=False)
        await resumed.run()
        await resumed.finish()
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    assert whole.state.optimizer.dim == 20  # 10 rows x rank 2
    assert [h["candidates_sha256"] for h in whole.state.history] == \
        [h["candidates_sha256"] for h in resumed.state.history]
    head = np.load(tmp_path / "b" / "head.npy")
    assert head.shape == (10, 6) and np.linalg.matrix_rank(head) <= 2


async def test_pca_basis_learns_resumes_identically_and_exports_a_pinned_sakana_vector(tmp_path: Path) -> None:
    from crucible.registry.pins import load_pin
    from crucible.registry.verify import verify_directory
    from crucible.router_vector import load_router_vector

    suite = build_suite(0)
    runner, pool = await tool_runner()
    # the tiny backbone's config sizes the Sakana layout; the keyword features are 6 wide, so use a 6-wide stand-in
    backbone = {"kind": "dir", "path": str(tmp_path / "cfg")}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"hidden_size": 6, "num_hidden_layers": 3,
                                                                "num_attention_heads": 2, "intermediate_size": 12,
                                                                "vocab_size": 32}))
    cfg = _config(project=4, basis="pca", generations=6, limit=10, batch=0, export_layout="sakana",
                  backbone=backbone)
    try:
        whole = Trainer(tmp_path / "a", cfg, runner, suite, progress=False)
        await whole.run()
        part = Trainer(tmp_path / "b", cfg, runner, suite, progress=False)
        await part.run(stop_after=2)
        resumed = Trainer.resume(tmp_path / "b", runner, suite, progress=False)
        await resumed.run()
        manifest = await resumed.finish()
    finally:
        await pool.aclose()  # type: ignore[attr-defined]
    p = whole.state.projection
    assert p is not None and p.shape == (4, 6)
    np.testing.assert_array_equal(p, resumed.state.projection)  # type: ignore[arg-type]
    assert [h["candidates_sha256"] for h in whole.state.history] == \
        [h["candidates_sha256"] for h in resumed.state.history]
    assert manifest["valid_accuracy"] >= 0.7  # keyword features separate the tool families: the search finds it
    run = tmp_path / "b"
    head = np.load(run / "head.npy")
    vec = load_router_vector(run / "vector.npy")
    assert manifest["exported_layout"]["name"] == "sakana" and vec.shape == (9 * 6 + 10 * 6,)
    assert not vec[:54].any()  # zero SVF offsets: the backbone as trained
    np.testing.assert_allclose(vec[54:].reshape(10, 6), head, rtol=1e-6)
    spec = HeadSpec(cols=6)
    np.testing.assert_allclose(RoutingHead.load(run / "vector.npy", spec).weight.numpy(), head, rtol=1e-6)
    pin = load_pin(run / "artifact_pin.json")
    assert verify_directory(run, pin, ignore=("artifact_pin.json",)).ok
    assert {f.path for f in pin.files} == {"manifest.json", "head.npy", "vector.npy", "vector.safetensors"}
    raw = bytearray((run / "vector.npy").read_bytes())
    raw[-1] ^= 0x40  # one value of the head altered
    (run / "vector.npy").write_bytes(bytes(raw))
    assert not verify_directory(run, pin, ignore=("artifact_pin.json",)).ok
