"""Benchmark ``run.py train``: train a router, then compare it on the held-out test split with the baselines.

Printed (same suite, same agents, same run): the trained router (best-on-valid vector), each single agent alone
as a one-turn Worker (what a router that always picks it scores, as ``scripts/bench_world.py``), uniform random
routing (the mean over the agents), the untrained head (the runtime's seeded random head), and the oracle (a
task counts when any agent answers it). Also the wall time to train and evaluations (episodes) per second.

    python scripts/bench_train.py --agents offline-world-tools --generations 20      # tools only, minutes
    python scripts/bench_train.py --agents offline-world --limit 10 --max-turns 2    # with SmolLM2 (slow)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

import numpy as np

from actors.role_injector.builder import build_messages
from actors.role_injector.packs import DEFAULT_PACK
from crucible.training.setup import build, find_smollm2, layout_for
from crucible.training.trainer import TrainConfig, Trainer, split_tasks
from crucible.world.tasks import FAMILIES, build_suite, grade
from schemas.common import Role
from schemas.coordination import AgentCallIntent
from schemas.roles import RoleInjectRequest


async def run(a: argparse.Namespace) -> dict[str, object]:
    backbone = {"kind": "dir", "path": str(find_smollm2()), "name": "smollm2"} if a.backbone == "smollm2" \
        else {"kind": a.backbone}
    layout = layout_for("head-only", backbone, a.routing_profile)
    cfg = TrainConfig(layout=layout.to_dict(), generations=a.generations, popsize=a.popsize, seed=a.seed,
                      batch=a.batch, limit=a.limit, max_turns=a.max_turns, agents=a.agents, backbone=backbone,
                      agent_mask=[int(x) for x in a.agent_mask.split(",")] if a.agent_mask else None,
                      weights={"diversity": 0.15, "turn": 0.1, "max_turns": a.max_turns},
                      agent_max_tokens=a.agent_max_tokens, project=a.project,
                      basis=a.basis, sigma0=a.sigma0, routing_profile=a.routing_profile, route_rule="argmax",
                      export_layout=a.export_layout, train_limit=a.train_limit,
                      test_each_generation=not a.no_test_each_generation)
    built = await build(cfg)
    runner = built.runner
    suite = build_suite(0)
    test = split_tasks(suite, "test", a.limit)
    run_dir = Path(a.run_dir or tempfile.mkdtemp(prefix="bench-train-"))
    try:
        trainer = Trainer(run_dir, cfg, runner, suite, progress=not a.quiet)
        t0 = time.perf_counter()
        state = await trainer.run()
        wall = time.perf_counter() - t0
        manifest = await trainer.finish()
        mask = runner.policy.agent_mask or ()
        right: dict[int, list[bool]] = {}
        for agent in mask:
            right[agent] = []
            for t in test:
                req = RoleInjectRequest(request_id=t.id, turn=0, agent_id=agent, role=Role.WORKER, query=t.question)
                intent = AgentCallIntent(request_id=t.id, turn=0, agent_id=agent, role=Role.WORKER,
                                         messages=build_messages(DEFAULT_PACK, req), max_tokens=a.agent_max_tokens)
                right[agent].append(grade(t, (await runner.replies(intent)).content))
        w = built.engine.head.weight.double().cpu().numpy()  # the runtime's seeded random head
        if runner.scale is not None:  # candidates encode W / scale (see EpisodeRunner.feature_scale)
            w = w / runner.scale[None, :]
        untrained = np.concatenate([np.zeros(layout.svf_size), w.ravel()])
        untrained_acc = (await runner.evaluate(untrained, test)).accuracy
    finally:
        await built.close()
    fam = {f: [i for i, t in enumerate(test) if t.family == f] for f in FAMILIES}
    rows = {f"agent {k} alone": 100 * float(np.mean(v)) for k, v in right.items()}
    rows["uniform random routing"] = 100 * float(np.mean([np.mean(v) for v in right.values()]))
    rows["untrained head"] = 100 * untrained_acc
    oracle = [any(right[k][i] for k in right) for i in range(len(test))]
    rows["oracle"] = 100 * float(np.mean(oracle))
    rows["trained router"] = 100 * manifest["test_accuracy"]
    best_single = max(v for k, v in rows.items() if k.startswith("agent"))
    evals = state.evaluations
    print(f"\n| router | test accuracy % (n={len(test)}) |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\ntrained/oracle {rows['trained router'] / max(rows['oracle'], 1e-9):.3f}; trained - best single "
          f"{rows['trained router'] - best_single:+.1f} points; per family "
          + ", ".join(f"{f} {100 * manifest['test_accuracy_by_family'].get(f, float('nan')):.0f}" for f in fam))
    print(f"train wall {wall:.1f}s for {state.generation} generations x {a.popsize}; {evals} episodes, "
          f"{evals / wall:.1f} episodes/s; memo {json.dumps(state.memo)}; run dir {run_dir}")
    return {"rows": rows, "wall_s": wall, "episodes": evals, "episodes_per_s": evals / wall,
            "manifest": manifest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2", choices=("smollm2", "tiny", "synthetic"))
    ap.add_argument("--agents", default="offline-world-tools", choices=("offline-world", "offline-world-tools"))
    ap.add_argument("--agent-mask", help="comma-separated agent ids the router may pick")
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--popsize", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="tasks per family and split (0: all)")
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--agent-max-tokens", type=int, default=64)
    ap.add_argument("--project", type=int, default=0, help="search a random rank-k head W = Z P (0: the full head)")
    ap.add_argument("--basis", default="random", choices=("random", "pca"), help="basis of --project")
    ap.add_argument("--sigma0", type=float, default=0.03)
    ap.add_argument("--routing-profile", default="elixir-port", choices=("elixir-port", "sakana"))
    ap.add_argument("--export-layout", default="", choices=("", "head-only", "sakana"))
    ap.add_argument("--train-limit", type=int, default=0, help="train tasks per family (0: --limit)")
    ap.add_argument("--no-test-each-generation", action="store_true",
                    help="score the test split only at the end (fewer calls to slow agents)")
    ap.add_argument("--run-dir")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    out = asyncio.run(run(a))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
