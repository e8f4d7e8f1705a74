"""``run.py status``: is a node ready? Asks ``trinity.node.status.<node_id>`` (every actor ``serving``), or
reads a node's ``node.ready_file``; ``--wait-ready`` polls until ready or ``--timeout``.

Exit status: 0 when the node is ready, 1 otherwise (not ready, not answering, or not ready in time)::

    python run.py node &                                    # a node starting
    python run.py status --wait-ready --timeout 600 && python run.py submit "What is 17 + 25?"
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec

from ops.commands import UsageError

NAME = "status"
HELP = "is a node ready (every actor serving)? --wait-ready waits for it; exit 0 when ready, 1 otherwise"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``status``."""
    p.add_argument("--node-id", help="the node to ask (default: node.node_id of the settings)")
    p.add_argument("--wait-ready", action="store_true", help="poll until the node is ready or --timeout passes")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="reply deadline; with --wait-ready, how long to wait in all (default 5)")
    p.add_argument("--ready-file", metavar="PATH", help="read this ready file instead of asking over NATS")
    p.add_argument("--json", action="store_true", help="print the status as JSON")


def render(st: Any) -> str:
    """One line per node: ready or not, then each actor's state."""
    head = f"node {st.node_id}: {'ready' if st.ready else 'not ready'}"
    if st.ready_after_s is not None:
        head += f" (ready after {st.ready_after_s:.1f} s)"
    actors = ", ".join(f"{name} {state}" + (f" (restarts {st.restarts.get(name, 0)})" if st.restarts.get(name) else "")
                       for name, state in st.actors.items())
    return f"{head}; {actors}"


async def _ask(nc: Any, subject: str, timeout: float) -> Any:
    import nats.errors

    from ops.node import NodeStatus

    try:
        msg = await nc.request(subject, b"", timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    return msgspec.json.decode(msg.data, type=NodeStatus)


def _read_file(path: Path) -> Any:
    from ops.node import NodeStatus

    try:
        return msgspec.json.decode(path.read_bytes(), type=NodeStatus)
    except (OSError, msgspec.DecodeError):
        return None


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Print the node's status; exit 0 when ready, 1 otherwise."""
    if args.timeout <= 0:
        raise UsageError(f"--timeout: must be > 0 seconds, got {args.timeout}")
    node_id = args.node_id or settings.node.node_id
    deadline = time.monotonic() + args.timeout
    st: Any = None
    if args.ready_file:
        path = Path(args.ready_file).expanduser()
        while True:
            st = _read_file(path)
            if (st is not None and st.ready) or not args.wait_ready or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
    else:
        from bus.connection import connect
        from ops.node import node_status_subject

        subject = node_status_subject(node_id)
        nc = await connect(settings.nats, name="trinity-status")
        try:
            while True:
                left = deadline - time.monotonic()
                st = await _ask(nc, subject, max(0.1, min(left, 2.0) if args.wait_ready else left))
                if (st is not None and st.ready) or not args.wait_ready or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        finally:
            await nc.close()
    if st is None:
        why = f"no ready file at {args.ready_file}" if args.ready_file else \
            f"nobody answers on trinity.node.status.{node_id}"
        print(f"node {node_id}: no status ({why})" + (f" within {args.timeout:g} s" if args.wait_ready else ""))
        return 1
    print(msgspec.json.encode(st).decode() if args.json else render(st))
    return 0 if st.ready else 1
