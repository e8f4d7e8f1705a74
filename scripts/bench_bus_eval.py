"""Evaluations per second of ``run.py train``: in process vs 1 vs 2 evaluator processes over JetStream.

The same run (same flags and seed) three times in one invocation, against one nats-server this script starts;
each prints its history, and the rows below are read from it. ``evals/s`` = episodes scored in the
generations / the generations' seconds (the trainer's own clock). An in-process run computes the first-turn
backbone states of every split before its first generation (not in ``gen s``); evaluators compute the states
their jobs need inside the jobs (and load the backbone in their first), so ``gen 1/s`` shows the cold start
and ``last/s`` the warm rate; ``wall`` is the whole command, process starts included. The three
results must be identical (candidates, fitness and accuracy per generation): the script checks it.

Example::

    python scripts/bench_bus_eval.py --backbone tiny --generations 3 --popsize 8 --limit 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bus.embedded import NatsServerProcess  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", choices=("tiny", "smollm2", "synthetic"))
    p.add_argument("--agents", default="offline-world-tools")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--popsize", type=int, default=8)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--job-tasks", type=int, default=16)
    p.add_argument("--modes", default="0,1,2", help="comma-separated: 0 = in process, N = N evaluator processes")
    args = p.parse_args()
    common = ["--backbone", args.backbone, "--agents", args.agents, "--generations", str(args.generations),
              "--popsize", str(args.popsize), "--limit", str(args.limit), "--batch", str(args.batch),
              "--max-turns", str(args.max_turns), "--no-progress"]
    srv = NatsServerProcess.start(name="bench-bus-eval")
    rows = []
    histories = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in (int(m) for m in args.modes.split(",")):
                run_dir = Path(tmp) / f"run-{mode}"
                cmd = [sys.executable, str(ROOT / "run.py"), "train", "--run-dir", str(run_dir), *common]
                if mode:
                    cmd += ["--evaluators", str(mode), "--job-tasks", str(args.job_tasks), "--nats", srv.url]
                start = time.perf_counter()
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                history = json.loads((run_dir / "history.json").read_text())
                histories.append(history)
                evals = sum(h["evaluations"] for h in history)
                secs = sum(h["seconds"] for h in history)
                last = history[-1]
                rows.append((mode, evals, secs, wall, history[0]["evals_per_s"], last["evals_per_s"]))
    finally:
        srv.close()
    keys = ("candidates_sha256", "best_fitness", "mean_fitness", "valid_accuracy", "test_accuracy")
    same = all([[h[k] for h in hist] for k in keys] == [[h[k] for h in histories[0]] for k in keys]
               for hist in histories)
    base = rows[0][1] / rows[0][2]
    print(f"{'evaluation':<24} {'episodes':>9} {'gen s':>8} {'evals/s':>8} {'x first':>8} {'gen 1/s':>8} "
          f"{'last/s':>8} {'wall s':>8}")
    for mode, evals, secs, wall, first, last in rows:
        name = "in process" if mode == 0 else f"{mode} evaluator process{'es' if mode > 1 else ''}"
        print(f"{name:<24} {evals:>9} {secs:>8.1f} {evals / secs:>8.1f} {evals / secs / base:>8.2f} {first:>8.1f} "
              f"{last:>8.1f} {wall:>8.1f}")
    print(f"identical results across modes: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
