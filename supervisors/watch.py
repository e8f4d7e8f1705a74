"""Watching the long-lived loops *inside* a child: a loop that died, or stopped making progress while work
waits, is reported as an error so the child crashes and its supervisor restarts it.

A child's own task may be fine (its heartbeat keeps coming) while a background task it started — a fetch
loop, a consumer — has died with an exception nobody awaited, or hangs on a request that never returns.
:class:`LoopWatch` closes that gap::

    watch = LoopWatch("trace_sink fetch loop", stall_after_s=30.0, pending=consumer_num_pending)
    task = asyncio.create_task(fetch_loop(watch))    # the loop calls watch.progress() after each round trip
    watch.attach(task)
    ...
    await watch.check()     # from the child's supervision loop: raises LoopDied / LoopStalled

``progress()`` marks the loop alive (call it whenever the loop made a round trip *and* is keeping up, e.g.
after a fetch returned messages or found nothing to do). :meth:`LoopWatch.check` raises

* :class:`LoopDied` when the attached task ended (with its exception as the cause) while it should run;
* :class:`LoopStalled` when no progress came for ``stall_after_s`` seconds and ``pending()`` (optional,
  async) says work is waiting. Without ``pending``, silence alone is a stall.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from supervisors.errors import SupervisorError


class LoopFailure(SupervisorError):
    """A watched loop inside a child failed; the child should crash so its supervisor restarts it."""

    def __init__(self, message: str, *, loop: str) -> None:
        super().__init__(message)
        self.loop = loop


class LoopDied(LoopFailure):
    """The watched loop's task ended (returned, raised or was cancelled) while the child still runs."""


class LoopStalled(LoopFailure):
    """The watched loop made no progress for ``stall_after_s`` seconds while work was pending."""

    def __init__(self, message: str, *, loop: str, silent_for: float, pending: int | None) -> None:
        super().__init__(message, loop=loop)
        self.silent_for = silent_for
        self.pending = pending


class LoopWatch:
    """Progress tracker of one loop task (see the module docstring)."""

    def __init__(self, name: str, *, stall_after_s: float, pending: Callable[[], Awaitable[int]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stall_after_s > 0:
            raise ValueError(f"stall_after_s must be > 0 seconds, got {stall_after_s}")
        self.name = name
        self.stall_after_s = stall_after_s
        self.pending = pending
        self.clock = clock
        self.task: asyncio.Task[object] | None = None
        self.last_progress = clock()
        self.rounds = 0

    def attach(self, task: asyncio.Task[object]) -> None:
        """Watch ``task`` (the loop itself); restarts the silence clock."""
        self.task = task
        self.last_progress = self.clock()

    def progress(self) -> None:
        """The loop made a round trip and is keeping up."""
        self.rounds += 1
        self.last_progress = self.clock()

    def detach(self) -> None:
        """Stop watching (the loop is being stopped on purpose)."""
        self.task = None

    async def check(self) -> None:
        """Raise :class:`LoopDied` or :class:`LoopStalled` when the loop failed; return otherwise. A watch with
        no task attached (its loop not started yet, or stopped on purpose) has nothing to check."""
        task = self.task
        if task is None:
            return
        if task is not None and task.done():
            if task.cancelled():
                cause: BaseException | None = None
                how = "was cancelled"
            else:
                cause = task.exception()
                how = f"raised {cause!r}" if cause is not None else "returned"
            err = LoopDied(f"{self.name} {how}; it no longer runs", loop=self.name)
            err.__cause__ = cause
            raise err
        silent = self.clock() - self.last_progress
        if silent < self.stall_after_s:
            return
        waiting: int | None = None
        if self.pending is not None:
            try:
                waiting = await self.pending()
            except Exception as e:  # an unanswerable probe is itself a sign the loop cannot work
                raise LoopStalled(f"{self.name}: no progress for {silent:.1f} s and its pending-work probe failed "
                                  f"({e!r})", loop=self.name, silent_for=silent, pending=None) from e
            if waiting <= 0:
                self.last_progress = self.clock()  # idle, not stuck
                return
        raise LoopStalled(f"{self.name}: no progress for {silent:.1f} s while "
                          f"{'work is' if waiting is None else f'{waiting} messages are'} pending",
                          loop=self.name, silent_for=silent, pending=waiting)
