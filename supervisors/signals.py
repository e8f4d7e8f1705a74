"""Run a supervisor until SIGINT/SIGTERM, then drain it — within a deadline (for ``run.py``).

::

    async def main() -> None:
        sup = Supervisor("node", children=[...])
        received = await run_until_signal(sup, drain_deadline_s=10.0, hard_exit=hard_exit)
        print("stopped by", received)              # None if the tree ended on its own

    asyncio.run(main())

A supervisor that fails meanwhile makes this raise its failure (e.g. ``RestartIntensityExceeded``).
Unix only (uses ``loop.add_signal_handler``); must run in the main thread.

With ``drain_deadline_s`` the drain is bounded: it logs what it waits for, and past the deadline it logs
which children did not finish and calls ``hard_exit`` (when given; :func:`hard_exit` flushes the logs and
ends the process with ``os._exit``, whatever threads or tasks are stuck). With ``hard_exit``, a second
signal during the drain exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from supervisors.health import ChildState, SupervisorHealth, SupervisorState
from supervisors.supervisor import Supervisor

_LOG = logging.getLogger("supervisors")

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

#: Exit status of a process ended by :func:`hard_exit` after a drain ran past its deadline.
EXIT_DRAIN_TIMEOUT = 3

_Handler = Callable[[int, Any], Any] | int | None
HardExit = Callable[[int], None]


def flush_logs() -> None:
    """Flush every logging handler and the standard streams (before ``os._exit``, which skips that)."""
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if handler is not None:
            with contextlib.suppress(Exception):  # a broken handler must not stop the exit
                handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not stop the exit
            stream.flush()


def hard_exit(code: int) -> None:
    """Flush the logs, then end the process at once (``os._exit``): no thread or task can hold it up."""
    flush_logs()
    os._exit(code)


def busy_threads() -> list[threading.Thread]:
    """Non-daemon threads still alive besides the main one (what would keep the interpreter from exiting)."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def unfinished(health: SupervisorHealth) -> list[str]:
    """Names (``a/b`` for nested trees) of the children still running or stopping."""
    out: list[str] = []
    for c in health.children:
        if c.nested is not None:
            out.extend(f"{c.name}/{n}" for n in unfinished(c.nested))
            if c.state in (ChildState.RUNNING, ChildState.STOPPING) and not unfinished(c.nested):
                out.append(c.name)
        elif c.state in (ChildState.RUNNING, ChildState.STOPPING):
            out.append(c.name)
    return out


async def run_until_signal(
    supervisor: Supervisor,
    signals: Iterable[signal.Signals] = DEFAULT_SIGNALS,
    *,
    drain_deadline_s: float | None = None,
    hard_exit: HardExit | None = None,
    on_drain: Callable[[], None] | None = None,
) -> signal.Signals | None:
    """Start ``supervisor`` (unless running), wait for a signal or its end, drain it, restore handlers.

    Returns the signal that triggered the drain, or None when the supervisor stopped by itself.

    Without ``drain_deadline_s`` the drain is bounded by the children's shutdown timeouts and further
    signals are logged and ignored. With it, the drain that runs past ``drain_deadline_s`` seconds logs the
    children that did not finish and calls ``hard_exit(EXIT_DRAIN_TIMEOUT)`` (or, without ``hard_exit``,
    cancels the drain and returns). With ``hard_exit``, a second signal exits at once (status 130).
    ``on_drain`` is called when a signal starts the drain.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        extra = {"supervisor": supervisor.name, "event": "signal", "signal": sig.name}
        if received.done():
            if hard_exit is not None:
                _LOG.warning("%s again while draining %s; exiting now without waiting (still running: %s)",
                             sig.name, supervisor.name, ", ".join(unfinished(supervisor.health())) or "nothing",
                             extra=extra)
                hard_exit(128 + int(sig))
                return
            _LOG.warning("%s again while draining %s; still draining", sig.name, supervisor.name, extra=extra)
            return
        bound = f" (at most {drain_deadline_s:g} s)" if drain_deadline_s is not None else ""
        more = "; press Ctrl-C again to exit at once" if hard_exit is not None else ""
        _LOG.info("%s received; draining supervisor %s%s%s", sig.name, supervisor.name, bound, more, extra=extra)
        received.set_result(sig)
        supervisor.request_stop()
        if on_drain is not None:
            on_drain()

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
        if received.done() and not await stop_within(supervisor, drain_deadline_s, hard_exit):
            return received.result()  # abandoned past its deadline (hard_exit returned: tests only)
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


async def stop_within(supervisor: Supervisor, deadline_s: float | None, exit_: HardExit | None) -> bool:
    """Stop ``supervisor`` within ``deadline_s``; False when it was abandoned past the deadline."""
    if deadline_s is None:
        await supervisor.stop()
        return True
    stopping = asyncio.ensure_future(supervisor.stop())
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    reported: list[str] | None = None
    while not stopping.done():
        left = end - loop.time()
        if left <= 0:
            break
        waiting = unfinished(supervisor.health())
        if waiting != reported:  # say what the drain waits for, each time that changes
            _LOG.info("draining %s: waiting for %s (%.1f s left)", supervisor.name, ", ".join(waiting) or "nothing",
                      left, extra={"supervisor": supervisor.name, "event": "drain_waiting", "waiting": waiting})
            reported = waiting
        await asyncio.wait({stopping}, timeout=min(left, 1.0))
    if stopping.done():
        stopping.result()
        return True
    stuck = unfinished(supervisor.health())
    threads = [t.name for t in busy_threads()]
    _LOG.error("drain of %s ran past %g s; not finished: %s%s; exiting without them", supervisor.name, deadline_s,
               ", ".join(stuck) or "nothing", f" (threads still running: {', '.join(threads)})" if threads else "",
               extra={"supervisor": supervisor.name, "event": "drain_deadline", "stuck": stuck})
    if exit_ is not None:
        exit_(EXIT_DRAIN_TIMEOUT)  # returns only when it does not end the process (tests)
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=1.0)
    return False


async def release_threads(code: int, *, grace_s: float = 2.0, hard_exit: HardExit | None = None) -> int:
    """Before leaving the event loop: stop the loop's default executor without waiting, give threads still
    running ``grace_s`` seconds, then, if any remain (abandoned work in an executor), log them and call
    ``hard_exit(code)`` — ``asyncio.run`` and the interpreter's exit would otherwise wait for them forever.
    Returns ``code`` (when nothing is stuck, or ``hard_exit`` returned)."""
    loop = asyncio.get_running_loop()
    executor = getattr(loop, "_default_executor", None)  # asyncio.run's shutdown would wait on its threads
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
    end = loop.time() + grace_s
    me = asyncio.current_task()

    def leftovers() -> tuple[list[threading.Thread], list[asyncio.Task[Any]]]:
        return busy_threads(), [t for t in asyncio.all_tasks() if t is not me and not t.done()]

    threads, tasks = leftovers()
    while (threads or tasks) and loop.time() < end:
        await asyncio.sleep(0.05)
        threads, tasks = leftovers()
    if threads or tasks:
        # asyncio.run would wait for these tasks (cancelled, some never end) and the interpreter for the threads
        _LOG.warning("exiting without waiting for %d threads (%s) and %d tasks (%s) still running", len(threads),
                     ", ".join(t.name for t in threads) or "-", len(tasks),
                     ", ".join(t.get_name() for t in tasks) or "-", extra={"event": "threads_abandoned"})
        if hard_exit is not None:
            hard_exit(code)
    return code
