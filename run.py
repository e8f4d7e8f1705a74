#!/usr/bin/env python3
"""TRINITY over NATS: the command line.

Commands:
  demo     the main job: a single node with every actor, a few questions, each turn printed
  node     run actors under supervision (all of them for single-node, or the ones named by --actors)
  submit   publish a coordination request to a running deployment and print the result
  result   wait for (or look up) the stored result of a job submitted earlier
  tail     follow trace events live, filtered by request id or kind, or replay a finished run

Every command takes --config FILE (TOML), --set section.field=value (repeatable) and --nats URL; see
README.md for the settings reference. Exit status: 0 on success, 1 on a failed request, 2 on bad usage
(one line on stderr naming the flag and the rule; checked before connecting), 130 when interrupted (Ctrl-C).

`submit` prints its request id first, on stderr (`run.py submit: request id q-...`), so stdout holds only
the result (pure JSON with --json). The question comes from the argument, from --file PATH, or from stdin
(`-`, or no argument with stdin not a terminal). Ctrl-C while waiting prints one line saying how to resume:
`run.py result ID` waits for the stored result of a queued job without submitting it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import shlex
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from ops.commands import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Rules of the flag values, as the contracts in ``schemas`` state them (checked before connecting).
MAX_TURNS = 64  # schemas.coordination.Budget.max_turns: 1..64
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")  # schemas.common.RequestId and check_token (adapter)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``run.py submit: argument --max-turns: must be ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _turns(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_TURNS:
        raise argparse.ArgumentTypeError(f"must be a whole number of turns in 1..{MAX_TURNS}, got {text!r}")
    return n


def _per_family(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of questions >= 1, got {text!r}")
    return n


def _seconds(minimum: float, rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x >= minimum):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return x

    return parse


_deadline = _seconds(0.001, "a number of seconds >= 0.001")
_positive = _seconds(0.001, "a number of seconds > 0")
_non_negative = _seconds(0.0, "a number of seconds >= 0")


def _identifier(text: str) -> str:
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"must be 1-128 characters of A-Z a-z 0-9 _ -, got {text!r}")
    return text


def _agent_ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated agent ids (whole numbers >= 0), got {text!r}")
    return [int(p) for p in parts]


def _actors(text: str) -> str:
    from config.node import KNOWN_ACTORS

    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in KNOWN_ACTORS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"must be comma-separated actors from {', '.join(KNOWN_ACTORS)}; "
                                         f"got {text!r}")
    return text


def _question(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (also TRINITY_CONFIG)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting (repeatable; values parsed as JSON when they parse)")
    p.add_argument("--nats", metavar="URL[,URL]", help="NATS server URL(s); overrides nats.servers")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = _Parser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: start every actor, ask a few questions, print each turn")
    _common(demo)
    demo.add_argument("--question", action="append", default=[], metavar="TEXT", type=_question,
                      help="a question to ask (repeatable; default: questions drawn from the offline world's test "
                      "split, graded; with --trinity-vector: three built-in ones)")
    demo.add_argument("--max-turns", type=_turns, default=None,
                      help=f"turn budget K, 1..{MAX_TURNS} (default: the trained router's, else 5)")
    demo.add_argument("--per-family", type=_per_family, default=5, metavar="N",
                      help="world questions per task family (default 5: 20 questions)")
    demo.add_argument("--seed", type=int, default=0, help="seed drawing the world questions (default 0)")
    demo.add_argument("--trinity-vector", action="store_true",
                      help="the previous demo: Sakana's TRINITY head on the synthetic Qwen3 backbone and SmolLM2 "
                      "for every agent id, instead of the trained router over the offline world")
    demo.add_argument("--deadline", type=_deadline, default=600.0, metavar="SECONDS", help="per-question deadline")

    node = sub.add_parser("node", help="run actors under supervision until SIGINT/SIGTERM")
    _common(node)
    node.add_argument("--actors", metavar="A,B", type=_actors,
                      help="comma-separated actors (default: all): trace_sink, model_runtime, fleet_registry, "
                      "provider_agents, role_injector, coordinator; and gateway (the OpenAI-compatible HTTP "
                      "API, only when named)")
    node.add_argument("--node-id", help="node id (names connections and services)")

    submit = sub.add_parser("submit", help="submit a question and wait for the coordinated answer")
    _common(submit)
    submit.add_argument("query", nargs="?", metavar="QUESTION", type=_question,
                        help="the question; '-' (or none, with stdin not a terminal) reads it from stdin")
    submit.add_argument("--file", metavar="PATH", help="read the question from this file ('-': stdin)")
    submit.add_argument("--request-id", type=_identifier,
                        help="request id (default: random); resubmitting one is idempotent")
    submit.add_argument("--max-turns", type=_turns, default=5, help=f"turn budget K, 1..{MAX_TURNS} (default 5)")
    submit.add_argument("--deadline", type=_deadline, default=120.0, metavar="SECONDS", help="run deadline")
    submit.add_argument("--agents", metavar="0,1,..", type=_agent_ids,
                        help="agent mask: only these agent ids may be chosen")
    submit.add_argument("--adapter", default="base", type=_identifier, help="adapter token of the routing runtime")
    submit.add_argument("--json", action="store_true", help="print the full result as JSON")
    submit.add_argument("--via", choices=["jobs", "request"], default="jobs",
                        help="jobs (default): durable JetStream work queue, one stored result, survives a "
                        "coordinator/runtime/NATS node dying mid-run; request: plain request/reply")

    result = sub.add_parser("result", help="wait for the stored result of a job submitted earlier (no resubmit)")
    _common(result)
    result.add_argument("request_id", metavar="REQUEST_ID", type=_identifier, help="the job's request id")
    result.add_argument("--timeout", type=_non_negative, default=600.0, metavar="SECONDS",
                        help="how long to wait for the result (default 600; 0: look once)")
    result.add_argument("--json", action="store_true", help="print the full result as JSON")

    tail = sub.add_parser("tail", help="follow or replay trace events")
    _common(tail)
    tail.add_argument("--request-id", type=_identifier, help="only this request's events")
    tail.add_argument("--kind", action="append", default=[], help="only these kinds (repeatable or a,b)")
    tail.add_argument("--replay", action="store_true", help="start from the first stored event")
    tail.add_argument("--follow", action="store_true", help="keep following (default: stop when idle)")
    tail.add_argument("--until-finished", action="store_true",
                      help="stop after the request's run_finished/run_failed (needs --request-id)")
    tail.add_argument("--idle", type=_positive, default=2.0, metavar="SECONDS", help="idle time before stopping")
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
    from ops.tracing import configure_tracing
    from schemas.redaction import scrub_text
    from supervisors.signals import hard_exit, release_threads

    settings = _settings(args)
    nats_settings, embedded = await ensure_nats(settings.nats, Path("~/.cache/trinity-nats/nats").expanduser())
    settings = msgspec.structs.replace(settings, nats=nats_settings)
    logging.getLogger("run").info("node %s: actors %s on %s", settings.node.node_id,
                                  ", ".join(settings.node.actors), scrub_text(", ".join(settings.nats.servers)))
    tracing = configure_tracing(settings.tracing, node_id=settings.node.node_id, actors=settings.node.actors)
    try:
        # drains within node.drain_timeout_s of SIGINT/SIGTERM; past it, or on a second signal, exits hard
        await Node(settings).run_until_signal(hard_exit=hard_exit)
    finally:
        tracing.shutdown()  # export the spans still buffered
        if embedded is not None:
            embedded.stop()
    return await release_threads(EXIT_OK, grace_s=0.5, hard_exit=hard_exit)


async def _cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo import DEFAULT_QUESTIONS, run_demo
    from ops.tracing import configure_tracing
    from supervisors.signals import hard_exit, release_threads

    settings = _settings(args)
    tracing = configure_tracing(settings.tracing, node_id=settings.node.node_id, actors=settings.node.actors)
    try:
        failed = await run_demo(settings, args.question or (list(DEFAULT_QUESTIONS) if args.trinity_vector else []),
                                repo_root=Path(__file__).resolve().parent, max_turns=args.max_turns,
                                deadline_s=args.deadline, hard_exit=hard_exit, trained=not args.trinity_vector,
                                per_family=args.per_family, seed=args.seed)
    finally:
        tracing.shutdown()
    return await release_threads(EXIT_OK if failed == 0 else EXIT_FAILED, grace_s=0.5, hard_exit=hard_exit)


def _read_question(args: argparse.Namespace) -> str:
    """The question from the argument, ``--file`` or stdin; :class:`UsageError` naming the source when bad."""
    from schemas.coordination import MAX_QUERY_CHARS

    if args.file is not None and args.query is not None:
        raise UsageError("QUESTION and --file: give the question one way, not both")
    stdin_piped = sys.stdin is not None and not sys.stdin.isatty()
    if args.file is not None or args.query == "-" or (args.query is None and stdin_piped):
        source = "--file" if args.file not in (None, "-") else "stdin"
        try:
            if source == "--file":
                text = Path(args.file).expanduser().read_text(encoding="utf-8")
            else:
                text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{source}: cannot read the question: {e}") from None
    elif args.query is None:
        raise UsageError("QUESTION: give the question as an argument, with --file PATH, or on stdin ('-')")
    else:
        source, text = "QUESTION", args.query
    text = text.strip()
    if not text:
        raise UsageError(f"{source}: the question must not be empty")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"{source}: the question is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    return text


def _connection_flags(args: argparse.Namespace) -> str:
    """The flags that say where to connect, for a command line shown to the user. ``--set`` values are not
    repeated (they may hold credentials): ``--set ...`` stands for them."""
    from schemas.redaction import scrub_text

    flags = [f"{flag} {shlex.quote(scrub_text(value))}"
             for flag, value in (("--config", args.config), ("--nats", args.nats)) if value]
    if args.overrides:
        flags.append("--set ...")
    return "".join(" " + f for f in flags)


async def _cmd_submit(args: argparse.Namespace) -> int:
    from bus.connection import connect
    from ops.client import build_request, new_request_id, render_result, submit, submit_job
    from schemas import RunStatus

    settings = _settings(args)
    query = _read_question(args)
    rid = args.request_id or new_request_id()
    try:
        req = build_request(query, request_id=rid, max_turns=args.max_turns, deadline_s=args.deadline,
                            agent_mask=args.agents, adapter=args.adapter)
    except (ValueError, msgspec.ValidationError) as e:
        raise UsageError(f"the request is not valid: {e}") from None
    print(f"run.py submit: request id {rid}", file=sys.stderr, flush=True)
    queued = False

    def on_queued() -> None:
        nonlocal queued
        queued = True

    try:
        nc = await connect(settings.nats, name="trinity-submit")
        try:
            if args.via == "jobs":
                res = await submit_job(nc, req, timeout=args.deadline + 10.0, on_queued=on_queued)
            else:
                res = await submit(nc, req, timeout=args.deadline + 10.0)
        finally:
            await nc.close()
    except (asyncio.CancelledError, KeyboardInterrupt):
        conn = _connection_flags(args)
        if queued:
            hint = (f"job {rid} stays queued; wait for its result with: run.py result {rid}{conn}")
        else:
            again = f"--file {shlex.quote(args.file)}" if args.file not in (None, "-") else "QUESTION"
            hint = (f"job {rid} was not queued yet; submit it again (same id, idempotent) with: "
                    f"run.py submit --request-id {rid}{conn} {again}")
        print(f"run.py submit: interrupted; {hint}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(msgspec.json.encode(res).decode() if args.json else render_result(res))
    return EXIT_OK if res.status == RunStatus.OK else EXIT_FAILED


async def _cmd_result(args: argparse.Namespace) -> int:
    from bus.connection import connect
    from ops.client import render_result, wait_job
    from schemas import RunStatus

    settings = _settings(args)
    try:
        nc = await connect(settings.nats, name="trinity-result")
        try:
            res = await wait_job(nc, args.request_id, timeout=args.timeout)
        finally:
            await nc.close()
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(f"run.py result: interrupted; wait again with: run.py result {args.request_id}"
              f"{_connection_flags(args)}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
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
    try:
        flt = TraceFilter.parse(request_id=args.request_id, kinds=kinds or None)
    except ValueError as e:
        raise UsageError(f"--kind: {e}") from None
    nc = await connect(settings.nats, name="trinity-tail")
    try:
        await tail(nc, flt, replay=args.replay, follow=args.follow, color=args.color, idle_timeout=args.idle,
                   stop_on_finish=args.until_finished)
    finally:
        await nc.close()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _cmd_demo, "node": _cmd_node, "submit": _cmd_submit, "result": _cmd_result, "tail": _cmd_tail}


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
    from ops.log_scrub import install_log_scrubber

    install_log_scrubber()  # no credential in any log line (URL userinfo, keys, password=)
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
        print(f"run.py {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
