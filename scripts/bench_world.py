"""Benchmark the offline world: each agent alone on the task suite, per family, against the oracle.

Every agent of the ``offline-world`` preset (:meth:`ProviderAgentsSettings.offline_world`) answers the same
test tasks as a Worker, called in-process through the provider pool with the messages the role injector
builds (pack ``trinity-default/2``), graded by :func:`crucible.world.tasks.grade`. Printed:

* accuracy per family and overall for each agent alone (what a router that always picks it scores),
* uniform random routing (the mean over the agents, per task),
* the oracle: a task counts when any agent answers it (the ceiling of any router over these agents).

SmolLM2 decodes ~10-20 tokens/s on 2 cores, so ``--limit`` caps the tasks per family (default 40: the whole
test split of the default suite, 147 tasks, ~5-10 minutes); tool agents take milliseconds. Greedy decoding,
so a run is repeatable on the same machine. Run from the repository root::

    python scripts/bench_world.py                      # agents 0-3 on the test split
    python scripts/bench_world.py --limit 10 --agents 0,1,2,3,4 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from actors.provider_agents.pool import AgentPool
from actors.role_injector.builder import build_messages
from actors.role_injector.packs import DEFAULT_PACK
from config.provider_agents import ProviderAgentsSettings
from crucible.world.tasks import FAMILIES, Task, build_suite, grade
from schemas.common import Role
from schemas.coordination import AgentCallIntent
from schemas.roles import RoleInjectRequest


def worker_intent(agent_id: int, task: Task, max_tokens: int, seed: int) -> AgentCallIntent:
    """The Worker intent the coordinator would send for ``task`` (first turn, no notes)."""
    req = RoleInjectRequest(request_id=f"bench-{task.id}", turn=0, agent_id=agent_id, role=Role.WORKER,
                            query=task.question)
    return AgentCallIntent(request_id=req.request_id, turn=0, agent_id=agent_id, role=Role.WORKER,
                           messages=build_messages(DEFAULT_PACK, req), max_tokens=max_tokens, seed=seed)


def pick_tasks(split: str, seed: int, limit: int) -> list[Task]:
    """The first ``limit`` tasks of each family in ``split`` (all when ``limit`` <= 0)."""
    suite = build_suite(seed=seed)
    tasks = suite.split(split)
    out: list[Task] = []
    for family in FAMILIES:
        fam = [t for t in tasks if t.family == family]
        out += fam[:limit] if limit > 0 else fam
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = ProviderAgentsSettings.offline_world()
    agent_ids = [int(a) for a in args.agents.split(",")]
    unknown = [a for a in agent_ids if settings.agent(a) is None]
    if unknown:
        raise SystemExit(f"--agents: {unknown} are not agents of the offline-world preset (0-6)")
    keep = {a.provider for a in settings.agents if a.agent_id in agent_ids}
    settings = ProviderAgentsSettings(providers=[p for p in settings.providers if p.name in keep],
                                      agents=[a for a in settings.agents if a.agent_id in agent_ids],
                                      local=settings.local)
    tasks = pick_tasks(args.split, args.seed, args.limit)
    pool = AgentPool.from_settings(settings)
    t0 = time.perf_counter()
    await pool.start()
    print(f"pool ready in {time.perf_counter() - t0:.1f}s; {len(tasks)} {args.split} tasks "
          f"({', '.join(f'{f} {sum(t.family == f for t in tasks)}' for f in FAMILIES)})", flush=True)
    right: dict[int, dict[str, bool]] = {}
    seconds: dict[int, float] = {}
    replies: dict[int, dict[str, str]] = {}
    try:
        for agent_id in agent_ids:
            right[agent_id], replies[agent_id] = {}, {}
            start = time.perf_counter()
            for i, task in enumerate(tasks):
                receipt = await pool.call(worker_intent(agent_id, task, args.max_tokens, args.seed))
                right[agent_id][task.id] = grade(task, receipt.content)
                replies[agent_id][task.id] = receipt.content
                if args.verbose or (i + 1) % 25 == 0:
                    print(f"  agent {agent_id}: {i + 1}/{len(tasks)}", flush=True)
            seconds[agent_id] = time.perf_counter() - start
    finally:
        await pool.aclose()

    def acc(ok: list[bool]) -> float:
        return 100.0 * sum(ok) / len(ok) if ok else float("nan")

    by_family = {f: [t for t in tasks if t.family == f] for f in FAMILIES}
    rows: list[tuple[str, dict[str, float], float]] = []
    for agent_id in agent_ids:
        name = settings.agent(agent_id).name  # type: ignore[union-attr]
        fam = {f: acc([right[agent_id][t.id] for t in ts]) for f, ts in by_family.items()}
        rows.append((f"{agent_id} {name}", fam, acc([right[agent_id][t.id] for t in tasks])))
    rng_mean = {t.id: sum(right[a][t.id] for a in agent_ids) / len(agent_ids) for t in tasks}
    rows.append(("uniform random routing", {f: 100.0 * sum(rng_mean[t.id] for t in ts) / len(ts)
                                             for f, ts in by_family.items()},
                 100.0 * sum(rng_mean.values()) / len(tasks)))
    oracle = {t.id: any(right[a][t.id] for a in agent_ids) for t in tasks}
    rows.append(("oracle (best agent per task)", {f: acc([oracle[t.id] for t in ts]) for f, ts in by_family.items()},
                 acc(list(oracle.values()))))

    header = f"| agent | {' | '.join(f'{f} (n={len(by_family[f])})' for f in FAMILIES)} | all (n={len(tasks)}) |"
    print()
    print(header)
    print("|" + "---|" * (len(FAMILIES) + 2))
    for name, fam, total in rows:
        print(f"| {name} | {' | '.join(f'{fam[f]:.1f}' for f in FAMILIES)} | {total:.1f} |")
    best_single = max(total for _, _, total in rows[:len(agent_ids)])
    print(f"\nbest single agent {best_single:.1f}%, oracle {rows[-1][2]:.1f}% "
          f"(+{rows[-1][2] - best_single:.1f} points); seconds per call: "
          + ", ".join(f"agent {a} {seconds[a] / max(len(tasks), 1):.3f}" for a in agent_ids))
    if args.show_wrong:
        rnd = random.Random(0)
        for agent_id in agent_ids:
            wrong = [t for t in tasks if not right[agent_id][t.id]]
            for t in rnd.sample(wrong, min(args.show_wrong, len(wrong))):
                print(f"  agent {agent_id} wrong: {t.question!r} expected {t.answer!r} got "
                      f"{replies[agent_id][t.id][:100]!r}")
    return {"split": args.split, "seed": args.seed, "limit": args.limit, "tasks": len(tasks),
            "rows": [{"name": n, "families": f, "all": a} for n, f, a in rows],
            "seconds_per_call": {str(a): seconds[a] / max(len(tasks), 1) for a in agent_ids},
            "right": {str(a): right[a] for a in agent_ids}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="0,1,2,3", help="agent ids of the offline-world preset (default 0,1,2,3)")
    ap.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ap.add_argument("--seed", type=int, default=0, help="suite seed (default 0)")
    ap.add_argument("--limit", type=int, default=40, help="tasks per family, 0 = all (default 40)")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion cap per call (default 64)")
    ap.add_argument("--show-wrong", type=int, default=0, help="print this many wrong replies per agent")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    result = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
