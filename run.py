#!/usr/bin/env python3
"""TRINITY over NATS: the command line.

Commands:
  demo     the main job: a single node with every actor, a few questions, each turn printed
  node     run actors under supervision (all of them for single-node, or the ones named by --actors)
  submit   publish a coordination request to a running deployment and print the result
  tail     follow trace events live, filtered by request id or kind, or replay a finished run

Every command takes --config FILE (TOML), --set section.field=value (repeatable) and --nats URL; see
README.md for the settings reference. Exit status: 0 on success, 1 on a failed request, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ops.commands import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (also TRINITY_CONFIG)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting (repeatable; values parsed as JSON when they parse)")
    p.add_argument("--nats", metavar="URL[,URL]", help="NATS server URL(s); overrides nats.servers")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: start every actor, ask a few questions, print each turn")
    _common(demo)
    demo.add_argument("--question", action="append", default=[], metavar="TEXT",
                      help="a question to ask (repeatable; default: three built-in ones)")
    demo.add_argument("--max-turns", type=int, default=5, help="turn budget K (default 5)")
    demo.add_argument("--deadline", type=float, default=600.0, metavar="SECONDS", help="per-question deadline")

    node = sub.add_parser("node", help="run actors under supervision until SIGINT/SIGTERM")
    _common(node)
    node.add_argument("--actors", metavar="A,B", help="comma-separated actors (default: all): trace_sink, "
                      "model_runtime, fleet_registry, provider_agents, role_injector, coordinator")
    node.add_argument("--node-id", help="node id (names connections and services)")

    submit = sub.add_parser("submit", help="submit a question and wait for the coordinated answer")
    _common(submit)
    submit.add_argument("query", help="the question")
    submit.add_argument("--request-id", help="request id (default: random); resubmitting one is idempotent")
    submit.add_argument("--max-turns", type=int, default=5, help="turn budget K (default 5)")
    submit.add_argument("--deadline", type=float, default=120.0, metavar="SECONDS", help="run deadline")
    submit.add_argument("--agents", metavar="0,1,..", help="agent mask: only these agent ids may be chosen")
    submit.add_argument("--adapter", default="base", help="adapter token of the routing runtime")
    submit.add_argument("--json", action="store_true", help="print the full result as JSON")
    submit.add_argument("--via", choices=["jobs", "request"], default="jobs",
                        help="jobs (default): durable JetStream work queue, one stored result, survives a "
                        "coordinator/runtime/NATS node dying mid-run; request: plain request/reply")

    tail = sub.add_parser("tail", help="follow or replay trace events")
    _common(tail)
    tail.add_argument("--request-id", help="only this request's events")
    tail.add_argument("--kind", action="append", default=[], help="only these kinds (repeatable or a,b)")
    tail.add_argument("--replay", action="store_true", help="start from the first stored event")
    tail.add_argument("--follow", action="store_true", help="keep following (default: stop when idle)")
    tail.add_argument("--until-finished", action="store_true",
                      help="stop after the request's run_finished/run_failed (needs --request-id)")
    tail.add_argument("--idle", type=float, default=2.0, metavar="SECONDS", help="idle time before stopping")
    tail.add_argument("--color", action="store_true", help="colour event kinds")
    for module in _command_modules():
        extra = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        _common(extra)
        module.add_arguments(extra)
    return parser


def _command_modules() -> list[Any]:
    import importlib

    from ops.commands import MODULES

    return [importlib.import_module(m) for m in MODULES]


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    overrides = list(args.overrides)
    if args.nats:
        overrides.append("nats.servers=" + json.dumps(args.nats.split(",")))
    if getattr(args, "actors", None):
        overrides.append("node.actors=" + json.dumps([a.strip() for a in args.actors.split(",") if a.strip()]))
    if getattr(args, "node_id", None):
        overrides.append("node.node_id=" + json.dumps(args.node_id))
    if args.log_level:
        overrides.append("node.log_level=" + json.dumps(args.log_level))
    return load_settings(config_file=args.config, overrides=overrides)


async def _cmd_node(args: argparse.Namespace) -> int:
    from ops.embedded_nats import ensure_nats
    from ops.node import Node
    from supervisors.signals import hard_exit, release_threads

    settings = _settings(args)
    nats_settings, embedded = await ensure_nats(settings.nats, Path("~/.cache/trinity-nats/nats").expanduser())
    settings = msgspec.structs.replace(settings, nats=nats_settings)
    logging.getLogger("run").info("node %s: actors %s on %s", settings.node.node_id,
                                  ", ".join(settings.node.actors), ", ".join(settings.nats.servers))
    try:
        # drains within node.drain_timeout_s of SIGINT/SIGTERM; past it, or on a second signal, exits hard
        await Node(settings).run_until_signal(hard_exit=hard_exit)
    finally:
        if embedded is not None:
            embedded.stop()
    return await release_threads(EXIT_OK, grace_s=0.5, hard_exit=hard_exit)


async def _cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo import DEFAULT_QUESTIONS, run_demo
    from supervisors.signals import hard_exit, release_threads

    settings = _settings(args)
    failed = await run_demo(settings, args.question or list(DEFAULT_QUESTIONS),
                            repo_root=Path(__file__).resolve().parent, max_turns=args.max_turns,
                            deadline_s=args.deadline, hard_exit=hard_exit)
    return await release_threads(EXIT_OK if failed == 0 else EXIT_FAILED, grace_s=0.5, hard_exit=hard_exit)


async def _cmd_submit(args: argparse.Namespace) -> int:
    from bus.connection import connect
    from ops.client import build_request, render_result, submit, submit_job
    from schemas import RunStatus

    settings = _settings(args)
    mask = [int(a) for a in args.agents.split(",")] if args.agents else None
    req = build_request(args.query, request_id=args.request_id, max_turns=args.max_turns, deadline_s=args.deadline,
                        agent_mask=mask, adapter=args.adapter)
    nc = await connect(settings.nats, name="trinity-submit")
    try:
        send = submit_job if args.via == "jobs" else submit
        res = await send(nc, req, timeout=args.deadline + 10.0)
    finally:
        await nc.close()
    print(msgspec.json.encode(res).decode() if args.json else render_result(res))
    return EXIT_OK if res.status == RunStatus.OK else EXIT_FAILED


async def _cmd_tail(args: argparse.Namespace) -> int:
    from actors.trace_sink.render import TraceFilter
    from bus.connection import connect
    from ops.client import tail

    if args.until_finished and not args.request_id:
        raise UsageError("--until-finished needs --request-id")
    settings = _settings(args)
    kinds = [k for item in args.kind for k in item.split(",") if k]
    flt = TraceFilter.parse(request_id=args.request_id, kinds=kinds or None)
    nc = await connect(settings.nats, name="trinity-tail")
    try:
        await tail(nc, flt, replay=args.replay, follow=args.follow, color=args.color, idle_timeout=args.idle,
                   stop_on_finish=args.until_finished)
    finally:
        await nc.close()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _cmd_demo, "node": _cmd_node, "submit": _cmd_submit, "tail": _cmd_tail}


def _plugged(module: Any) -> Callable[[argparse.Namespace], Coroutine[Any, Any, int]]:
    async def run(args: argparse.Namespace) -> int:
        result: int = await module.run(args, _settings(args))
        return result

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    commands = dict(COMMANDS)
    for module in _command_modules():
        commands[module.NAME] = _plugged(module)
    logging.basicConfig(level=getattr(logging, args.log_level or "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from bus.errors import BusError
    from config.settings import SettingsError
    from ops.commands import CommandError

    try:
        return asyncio.run(commands[args.command](args))
    except (UsageError, SettingsError) as e:
        print(f"run.py {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (BusError, CommandError) as e:
        print(f"run.py {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
