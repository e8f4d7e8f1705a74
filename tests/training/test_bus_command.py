"""``run.py train --evaluators 2``: real evaluator processes over JetStream give the in-process result."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bus.embedded import NatsServerProcess
from tests.training.test_command import ROOT, _train

ARGS = ["--backbone", "tiny", "--agents", "offline-world-tools", "--generations", "2", "--popsize", "4",
        "--limit", "3", "--batch", "6", "--no-progress"]


async def test_train_with_two_evaluator_processes_matches_in_process(
        tmp_path: Path, fresh_nats_server: NatsServerProcess) -> None:
    code, out, err = await _train("--run-dir", str(tmp_path / "local"), *ARGS)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = await _train("--run-dir", str(tmp_path / "bus"), *ARGS, "--evaluators", "2", "--job-tasks", "4",
                                  "--nats", fresh_nats_server.url)
    assert code == 0, err
    remote = json.loads(out)
    for key in ("valid_accuracy", "test_accuracy", "best_generation", "test_accuracy_by_family"):
        assert remote[key] == local[key], key
    h_local = json.loads((tmp_path / "local" / "history.json").read_text())
    h_bus = json.loads((tmp_path / "bus" / "history.json").read_text())
    for key in ("candidates_sha256", "best_fitness", "mean_fitness", "valid_accuracy", "valid_fitness"):
        assert [h[key] for h in h_bus] == [h[key] for h in h_local], key
    assert (tmp_path / "bus" / "head.npy").read_bytes() == (tmp_path / "local" / "head.npy").read_bytes()
    memo = remote["memo"]  # the bus counters: both local evaluator processes answered
    assert memo["replies"] == memo["jobs"] > 0 and memo["evaluators"] == ["local-0", "local-1"]


async def test_evaluator_flags_are_checked() -> None:
    code, _, err = await _train("--run-dir", "/tmp/never-made", "--backbone", "tiny", "--agents",
                                "offline-world-tools", "--evaluators", "-1")
    assert code == 2 and "--evaluators >= 0" in err


async def test_an_evaluator_stops_when_its_parent_is_gone(fresh_nats_server: NatsServerProcess) -> None:
    parent = await asyncio.create_subprocess_exec("sleep", "0.5")
    proc = await asyncio.create_subprocess_exec(sys.executable, "run.py", "evaluator", "--nats", fresh_nats_server.url,
                                                "--parent", str(parent.pid), "--name", "orphan", cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await parent.wait()
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)  # no orphan serving forever
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"evaluator": "orphan", "jobs": 0, "episodes": 0, "busy_s": 0.0}
