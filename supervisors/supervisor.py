"""An Erlang/OTP-style supervisor for asyncio tasks.

::

    sup = Supervisor(
        "node",
        children=[ChildSpec("bus", run_bus), ChildSpec("router", run_router, liveness_timeout=10.0)],
        strategy=Strategy.REST_FOR_ONE,          # router depends on bus: restart it when bus crashes
        intensity=Intensity(max_restarts=5, period=30.0),
        backoff=Backoff(base=0.2, max_delay=5.0, jitter=0.2),
    )
    async with sup:                              # start(); on exit: graceful stop()
        await sup.wait()                         # returns after stop(), raises RestartIntensityExceeded

Children start in spec order and stop in reverse spec order. A nested supervisor joins a parent through
``child_sup.as_child()``; when it exceeds its intensity it fails and the parent handles that like any
child crash.

Restarts: a backoff wait does not block the supervisor (other children stay supervised, hangs are still
detected). Restarts count toward the intensity window when they are decided, so choose ``period`` with the
backoff in mind: a long backoff spreads restarts out and may never trip a short window.

Time: ``clock``/``sleep`` (injectable for tests) govern backoff sleeps, the intensity window and uptimes.
Liveness deadlines and health-check intervals are measured on the event loop's own clock, because they
guard against real hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from supervisors.backoff import Backoff
from supervisors.context import ChildContext
from supervisors.errors import (
    ChildCancelledError,
    ChildHangError,
    ChildSpecError,
    ChildUnhealthyError,
    RestartIntensityExceeded,
    SupervisorStateError,
)
from supervisors.health import ChildHealth, ChildState, SupervisorHealth, SupervisorState
from supervisors.spec import ChildSpec, RestartType
from supervisors.strategy import Intensity, RestartWindow, Strategy

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_LOG = logging.getLogger("supervisors")


class _Child:
    """Mutable runtime record of one child."""

    def __init__(self, spec: ChildSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.state = ChildState.STOPPED
        self.task: asyncio.Task[None] | None = None
        self.ctx: ChildContext | None = None
        self.restarts = 0
        self.attempt = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.last_beat = 0.0
        self.next_check = 0.0
        self.kill_reason: BaseException | None = None
        self.timer: asyncio.Future[None] | None = None  # pending backoff before a restart


async def _run_child(spec: ChildSpec, ctx: ChildContext) -> None:
    await spec.run(ctx)


class Supervisor:
    """Runs child specs as tasks and restarts them per ``strategy``, ``backoff`` and ``intensity``.

    ``kill_timeout``: after cancelling a child, how long to wait for it to finish; a child that swallows
    cancellation past it is abandoned (logged as ``child_unkillable``).
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity | None = None,
        backoff: Backoff | None = None,
        kill_timeout: float = 5.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not name:
            raise ChildSpecError("Supervisor name must be non-empty")
        names = [spec.name for spec in children]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ChildSpecError(f"supervisor {name!r} has duplicate child names {dupes}; names must be unique")
        if not kill_timeout > 0:
            raise ChildSpecError(f"kill_timeout must be > 0 seconds, got {kill_timeout}")
        self._name = name
        self._specs = tuple(children)
        self._strategy = Strategy(strategy)
        self._intensity = intensity if intensity is not None else Intensity()
        self._backoff = backoff if backoff is not None else Backoff()
        self._kill_timeout = kill_timeout
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._logger = logger if logger is not None else _LOG
        self._state = SupervisorState.IDLE
        self._children = [_Child(spec, i) for i, spec in enumerate(self._specs)]
        self._window = RestartWindow(self._intensity)
        self._loop_task: asyncio.Task[None] | None = None
        self._stop_fut: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._started_at: float | None = None

    # ------------------------------------------------------------------ public API

    @property
    def name(self) -> str:
        """The supervisor's name (also its child name when nested)."""
        return self._name

    @property
    def state(self) -> SupervisorState:
        """Current lifecycle state."""
        return self._state

    @property
    def failure(self) -> BaseException | None:
        """Why the supervisor failed (usually :class:`RestartIntensityExceeded`), else None."""
        return self._failure

    async def start(self) -> None:
        """Start every child in spec order; also restarts a stopped or failed supervisor from scratch."""
        if self._state in (SupervisorState.RUNNING, SupervisorState.STOPPING):
            raise SupervisorStateError(f"supervisor {self._name!r} is already {self._state.value}")
        loop = asyncio.get_running_loop()
        self._children = [_Child(spec, i) for i, spec in enumerate(self._specs)]
        self._window.reset()
        self._failure = None
        self._stop_fut = loop.create_future()
        self._state = SupervisorState.RUNNING
        self._started_at = self._clock()
        for child in self._children:
            self._start_child(child)
        self._loop_task = loop.create_task(self._supervise(), name=f"supervisor:{self._name}")
        self._logger.info(
            "supervisor %s started %d children",
            self._name,
            len(self._children),
            extra={"supervisor": self._name, "event": "supervisor_started"},
        )

    async def wait(self) -> None:
        """Block until the supervisor ends: return after ``stop()``, raise its failure otherwise."""
        if self._loop_task is None:
            raise SupervisorStateError(f"supervisor {self._name!r} was never started; call start() first")
        await asyncio.wait({self._loop_task})
        if self._failure is not None:
            raise self._failure

    def request_stop(self) -> None:
        """Ask for a graceful stop without waiting for it (safe from a child or a signal handler)."""
        if self._stop_fut is not None and not self._stop_fut.done():
            self._stop_fut.set_result(None)
            if self._state is SupervisorState.RUNNING:
                self._state = SupervisorState.STOPPING

    async def stop(self) -> None:
        """Drain and stop every child in reverse start order; idempotent, never raises the failure.

        Do not await this from one of the supervisor's own children (it would wait for itself until its
        shutdown timeout); call :meth:`request_stop` there.
        """
        if self._loop_task is None:
            return
        self.request_stop()
        await asyncio.wait({self._loop_task})

    def health(self) -> SupervisorHealth:
        """A snapshot of this supervisor and its children (recursing into nested supervisors)."""
        now = self._clock()
        running = self._state in (SupervisorState.RUNNING, SupervisorState.STOPPING)
        return SupervisorHealth(
            name=self._name,
            state=self._state,
            strategy=self._strategy.value,
            restarts_in_window=self._window.count(now),
            uptime_s=now - self._started_at if running and self._started_at is not None else None,
            error=None if self._failure is None else repr(self._failure),
            children=tuple(self._child_health(c, now) for c in self._children),
        )

    def as_child(
        self, *, restart: RestartType = RestartType.PERMANENT, shutdown_timeout: float | None = None
    ) -> ChildSpec:
        """A spec that runs this supervisor as a child of another one (nested health included)."""
        return ChildSpec(
            name=self._name,
            run=self._run_as_child,
            restart=restart,
            shutdown_timeout=shutdown_timeout,
            nested_health=self.health,
        )

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if exc is None and self._failure is not None:
            raise self._failure

    # ------------------------------------------------------------------ nested use

    async def _run_as_child(self, ctx: ChildContext) -> None:
        await self.start()
        loop_task = self._loop_task
        assert loop_task is not None
        drain = asyncio.ensure_future(ctx.wait_draining())
        try:
            await asyncio.wait({loop_task, drain}, return_when=asyncio.FIRST_COMPLETED)
            if drain.done():
                await self.stop()
        except asyncio.CancelledError:
            loop_task.cancel()
            await asyncio.wait({loop_task})
            raise
        finally:
            drain.cancel()
            await asyncio.wait({drain})
        if self._failure is not None:
            raise self._failure

    # ------------------------------------------------------------------ child lifecycle

    def _extra(self, child: _Child, event: str, **fields: Any) -> dict[str, Any]:
        return {"supervisor": self._name, "child": child.spec.name, "event": event, **fields}

    def _child_health(self, child: _Child, now: float) -> ChildHealth:
        running = child.state is ChildState.RUNNING and child.started_at is not None
        return ChildHealth(
            name=child.spec.name,
            state=child.state,
            restart_type=child.spec.restart.value,
            restarts=child.restarts,
            last_error=child.last_error,
            uptime_s=now - child.started_at if running and child.started_at is not None else None,
            nested=child.spec.nested_health() if child.spec.nested_health is not None else None,
        )

    def _start_child(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()

        def beat() -> None:
            if child.ctx is ctx:
                child.last_beat = loop.time()

        ctx = ChildContext(
            name=child.spec.name,
            supervisor=self._name,
            restart_count=child.restarts,
            beat=beat,
            logger=self._logger,
        )
        now = loop.time()
        child.ctx = ctx
        child.kill_reason = None
        child.last_beat = now
        child.next_check = now + child.spec.health_interval
        child.started_at = self._clock()
        child.state = ChildState.RUNNING
        child.task = loop.create_task(_run_child(child.spec, ctx), name=f"{self._name}/{child.spec.name}")

    def _retrieve(self, child: _Child, task: asyncio.Task[None]) -> None:
        """Consume a finished task's outcome so asyncio never reports it as unretrieved."""
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None and child.kill_reason is None:
                child.last_error = repr(error)
                self._logger.warning(
                    "child %s/%s raised while stopping: %r",
                    self._name,
                    child.spec.name,
                    error,
                    extra=self._extra(child, "child_stop_error", error=repr(error)),
                )

    async def _cancel(self, child: _Child, task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.wait({task}, timeout=self._kill_timeout)
        if not task.done():
            self._logger.error(
                "child %s/%s ignored cancellation for %s s; abandoning its task",
                self._name,
                child.spec.name,
                self._kill_timeout,
                extra=self._extra(child, "child_unkillable"),
            )
            task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _stop_child(self, child: _Child) -> None:
        """Graceful stop: set ``draining``, wait ``shutdown_timeout``, then cancel."""
        task = child.task
        if task is None:
            if child.state is not ChildState.FAILED:
                child.state = ChildState.STOPPED
            return
        child.state = ChildState.STOPPING
        if not task.done():
            assert child.ctx is not None
            child.ctx.draining.set()
            timeout = child.spec.shutdown_timeout
            if timeout is None or timeout > 0:
                await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                self._logger.warning(
                    "child %s/%s did not drain within %s s; cancelling",
                    self._name,
                    child.spec.name,
                    timeout,
                    extra=self._extra(child, "child_drain_timeout", shutdown_timeout=timeout),
                )
                await self._cancel(child, task)
        self._retrieve(child, task)
        child.task = None
        child.started_at = None
        child.state = ChildState.STOPPED

    async def _shutdown(self) -> None:
        await self._cancel_timers()
        for child in reversed(self._children):
            if child.task is not None:
                await self._stop_child(child)
            elif child.state is ChildState.RESTARTING:
                child.state = ChildState.STOPPED

    async def _cancel_timers(self) -> None:
        timers = {c.timer for c in self._children if c.timer is not None}
        for child in self._children:
            child.timer = None
        for timer in timers:
            timer.cancel()
        if timers:
            await asyncio.wait(timers)

    # ------------------------------------------------------------------ supervision loop

    async def _supervise(self) -> None:
        try:
            escalated = await self._supervise_loop()
            if not escalated:
                await self._shutdown()
                self._state = SupervisorState.STOPPED
                self._logger.info(
                    "supervisor %s stopped",
                    self._name,
                    extra={"supervisor": self._name, "event": "supervisor_stopped"},
                )
        except asyncio.CancelledError:
            # Forced stop (a parent killed us, or the loop is closing): cancel children, do not drain.
            await self._cancel_timers()
            for child in reversed(self._children):
                if child.task is not None:
                    await self._cancel(child, child.task)
                    self._retrieve(child, child.task)
                    child.task = None
                if child.state is not ChildState.FAILED:
                    child.state = ChildState.STOPPED
            self._state = SupervisorState.STOPPED
        except Exception as exc:
            self._logger.exception(
                "supervisor %s crashed internally; stopping its children",
                self._name,
                extra={"supervisor": self._name, "event": "supervisor_crashed"},
            )
            self._failure = exc
            await self._shutdown()
            self._state = SupervisorState.FAILED

    async def _supervise_loop(self) -> bool:
        """Handle child exits, hangs and health checks until stop (False) or escalation (True)."""
        stop_fut = self._stop_fut
        assert stop_fut is not None
        loop = asyncio.get_running_loop()
        while not stop_fut.done():
            waitables: set[asyncio.Future[Any]] = {stop_fut}
            for c in self._children:
                if c.state is ChildState.RUNNING and c.task is not None:
                    waitables.add(c.task)
                elif c.timer is not None:
                    waitables.add(c.timer)
            timeout = self._next_deadline_in(loop.time())
            done, _ = await asyncio.wait(waitables, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if stop_fut.done():
                return False
            self._fire_timers(done)
            for child in self._children:
                if stop_fut.done():
                    return False
                task = child.task
                if task is not None and task in done and child.state is ChildState.RUNNING:
                    if await self._handle_exit(child, self._exit_error(child, task)):
                        return True
            if not stop_fut.done() and await self._check_children(loop.time()):
                return True
        return False

    def _next_deadline_in(self, now: float) -> float | None:
        deadlines: list[float] = []
        for child in self._children:
            if child.state is not ChildState.RUNNING:
                continue
            if child.spec.liveness_timeout is not None:
                deadlines.append(child.last_beat + child.spec.liveness_timeout)
            if child.spec.health_check is not None:
                deadlines.append(child.next_check)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _exit_error(self, child: _Child, task: asyncio.Task[None]) -> BaseException | None:
        if child.kill_reason is not None:
            if task.done() and not task.cancelled():
                task.exception()  # retrieve; the kill reason is what matters (abandoned tasks are not done)
            return child.kill_reason
        if task.cancelled():
            return ChildCancelledError(supervisor=self._name, child=child.spec.name)
        return task.exception()

    async def _check_children(self, now: float) -> bool:
        """Cancel hung or unhealthy children and handle them as crashes; True if that escalated."""
        for child in self._children:
            task = child.task
            if child.state is not ChildState.RUNNING or task is None or task.done():
                continue
            reason = self._liveness_failure(child, now) or self._health_failure(child, now)
            if reason is None:
                continue
            self._logger.warning(
                "killing child %s/%s: %s",
                self._name,
                child.spec.name,
                reason,
                extra=self._extra(child, "child_killed", error=repr(reason)),
            )
            child.kill_reason = reason
            child.state = ChildState.STOPPING
            await self._cancel(child, task)
            if await self._handle_exit(child, self._exit_error(child, task)):
                return True
            if self._stop_fut is not None and self._stop_fut.done():
                return False
        return False

    def _liveness_failure(self, child: _Child, now: float) -> BaseException | None:
        limit = child.spec.liveness_timeout
        if limit is None or now - child.last_beat < limit:
            return None
        return ChildHangError(
            supervisor=self._name, child=child.spec.name, liveness_timeout=limit, silent_for=now - child.last_beat
        )

    def _health_failure(self, child: _Child, now: float) -> BaseException | None:
        check = child.spec.health_check
        if check is None or now < child.next_check:
            return None
        child.next_check = now + child.spec.health_interval
        try:
            healthy = check()
            detail = "health_check returned False"
        except Exception as exc:
            self._logger.warning(
                "health check of %s/%s raised",
                self._name,
                child.spec.name,
                exc_info=True,
                extra=self._extra(child, "child_health_check_error"),
            )
            healthy, detail = False, f"health_check raised {exc!r}"
        if healthy:
            return None
        return ChildUnhealthyError(supervisor=self._name, child=child.spec.name, detail=detail)

    # ------------------------------------------------------------------ restarts

    async def _handle_exit(self, child: _Child, error: BaseException | None) -> bool:
        """Apply the restart type, intensity and strategy to a child that ended; True if escalated."""
        child.task = None
        uptime = self._clock() - child.started_at if child.started_at is not None else 0.0
        child.started_at = None
        if error is not None:
            child.last_error = repr(error)
        restart = child.spec.restart is RestartType.PERMANENT or (
            child.spec.restart is RestartType.TRANSIENT and error is not None
        )
        how = "returned" if error is None else f"crashed: {error!r}"
        if not restart:
            child.state = ChildState.STOPPED if error is None else ChildState.FAILED
            self._logger.info(
                "child %s/%s %s; %s child not restarted",
                self._name,
                child.spec.name,
                how,
                child.spec.restart.value,
                extra=self._extra(child, "child_exit", error=child.last_error if error else None, restart=False),
            )
            return False
        self._logger.warning(
            "child %s/%s %s",
            self._name,
            child.spec.name,
            how,
            extra=self._extra(child, "child_exit", error=repr(error) if error else None, restart=True),
        )
        if not self._window.record(self._clock()):
            await self._escalate(child, error)
            return True
        return await self._restart(child, uptime)

    async def _escalate(self, child: _Child, error: BaseException | None) -> None:
        failure = RestartIntensityExceeded(
            supervisor=self._name,
            child=child.spec.name,
            max_restarts=self._intensity.max_restarts,
            period=self._intensity.period,
            last_error="normal return" if error is None else repr(error),
        )
        failure.__cause__ = error
        self._failure = failure
        child.state = ChildState.FAILED
        self._logger.error(
            "supervisor %s gives up: %s",
            self._name,
            failure,
            extra=self._extra(
                child,
                "intensity_exceeded",
                max_restarts=self._intensity.max_restarts,
                period=self._intensity.period,
            ),
        )
        await self._shutdown()
        self._state = SupervisorState.FAILED

    def _restart_group(self, child: _Child) -> list[_Child]:
        """The crashed child plus the siblings the strategy restarts with it (running or already pending)."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [child]
        first = child.index + 1 if self._strategy is Strategy.REST_FOR_ONE else 0
        live = (ChildState.RUNNING, ChildState.RESTARTING)
        return sorted(
            [child, *(c for c in self._children[first:] if c is not child and c.state in live)],
            key=lambda c: c.index,
        )

    async def _restart(self, child: _Child, uptime: float) -> bool:
        """Stop the strategy's siblings (reverse order), then schedule the group's restart after backoff.

        The backoff runs as a timer the supervision loop waits on, so other children keep being
        supervised meanwhile. Siblings already waiting for a restart join this group's (newer) timer.
        """
        group = self._restart_group(child)
        for sibling in reversed(group):
            if sibling is child or sibling.state is not ChildState.RUNNING:
                continue
            await self._stop_child(sibling)
            if sibling.spec.restart is not RestartType.TEMPORARY:
                sibling.state = ChildState.RESTARTING
        child.state = ChildState.RESTARTING
        if uptime >= self._backoff.reset_after:
            child.attempt = 0
        delay = self._backoff.delay(child.attempt)
        child.attempt += 1
        members = [c for c in group if c.state is ChildState.RESTARTING]
        names = [c.spec.name for c in members]
        self._logger.info(
            "restarting %s of supervisor %s in %.3f s (attempt %d)",
            names,
            self._name,
            delay,
            child.attempt,
            extra=self._extra(child, "child_restart", delay_s=delay, attempt=child.attempt, group=names),
        )
        timer = asyncio.ensure_future(self._sleep(delay))
        replaced = {c.timer for c in members if c.timer is not None}
        for c in members:
            c.timer = timer
        orphans = {t for t in replaced if all(c.timer is not t for c in self._children)}
        for old in orphans:
            old.cancel()
        if orphans:
            await asyncio.wait(orphans)
        return False

    def _fire_timers(self, done: set[asyncio.Future[Any]]) -> None:
        """Start, in spec order, every child whose backoff timer just finished."""
        for child in self._children:
            timer = child.timer
            if timer is None or timer not in done:
                continue
            child.timer = None
            timer.result()  # surfaces an error of an injected sleep
            if child.state is ChildState.RESTARTING:
                child.restarts += 1
                self._start_child(child)
