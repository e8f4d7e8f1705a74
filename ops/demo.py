"""The main job: a single node with every actor, a few questions, each turn printed, then the answers.

What runs (all on this machine, no network beyond what installed the packages):

* NATS: the configured servers when one answers, else an embedded ``nats-server`` (loopback only);
* the model runtime: a Qwen3-0.6B-shaped backbone with **synthetic** random weights (built once, cached),
  routing with the real TRINITY head when a local copy of the trained vector is found (the anchors folder
  beside the checkout holds one), else a seeded random head — both labelled in the output;
* the provider agents: all 7 agent ids served by the local SmolLM2-135M-Instruct model, unless provider
  keys are configured (``TRINITY_AGENTS_PRESET=paper`` with ``OPENAI_API_KEY`` ...), then the real ones;
* the role injector, the coordinator and the trace sink, under one supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

import msgspec

from bus.connection import connect
from config.settings import Settings
from ops.client import build_request, render_result, submit, submit_job
from ops.embedded_nats import ensure_nats
from ops.node import Node
from schemas.redaction import scrub_text
from supervisors.signals import HardExit

log = logging.getLogger(__name__)

DEFAULT_QUESTIONS = (
    "What is 17 + 25? Answer briefly.",
    "Name the capital of France and one famous landmark there.",
    "A Python function mutates its default list argument across calls. Identify the bug and the smallest fix.",
)
VECTOR_NAMES = ("sakana_model_iter_60.npy", "model_iter_60.npy", "trinity_router_es_vector.safetensors")


def find_trinity_vector(repo_root: Path) -> Path | None:
    """A local copy of the trained TRINITY vector: the anchors beside the checkout, or the cache."""
    candidates = [repo_root.parent / "shared" / "anchors", repo_root / "anchors",
                  Path("~/.cache/trinity-nats/anchors").expanduser()]
    for folder in candidates:
        for name in VECTOR_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def demo_settings(settings: Settings, vector: Path | None) -> tuple[Settings, str]:
    """Settings for the demo node, and a label saying what the router is made of."""
    rt = settings.model_runtime
    synthetic = rt.checkpoint_dir is None
    backbone = (f"synthetic random-weight {rt.checkpoint_preset} backbone (seed {rt.checkpoint_seed})" if synthetic
                else f"checkpoint {rt.checkpoint_dir}")
    if rt.head_path is None and vector is not None:
        rt = msgspec.structs.replace(rt, head_path=str(vector))
        head = f"the real TRINITY head from {vector}"
    elif rt.head_path is not None:
        head = f"the head from {rt.head_path}"
    else:
        head = f"a seeded random head (seed {rt.head_seed}; no TRINITY vector found)"
    label = f"router: {backbone} + {head}"
    if synthetic:
        label += " — decisions are deterministic but not meaningful on random weights"
    return msgspec.structs.replace(settings, model_runtime=rt), label


def _agent_names(settings: Settings) -> dict[int, str]:
    names: dict[int, str] = {}
    for a in settings.provider_agents.agents:
        provider = settings.provider_agents.provider(a.provider)
        names[a.agent_id] = f"agent {a.agent_id} ({a.name} via {provider.kind.value})"
    return names


async def run_demo(settings: Settings, questions: list[str], *, repo_root: Path, out: TextIO = sys.stdout,
                   startup_timeout: float = 1800.0, max_turns: int = 5, deadline_s: float = 600.0,
                   hard_exit: HardExit | None = None) -> int:
    """Start the node, ask ``questions`` one by one, print each run; return how many got no result.

    A run that ends without a Worker reply (TRINITY answers only from a Worker) still counts as answered:
    its record says why it stopped. The questions wait for the node's readiness signal (the same one
    ``run.py status --wait-ready`` reads). SIGINT/SIGTERM stops asking and drains the node within
    ``node.drain_timeout_s``; past it, or on a second signal, ``hard_exit`` (when given) ends the process.
    """
    settings, label = demo_settings(settings, find_trinity_vector(repo_root))
    nats_settings, embedded = await ensure_nats(settings.nats, Path("~/.cache/trinity-nats/nats").expanduser())
    settings = msgspec.structs.replace(settings, nats=nats_settings)
    print(f"NATS: {scrub_text(', '.join(settings.nats.servers))}{' (embedded)' if embedded else ''}", file=out)
    print(label, file=out)
    print("agents: " + "; ".join(_agent_names(settings).values()), file=out, flush=True)

    async def on_started(name: str) -> None:
        print(f"  actor ready: {name}", file=out, flush=True)

    node = Node(settings, on_started=on_started)
    failed = 0
    t0 = time.monotonic()
    print("starting actors (the first start builds the synthetic checkpoint and converts the local model; "
          "later starts reuse the cache)...", file=out, flush=True)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupted: list[signal.Signals] = []
    stopping: list[bool] = []

    def on_signal(sig: signal.Signals) -> None:
        if interrupted:
            log.warning("%s again; exiting now without waiting", sig.name)
            if hard_exit is not None:
                hard_exit(128 + int(sig))
            return
        interrupted.append(sig)
        if stopping:
            log.info("%s received; already draining the node (Ctrl-C again to exit at once)", sig.name)
            return
        log.info("%s received; stopping the demo and draining the node (at most %.0f s; Ctrl-C again to exit "
                 "at once)", sig.name, settings.node.drain_timeout_s)
        node.begin_drain()
        if main is not None:
            main.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    await node.start()
    try:
        ready = asyncio.ensure_future(node.wait_ready())
        done_sup = asyncio.ensure_future(node.supervisor.wait())
        try:
            await asyncio.wait({ready, done_sup}, timeout=startup_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            done_sup.cancel()
        if not node.ready:
            print(f"actors did not all start within {startup_timeout:.0f}s: {node.status().actors}", file=out)
            return len(questions)
        print(f"all actors ready in {time.monotonic() - t0:.1f}s", file=out, flush=True)
        nc = await connect(settings.nats, name="trinity-demo")
        names = _agent_names(settings)
        try:
            for q in questions:
                req = build_request(q, max_turns=max_turns, deadline_s=deadline_s)
                print(f"\n> {q}", file=out, flush=True)
                t = time.monotonic()
                # durably through the work queue when coordinators consume it, else request/reply
                send = submit_job if settings.coordinator.jobs_enabled else submit
                res = await send(nc, req, timeout=deadline_s + 30.0)
                print(render_result(res, lambda a: names.get(a, f"agent {a}")), file=out)
                print(f"  ({time.monotonic() - t:.1f}s; replay its trace: python run.py tail --request-id "
                      f"{res.request_id} --replay --until-finished)", file=out, flush=True)
                if res.status.value != "ok" and res.turns == []:
                    failed += 1
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2.0)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        print(f"\ninterrupted by {interrupted[0].name}; draining the node", file=out, flush=True)
        failed = max(failed, 1)
    finally:
        stopping.append(True)
        await node.stop(hard_exit=hard_exit)
        for sig in installed:
            loop.remove_signal_handler(sig)
        if embedded is not None:
            embedded.stop()
    return failed
