"""``run.py bench``: run the benchmark scripts (``scripts/bench_<name>.py``) by name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.commands import UsageError
from ops.commands._common import REPO_ROOT

NAME = "bench"
HELP = "run benchmark scripts by name (scripts/bench_<name>.py); --list shows them"


def available(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Benchmark name -> script, for every ``scripts/bench_*.py``."""
    return {p.stem[len("bench_"):]: p for p in sorted((root / "scripts").glob("bench_*.py"))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench``."""
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (e.g. bus, runtime); see --list")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--arg", dest="script_args", action="append", default=[], metavar="ARG",
                   help="argument passed to every script (repeatable), e.g. --arg=--quick")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop a script that runs longer")


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Run each named script in turn (output streams through); exit with the first failing script's status."""
    import asyncio

    scripts = available()
    if args.list:
        for name, path in scripts.items():
            print(f"{name:<16} {path.relative_to(REPO_ROOT)}")
        return 0
    if not args.names:
        raise UsageError(f"name at least one benchmark: {', '.join(scripts) or '(none found)'}")
    wanted = [n.removeprefix("bench_").removesuffix(".py") for n in args.names]
    unknown = [n for n in wanted if n not in scripts]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(scripts)}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    for name in wanted:
        print(f"bench: running {name} ({scripts[name].relative_to(REPO_ROOT)})", file=sys.stderr, flush=True)
        proc = await asyncio.create_subprocess_exec(sys.executable, str(scripts[name]), *args.script_args,
                                                    cwd=str(REPO_ROOT))
        try:
            code = await asyncio.wait_for(proc.wait(), timeout=args.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            print(f"bench: {name} ran past --timeout {args.timeout}s and was stopped", file=sys.stderr)
            return 1
        if code != 0:
            print(f"bench: {name} exited with status {code}", file=sys.stderr)
            return 1
    return 0
