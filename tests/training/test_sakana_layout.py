"""The ``sakana`` layout (nine SVF blocks on layer L-2 + the head) trained on the tiny checkpoint: candidates are
engine adapters, the export is a TRINITY vector, and a fresh runtime that loads the exported file as an adapter
makes the same decisions as the trainer did."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from crucible.training.episodes import EpisodeRunner
from crucible.training.fitness import FitnessWeights
from crucible.training.setup import agent_pool, build, layout_for, load_engine
from crucible.training.trainer import TrainConfig, Trainer
from crucible.world.tasks import build_suite
from schemas.routing import RouteLogits, RouteRequest


class FileAdapterRouter:
    """Routes every candidate through one adapter file loaded on a fresh engine (the runtime's loading path)."""

    def __init__(self, engine: Any, path: Path) -> None:
        self.engine = engine
        self.token = engine.load_adapter(path).token

    def __call__(self, vector: object) -> Any:
        @contextlib.contextmanager
        def ctx() -> Iterator[Any]:
            def route(req: RouteRequest) -> RouteLogits:
                out: RouteLogits = self.engine.route(msgspec.structs.replace(req, adapter=self.token))
                return out
            yield route
        return ctx()


async def test_sakana_layout_trains_exports_and_loads_as_a_runtime_adapter(tmp_path: Path) -> None:
    backbone = {"kind": "tiny"}
    layout = layout_for("sakana", backbone, "elixir-port")
    assert layout.svf_blocks[1][0] == "model.layers.0.self_attn.q_proj.weight"  # tiny: 2 layers, L-2 = 0
    # one offset per singular value: tiny's k/v projections are 32 x 64 (2 KV heads of 16), so 32 each
    assert [k for _, k in layout.svf_blocks] == [64, 64, 32, 32, 64, 64, 64, 64, 64]
    assert layout.size == 512 + 10 * 64
    cfg = TrainConfig(layout=layout.to_dict(), generations=2, popsize=4, sigma0=0.05, seed=1, limit=2,
                      max_turns=2, weights={"diversity": 0.15, "turn": 0.1, "max_turns": 2}, backbone=backbone,
                      agents="offline-world-tools")
    suite = build_suite(0)
    built = await build(cfg)
    try:
        trainer = Trainer(tmp_path, cfg, built.runner, suite, progress=False)
        await trainer.run()
        manifest = await trainer.finish()
        ours = await built.runner.evaluate(trainer.state.best_x, trainer.test)  # type: ignore[arg-type]
    finally:
        await built.close()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["generation"] for h in history] == [1, 2] and history[0]["candidates_sha256"] != \
        history[1]["candidates_sha256"]
    assert manifest["layout"]["name"] == "sakana" and manifest["files"] == {
        "vector_npy": "vector.npy", "vector_safetensors": "vector.safetensors"}
    vec = np.load(tmp_path / "vector.npy")
    assert vec.shape == (layout.size,) and np.any(vec[:layout.svf_size] != 0)  # the offsets were searched too
    np.testing.assert_array_equal(vec, trainer.state.best_x)  # type: ignore[arg-type]

    # a fresh runtime engine loads the exported safetensors file as an adapter and routes the test split
    engine = load_engine(backbone, "elixir-port")
    pool, deterministic, served = agent_pool("offline-world-tools")
    await pool.start()
    try:
        runtime = EpisodeRunner(layout, pool.call, deterministic=deterministic,
                                adapter_router=FileAdapterRouter(engine, tmp_path / "vector.safetensors"),
                                max_turns=2, agent_mask=served,
                                weights=FitnessWeights(max_turns=2))
        theirs = await runtime.evaluate(vec, trainer.test)
    finally:
        await pool.aclose()
    assert len(ours.episodes) == len(theirs.episodes) == len(trainer.test) > 0
    assert [(e.agents, e.roles, e.correct, e.stop_reason) for e in theirs.episodes] == \
        [(e.agents, e.roles, e.correct, e.stop_reason) for e in ours.episodes]
    assert theirs.accuracy == manifest["test_accuracy"]
