"""Training over the bus: episodes as JetStream jobs, evaluators that die, refusals, no evaluator at all.

Evaluators here run in the test's event loop (``EvaluatorWorker`` with the keyword features, exact and fast);
``test_bus_command.py`` runs ``run.py train --evaluators 2`` with real evaluator processes.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest

from bus import subjects
from bus.embedded import NatsServerProcess
from crucible.training.bus_eval import BuiltRunner, BusEvalError, BusEvaluator, EvaluatorWorker
from crucible.training.trainer import TrainConfig, Trainer
from crucible.world.tasks import build_suite
from tests.training.helpers import tool_runner


def _config(**kw: object) -> TrainConfig:
    base = {"layout": {"name": "head-only", "n_agents": 7, "hidden": 6, "svf_blocks": []}, "generations": 3,
            "popsize": 6, "sigma0": 0.5, "seed": 5, "limit": 4, "batch": 8, "agents": "offline-world-tools"}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


async def _keyword_builder(config: dict[str, Any]) -> BuiltRunner:
    runner, pool = await tool_runner(max_turns=int(config["max_turns"]))
    return BuiltRunner(runner, pool.aclose)  # type: ignore[attr-defined]


async def test_bus_training_equals_in_process_and_survives_a_dead_evaluator(
        tmp_path: Path, fresh_nats_server: NatsServerProcess) -> None:
    suite = build_suite(0)
    cfg = _config()
    runner, pool = await tool_runner()
    try:
        local = Trainer(tmp_path / "local", cfg, runner, suite, progress=False)
        await local.run()
        local_manifest = await local.finish()
    finally:
        await pool.aclose()  # type: ignore[attr-defined]

    nc = await nats.connect(fresh_nats_server.url)
    zombie_nc = await nats.connect(fresh_nats_server.url)
    runner2, pool2 = await tool_runner()
    bus = BusEvaluator(nc, "bus-a", asdict(cfg), suite.fingerprint, job_tasks=5, ack_wait_s=1.0)
    stop = asyncio.Event()
    workers = [EvaluatorWorker(nc, name=f"ev{i}", builder=_keyword_builder) for i in range(2)]
    try:
        await bus.start()
        remote = Trainer(tmp_path / "bus", cfg, runner2, suite, progress=False, evaluator=bus)
        training = asyncio.create_task(remote.run())
        # an evaluator that takes two jobs of the first generation and dies without acknowledging them
        zombie = await zombie_nc.jetstream().pull_subscribe_bind(durable=subjects.TRAIN_EVALUATORS,
                                                                 stream=subjects.TRAIN_JOBS_STREAM)
        taken: list[Any] = []
        while len(taken) < 2:
            taken += await zombie.fetch(batch=2 - len(taken), timeout=30)
        await zombie_nc.close()
        serving = [asyncio.create_task(w.run(stop)) for w in workers]
        await training
        remote_manifest = await remote.finish()
        stop.set()
        await asyncio.gather(*serving)
    finally:
        stop.set()
        await bus.close()
        await nc.close()
        await pool2.aclose()  # type: ignore[attr-defined]
    assert len(taken) == 2
    a, b = local.state, remote.state
    assert [h["candidates_sha256"] for h in a.history] == [h["candidates_sha256"] for h in b.history]
    for key in ("best_fitness", "mean_fitness", "valid_accuracy", "valid_fitness", "test_accuracy"):
        assert [h[key] for h in a.history] == [h[key] for h in b.history], key
    np.testing.assert_array_equal(a.best_x, b.best_x)  # type: ignore[arg-type]
    assert remote_manifest["test_accuracy"] == local_manifest["test_accuracy"]
    assert remote_manifest["valid_accuracy"] == local_manifest["valid_accuracy"]
    # generation jobs: 6 candidates x 2 chunks of the 8-task batch, + valid and test of the mean (4 x 4 tasks per
    # split: 4 chunks each), per generation; then the best vector on test and valid
    assert bus.stats.jobs == 3 * (6 * 2 + 4 + 4) + 4 + 4
    assert bus.stats.replies == bus.stats.jobs
    assert bus.stats.redelivered >= 2  # the zombie's jobs came back to live evaluators
    assert bus.stats.evaluators == {"ev0", "ev1"}
    assert sum(w.jobs_done for w in workers) >= bus.stats.jobs


async def test_an_evaluator_refuses_a_job_from_another_suite(fresh_nats_server: NatsServerProcess) -> None:
    suite = build_suite(0)
    nc = await nats.connect(fresh_nats_server.url)
    bus = BusEvaluator(nc, "bus-b", asdict(_config()), "0" * 64, job_tasks=5, ack_wait_s=1.0)
    stop = asyncio.Event()
    worker = EvaluatorWorker(nc, name="ev", builder=_keyword_builder)
    await bus.start()
    serving = asyncio.create_task(worker.run(stop))
    try:
        with pytest.raises(BusEvalError, match=r"refused job .*fingerprint"):
            await bus.evaluate_many([np.zeros(60)], suite.split("valid")[:3])
    finally:
        stop.set()
        await serving
        await bus.close()
        await nc.close()
    info_nc = await nats.connect(fresh_nats_server.url)
    try:  # the refused job was terminated, not left to be redelivered forever
        info = await info_nc.jetstream().consumer_info(subjects.TRAIN_JOBS_STREAM, subjects.TRAIN_EVALUATORS)
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await info_nc.close()


async def test_no_evaluator_stops_with_an_actionable_error(fresh_nats_server: NatsServerProcess) -> None:
    suite = build_suite(0)
    nc = await nats.connect(fresh_nats_server.url)
    bus = BusEvaluator(nc, "bus-c", asdict(_config()), suite.fingerprint, stall_timeout_s=0.5)
    try:
        await bus.start()
        with pytest.raises(BusEvalError, match=r"no evaluator reply .*0/1 jobs.*run.py evaluator"):
            await bus.evaluate_many([np.zeros(60)], suite.split("valid")[:3])
        # a restarted trainer drops the jobs nobody took: they would answer a subject nobody reads
        again = BusEvaluator(nc, "bus-c", asdict(_config()), suite.fingerprint)
        await again.start()
        info = await nc.jetstream().stream_info(subjects.TRAIN_JOBS_STREAM)
        assert info.state.messages == 0
        await again.close()
    finally:
        await bus.close()
        await nc.close()


async def test_a_crashing_evaluator_hands_the_job_back_and_keeps_serving(
        fresh_nats_server: NatsServerProcess) -> None:
    suite = build_suite(0)
    crashes: list[int] = []

    async def flaky(config: dict[str, Any]) -> BuiltRunner:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("backbone weights unreadable (simulated)")
        return await _keyword_builder(config)

    nc = await nats.connect(fresh_nats_server.url)
    bus = BusEvaluator(nc, "bus-d", asdict(_config()), suite.fingerprint, job_tasks=5, ack_wait_s=5.0)
    await bus.start()
    stop = asyncio.Event()
    worker = EvaluatorWorker(nc, name="ev", builder=flaky)
    serving = asyncio.create_task(worker.run(stop))
    try:
        [ev] = await bus.evaluate_many([np.zeros(60)], suite.split("valid")[:3])
    finally:
        stop.set()
        await serving
        await bus.close()
        await nc.close()
    assert crashes == [1] and len(ev.episodes) == 3
    assert bus.stats.redelivered == 1 and worker.jobs_done == 1  # the second delivery, on the same evaluator
