"""Run a supervisor until SIGINT/SIGTERM, then drain it cleanly (for ``run.py``).

::

    async def main() -> None:
        sup = Supervisor("node", children=[...])
        received = await run_until_signal(sup)     # starts sup if needed; drains on the first signal
        print("stopped by", received)              # None if the tree ended on its own

    asyncio.run(main())

A supervisor that fails meanwhile makes this raise its failure (e.g. ``RestartIntensityExceeded``).
Unix only (uses ``loop.add_signal_handler``); must run in the main thread.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any

from supervisors.health import SupervisorState
from supervisors.supervisor import Supervisor

_LOG = logging.getLogger("supervisors")

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, Any], Any] | int | None


async def run_until_signal(
    supervisor: Supervisor, signals: Iterable[signal.Signals] = DEFAULT_SIGNALS
) -> signal.Signals | None:
    """Start ``supervisor`` (unless running), wait for a signal or its end, drain it, restore handlers.

    Returns the signal that triggered the drain, or None when the supervisor stopped by itself. Further
    signals during the drain are logged and otherwise ignored; the drain is bounded by the children's
    shutdown timeouts.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        extra = {"supervisor": supervisor.name, "event": "signal", "signal": sig.name}
        if received.done():
            _LOG.warning("%s again while draining %s; still draining", sig.name, supervisor.name, extra=extra)
            return
        _LOG.info("%s received; draining supervisor %s", sig.name, supervisor.name, extra=extra)
        received.set_result(sig)
        supervisor.request_stop()

    previous: dict[signal.Signals, _Handler] = {}
    waiter: asyncio.Task[None] | None = None
    try:
        for sig in signals:
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal, sig)
        if supervisor.state is not SupervisorState.RUNNING:
            await supervisor.start()
        waiter = asyncio.ensure_future(supervisor.wait())
        either: set[asyncio.Future[Any]] = {waiter, received}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if received.done():
            await supervisor.stop()
        await waiter
    finally:
        if waiter is not None and not waiter.done():
            waiter.cancel()
            await asyncio.wait({waiter})
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
    return received.result() if received.done() else None
