"""``run.py node`` with one extra actor, ``stuck``, that ignores its drain (it swallows cancellation) and
leaves a non-daemon thread running: what a node must still exit from within ``node.drain_timeout_s``.

Usage: ``python -m tests.e2e.stuck_node <run.py node args>`` (add ``stuck`` to ``--actors``).
"""

from __future__ import annotations

import asyncio
import sys
import threading

import config.node
import ops.node
import run


class StuckActor:
    """Starts fine; its drain never finishes and a worker thread never ends."""

    def __init__(self, *_: object) -> None:
        self.release = threading.Event()

    async def start(self) -> None:
        threading.Thread(target=self.release.wait, name="stuck-worker", daemon=False).start()

    async def drain(self, timeout: float = 10.0) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # ignores cancellation too


def main() -> int:
    config.node.ALL_ACTORS = (*config.node.ALL_ACTORS, "stuck")
    config.node.KNOWN_ACTORS = (*config.node.KNOWN_ACTORS, "stuck")  # what --actors and NodeSettings accept
    ops.node.FACTORIES["stuck"] = lambda nc, s: StuckActor()
    return run.main(["node", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
