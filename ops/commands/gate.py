"""``run.py gate``: the decision-stability gate (or ``--record`` a snapshot) over the eval cases."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from ops.commands import CommandError, UsageError
from ops.commands._common import (
    add_router_flags,
    anchors_dir,
    check_router_flags,
    existing_file,
    load_cli_router,
    progress,
    vector_routing_profile,
    with_routing_profile,
)

NAME = "gate"
HELP = "re-route the eval cases and check decisions, margin floors and route hashes (or --record a snapshot)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``gate``."""
    p.add_argument("--cases", metavar="FILE", help="eval cases (default: anchors' qwen_router_prompt_eval_cases.json)")
    p.add_argument("--snapshot", metavar="FILE", help="logits snapshot to check against, or to write with --record "
                   "(default: anchors' qwen_router_prompt_eval_logits.json)")
    p.add_argument("--record", action="store_true", help="write a snapshot from the current runtime instead")
    p.add_argument("--record-cases", metavar="FILE", help="with --record: also write the cases with expected labels "
                   "set to the recorded decisions")
    p.add_argument("--floor-fraction", type=float, default=0.8,
                   help="with --record: floors = this fraction of the smallest recorded margins (default 0.8)")
    p.add_argument("--profile-name", help="runtime profile name (default: model_runtime.profile)")
    p.add_argument("--routing-profile", choices=["elixir-port", "sakana"],
                   help="routing profile to route under (default when checking: the snapshot's, elixir-port for the "
                        "anchors; when recording: sakana for the real vector sakana_model_iter_60.npy, else "
                        "model_runtime.routing_profile). A profile other than model_runtime's uses that profile's "
                        "dtype and tied-embedding defaults")
    p.add_argument("--agent-floor", type=float, help="override the agent margin floor")
    p.add_argument("--role-floor", type=float, help="override the role margin floor")
    p.add_argument("--verbose", action="store_true", help="one line per case")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_router_flags(p)


def _check(args: argparse.Namespace) -> None:
    check_router_flags(args)
    if args.record_cases and not args.record:
        raise UsageError("--record-cases needs --record")
    if not 0.0 < args.floor_fraction <= 1.0:
        raise UsageError(f"--floor-fraction must be in (0, 1], got {args.floor_fraction}")
    for flag in ("agent_floor", "role_floor"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    if args.record and (args.agent_floor is not None or args.role_floor is not None):
        raise UsageError("--agent-floor/--role-floor apply when checking; --record derives floors from "
                         "--floor-fraction")


def _routing_profile(args: argparse.Namespace, snapshot: Any, mr: Any) -> str:
    """The routing profile the gate runs under (see ``--routing-profile``)."""
    if args.routing_profile:
        return str(args.routing_profile)
    if snapshot is not None:
        return str(snapshot.routing_profile or "elixir-port")
    return vector_routing_profile(args.vector) or str(mr.routing_profile)


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Gate (exit 1 on a flip or a floor breach) or record (exit 0 when written)."""
    import asyncio

    from actors.model_runtime.errors import ModelRuntimeError
    from ops.gate.core import record_snapshot, relabel, run_gate
    from ops.gate.errors import FixtureError
    from ops.gate.fixtures import load_cases, load_snapshot, write_cases, write_snapshot
    from schemas.sakana import RuntimeProfile

    _check(args)
    anchors = anchors_dir(settings)
    cases_path = existing_file(args.cases, "--cases") or anchors / "qwen_router_prompt_eval_cases.json"
    snap_path = args.snapshot or str(anchors / "qwen_router_prompt_eval_logits.json")
    try:
        cases = load_cases(cases_path)
        snapshot = None if args.record else load_snapshot(snap_path)
    except FixtureError as e:
        raise CommandError(str(e)) from None
    mr = settings.model_runtime
    settings = with_routing_profile(settings, _routing_profile(args, snapshot, mr))
    mr = settings.model_runtime
    router = await asyncio.to_thread(load_cli_router, args, settings, "gate")
    say = progress("gate")
    try:
        if args.record:
            device = router.source.get("device", "cpu").split(":")[0]
            profile = RuntimeProfile(name=args.profile_name or mr.profile, backend=mr.backend, device=device,
                                     dtype=mr.dtype)
            snap = await asyncio.to_thread(record_snapshot, cases, router, profile=profile,
                                           floor_fraction=args.floor_fraction, source=router.source, progress=say)
            write_snapshot(snap, snap_path)
            if args.record_cases:
                write_cases(relabel(cases, snap), args.record_cases)
            assert snap.profile is not None
            print(f"recorded {len(snap.cases)} cases to {snap_path}; routing profile {snap.routing_profile}; "
                  f"profile {snap.profile.name} floors: agent "
                  f"{snap.profile.agent_margin_floor:.4f}, role {snap.profile.role_margin_floor:.4f}")
            return 0
        assert snapshot is not None
        profile = snapshot.profile or RuntimeProfile()
        if args.profile_name:
            profile = msgspec.structs.replace(profile, name=args.profile_name)
        if args.agent_floor is not None:
            profile = msgspec.structs.replace(profile, agent_margin_floor=args.agent_floor)
        if args.role_floor is not None:
            profile = msgspec.structs.replace(profile, role_margin_floor=args.role_floor)
        report = await asyncio.to_thread(run_gate, cases, snapshot, router, profile=profile, progress=say)
    except (FixtureError, ModelRuntimeError, ValueError) as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps({
            "routing_profile": report.routing_profile,
            "passed": report.passed, "stable": report.stable, "total": report.total, "breaches": report.breaches,
            "hash_drift": report.hash_drift, "elapsed_s": report.elapsed_s, "load_s": router.load_s,
            "profile": msgspec.to_builtins(report.profile), "source": router.source,
            "cases": [{"id": r.id, "reference": list(r.reference), "got": list(r.got), "stable": r.stable,
                       "agent_margin": r.agent_margin, "role_margin": r.role_margin, "agent_breach": r.agent_breach,
                       "role_breach": r.role_breach, "hash_drift": r.hash_drift,
                       "max_logit_drift": r.max_logit_drift} for r in report.results]}, indent=2))
    else:
        print(report.render(verbose=args.verbose))
        print(f"router load {router.load_s:.1f}s ({router.source.get('checkpoint')}; {router.source.get('head')})")
    return 0 if report.passed else 1
