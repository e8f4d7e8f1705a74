"""``run.py evaluator``: score training candidates taken from the bus (:mod:`crucible.training.bus_eval`).

Any number of evaluators, on any hosts that reach the same NATS, share the work queue ``TRINITY_TRAIN_JOBS``
(durable consumer ``evaluators``); each builds the episode runner a job's run config asks for (backbone,
agents, layout: a ``dir`` backbone must exist at the same path on this host) and keeps it warm for the next
jobs. SIGINT/SIGTERM stop it between jobs (a job in progress is handed back).

Examples::

    run.py evaluator --nats nats://trainer-host:4222
    run.py evaluator --max-jobs 10          # stop after ten jobs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

NAME = "evaluator"
HELP = "serve `run.py train` episode jobs from the bus (any number, any host)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``evaluator``."""
    p.add_argument("--name", help="evaluator name in replies and logs (default: evaluator-<random>)")
    p.add_argument("--max-jobs", type=int, metavar="N", help="stop after N jobs (default: serve until stopped)")
    p.add_argument("--parent", type=int, metavar="PID",
                   help="stop when process PID is gone (what `run.py train --evaluators` passes its children)")


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Serve jobs until a signal (or ``--max-jobs``); print a one-line JSON summary."""
    from bus.connection import connect
    from crucible.training.bus_eval import EvaluatorWorker, default_builder
    from ops.commands import UsageError

    if args.max_jobs is not None and args.max_jobs < 1:
        raise UsageError("--max-jobs must be >= 1")
    nc = await connect(settings.nats, name=f"trinity-{args.name or 'evaluator'}")
    worker = EvaluatorWorker(nc, name=args.name, builder=default_builder(settings.provider_agents))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    serving = asyncio.create_task(worker.run(stop, max_jobs=args.max_jobs))
    watching = asyncio.create_task(_watch_parent(args.parent, stop)) if args.parent else None
    try:
        await asyncio.wait([serving, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():  # a signal: let the current job finish, or hand it back after a short grace
            try:
                await asyncio.wait_for(asyncio.shield(serving), timeout=5.0)
            except TimeoutError:
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        serving.result()
    finally:
        if watching is not None:
            watching.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await nc.drain()
    print(json.dumps({"evaluator": worker.name, "jobs": worker.jobs_done, "episodes": worker.episodes_done,
                      "busy_s": round(worker.busy_s, 3)}))
    return 0


async def _watch_parent(pid: int, stop: asyncio.Event, period_s: float = 2.0) -> None:
    """Set ``stop`` once process ``pid`` no longer exists (a trainer killed with SIGKILL leaves no orphans)."""
    import os

    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass  # alive, another user's
        await asyncio.sleep(period_s)
