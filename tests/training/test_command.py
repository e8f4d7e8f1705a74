"""``run.py train`` end to end: tiny backbone, tool agents, stop after a generation, resume, export, publish."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects
from bus.embedded import NatsServerProcess

ROOT = Path(__file__).resolve().parents[2]


async def _train(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "run.py", "train", *args, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=600)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_train_stop_resume_export_and_publish(tmp_path: Path, nc: Client,
                                                    nats_server: NatsServerProcess) -> None:
    run_dir = tmp_path / "run-a"
    got: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        got.append(json.loads(msg.data))

    sub = await nc.subscribe(subjects.train_generation("run-a"), cb=collect)
    await nc.flush()
    common = ["--no-progress", "--nats", nats_server.url, "--publish"]
    code, out, err = await _train("--run-dir", str(run_dir), "--backbone", "tiny", "--agents",
                                  "offline-world-tools", "--generations", "2", "--popsize", "4", "--limit", "3",
                                  "--stop-after", "1", *common)
    assert code == 0, err
    assert json.loads(out)["generation"] == 1 and (run_dir / "checkpoint.pkl").is_file()
    code, out, err = await _train("--run-dir", str(run_dir), *common)
    assert code == 2 and "--resume" in err  # a second new run in the same folder is refused
    code, out, err = await _train("--resume", str(run_dir), *common)
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["generations"] == 2 and manifest["layout"] == {"name": "head-only", "n_agents": 7,
                                                                   "hidden": 64, "size": 640, "svf_blocks": []}
    assert manifest["backbone"] == {"kind": "tiny"} and 0.0 <= manifest["test_accuracy"] <= 1.0
    assert (run_dir / "head.npy").is_file() and (run_dir / "progress.png").stat().st_size > 1000
    history = json.loads((run_dir / "history.json").read_text())
    await nc.flush()
    for _ in range(50):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.1)
    await sub.unsubscribe()
    assert [g["generation"] for g in got] == [1, 2]
    assert [g["candidates_sha256"] for g in got] == [h["candidates_sha256"] for h in history]


async def test_train_flags_are_checked(tmp_path: Path) -> None:
    code, _, err = await _train("--backbone", "tiny")
    assert code == 2 and "exactly one of --run-dir" in err
    code, _, err = await _train("--resume", str(tmp_path))
    assert code == 1 and "no checkpoint" in err
