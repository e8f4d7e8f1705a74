"""Supervisor behaviour: crashes of every kind, strategies, backoff, intensity, hangs, drain, health.

Time is controlled where it matters: backoff sleeps go through an injected ``FakeTime`` whose clock also
drives the intensity window, so schedules are asserted exactly; real waits are short and only bounded by
a guard, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from supervisors import (
    NO_BACKOFF,
    Backoff,
    ChildContext,
    ChildFn,
    ChildSpec,
    ChildState,
    Intensity,
    RestartIntensityExceeded,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorState,
    SupervisorStateError,
)

GUARD_S = 5.0
"""Upper bound on any wait in these tests; only guards against hangs, never asserted as a duration."""


class FakeTime:
    """Injectable clock + sleep: sleeping records the delay and advances the clock without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class Tracker:
    """Builds scripted children and records what they do, in order.

    ``plan[i]`` is the behaviour of run ``i`` (then ``tail`` forever):
    ``raise`` (ValueError), ``return``, ``serve`` (wait for draining, then return), ``hang`` (wait forever,
    never heartbeat, record a cancellation).
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.runs: Counter[str] = Counter()
        self.tasks: dict[str, asyncio.Task[object]] = {}
        self.contexts: dict[str, list[ChildContext]] = {}

    def child(self, name: str, plan: Sequence[str] = (), tail: str = "serve") -> ChildFn:
        async def run(ctx: ChildContext) -> None:
            i = self.runs[name]
            self.runs[name] += 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks[name] = task
            self.contexts.setdefault(name, []).append(ctx)
            self.events.append(f"start {name}")
            mode = plan[i] if i < len(plan) else tail
            if mode == "raise":
                self.events.append(f"crash {name}")
                raise ValueError(f"{name} boom {i}")
            if mode == "return":
                self.events.append(f"return {name}")
                return
            try:
                if mode == "hang":
                    await asyncio.Event().wait()
                else:
                    await ctx.wait_draining()
            except asyncio.CancelledError:
                self.events.append(f"cancelled {name}")
                raise
            self.events.append(f"stop {name}")

        return run


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``predicate`` until true (guarded by GUARD_S so a bug fails instead of hanging)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def leaked_tasks() -> set[asyncio.Task[object]]:
    """Tasks other than the current one that are still pending."""
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def tracker() -> Tracker:
    return Tracker()


def make_sup(name: str, specs: Sequence[ChildSpec], ft: FakeTime, **kwargs: object) -> Supervisor:
    """A supervisor on fake time with a 0.1 s * 2**k (max 1 s) backoff and a lenient intensity."""
    kwargs.setdefault("backoff", Backoff(base=0.1, factor=2.0, max_delay=1.0))
    kwargs.setdefault("intensity", Intensity(max_restarts=10, period=60.0))
    return Supervisor(name, specs, clock=ft.clock, sleep=ft.sleep, **kwargs)  # type: ignore[arg-type]


def states(sup: Supervisor) -> list[tuple[str, ChildState, int]]:
    return [(c.name, c.state, c.restarts) for c in sup.health().children]


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


R, S, F, X = ChildState.RUNNING, ChildState.STOPPED, ChildState.FAILED, ChildState.RESTARTING


# ---------------------------------------------------------------------------------------------- crashes


async def test_exception_crash_restarts_only_that_child_one_for_one(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    sup = make_sup(
        "s",
        [ChildSpec("a", tr.child("a")), ChildSpec("b", tr.child("b", ["raise"])), ChildSpec("c", tr.child("c"))],
        fake_time,
    )
    await sup.start()
    await until(lambda: tr.runs["b"] == 2 and tr.runs["c"] == 1, "b restarted")
    assert states(sup) == [("a", R, 0), ("b", R, 1), ("c", R, 0)]
    health = sup.health()
    assert health.child("b").last_error == "ValueError('b boom 0')"
    assert health.child("a").last_error is None
    assert health.restarts_in_window == 1
    assert tr.runs == Counter(a=1, b=2, c=1)
    assert [ctx.restart_count for ctx in tr.contexts["b"]] == [0, 1]
    assert fake_time.sleeps == [pytest.approx(0.1)]
    await sup.stop()
    assert tr.events == ["start a", "start b", "crash b", "start c", "start b", "stop c", "stop b", "stop a"]
    assert states(sup) == [("a", S, 0), ("b", S, 1), ("c", S, 0)]
    assert sup.state is SupervisorState.STOPPED
    assert not leaked_tasks()


@pytest.mark.parametrize(
    ("restart", "expected_state", "expected_runs", "expected_restarts"),
    [(RestartType.PERMANENT, R, 2, 1), (RestartType.TRANSIENT, R, 2, 1), (RestartType.TEMPORARY, F, 1, 0)],
)
async def test_cancellation_from_outside_is_a_crash(
    tracker: Tracker,
    fake_time: FakeTime,
    restart: RestartType,
    expected_state: ChildState,
    expected_runs: int,
    expected_restarts: int,
) -> None:
    tr = tracker
    sup = make_sup("s", [ChildSpec("x", tr.child("x"), restart=restart), ChildSpec("y", tr.child("y"))], fake_time)
    await sup.start()
    await until(lambda: tr.runs["y"] == 1, "children up")
    tr.tasks["x"].cancel()  # not the supervisor's doing
    await until(lambda: sup.health().child("x").state is expected_state and tr.runs["x"] == expected_runs)
    x = sup.health().child("x")
    assert x.restarts == expected_restarts
    assert x.last_error is not None and x.last_error.startswith("ChildCancelledError(")
    assert "cancelled from outside its supervisor" in x.last_error
    assert tr.events[:3] == ["start x", "start y", "cancelled x"]
    assert sup.health().child("y").restarts == 0
    await sup.stop()
    assert not leaked_tasks()


async def test_hang_past_liveness_deadline_is_cancelled_and_restarted(
    tracker: Tracker, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    tr = tracker
    hung = ChildSpec("h", tr.child("h", ["hang"], tail="return"), restart=RestartType.TRANSIENT, liveness_timeout=0.05)
    sup = make_sup("s", [hung, ChildSpec("sib", tr.child("sib"))], fake_time)
    await sup.start()
    await until(lambda: tr.runs["h"] == 2 and sup.health().child("h").state is S, "hang detected")
    # first run hung and was cancelled; second run returned normally, so the transient child stays stopped
    assert tr.events == ["start h", "start sib", "cancelled h", "start h", "return h"]
    h = sup.health().child("h")
    assert h.restarts == 1
    assert h.last_error is not None and h.last_error.startswith("ChildHangError(")
    assert "liveness_timeout=0.05 s" in h.last_error
    assert sup.health().child("sib").restarts == 0
    killed = records(caplog, "child_killed")
    assert [(r.supervisor, r.child) for r in killed] == [("s", "h")]  # type: ignore[attr-defined]
    await sup.stop()
    assert not leaked_tasks()


async def test_heartbeating_child_is_not_killed(fake_time: FakeTime) -> None:
    beats = 0

    async def beating(ctx: ChildContext) -> None:
        nonlocal beats
        for _ in range(30):  # ~0.3 s in total, longer than the deadline, 10 ms between beats
            ctx.heartbeat()
            beats += 1
            await asyncio.sleep(0.01)

    spec = ChildSpec("b", beating, restart=RestartType.TRANSIENT, liveness_timeout=0.25)
    sup = make_sup("s", [spec], fake_time)
    await sup.start()
    await until(lambda: sup.health().child("b").state is S, "child finished")
    assert beats == 30
    assert states(sup) == [("b", S, 0)]
    assert sup.health().child("b").last_error is None
    await sup.stop()
    assert not leaked_tasks()


@pytest.mark.parametrize(
    ("failing_check", "detail"),
    [("false", "health_check returned False"), ("raise", "health_check raised RuntimeError('db gone')")],
)
async def test_failed_health_check_kills_and_restarts(
    tracker: Tracker, fake_time: FakeTime, failing_check: str, detail: str
) -> None:
    tr = tracker
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            if failing_check == "raise":
                raise RuntimeError("db gone")
            return False
        return True

    spec = ChildSpec("w", tr.child("w"), health_check=check, health_interval=0.01)
    sup = make_sup("s", [spec], fake_time)
    await sup.start()
    await until(lambda: tr.runs["w"] == 2, "restart after failed check")
    await until(lambda: calls >= 6, "more checks")
    w = sup.health().child("w")
    assert (w.state, w.restarts) == (R, 1)
    assert w.last_error is not None and w.last_error.startswith("ChildUnhealthyError(")
    assert detail in w.last_error
    assert tr.events == ["start w", "cancelled w", "start w"]
    await sup.stop()
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- strategies


async def test_rest_for_one_restarts_crashed_and_later_siblings_in_order(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [
        ChildSpec("a", tr.child("a")),
        ChildSpec("b", tr.child("b", ["raise"])),
        ChildSpec("c", tr.child("c")),
        ChildSpec("d", tr.child("d")),
    ]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.REST_FOR_ONE)
    await sup.start()
    await until(lambda: tr.runs["d"] == 2, "rest restarted")
    # later siblings drain in reverse order, then the crashed child and its dependents start in order
    assert tr.events == [
        "start a", "start b", "crash b", "start c", "start d",
        "stop d", "stop c",
        "start b", "start c", "start d",
    ]  # fmt: skip
    assert states(sup) == [("a", R, 0), ("b", R, 1), ("c", R, 1), ("d", R, 1)]
    assert sup.health().child("c").last_error is None  # restarted as a dependent, not crashed
    assert fake_time.sleeps == [pytest.approx(0.1)]
    await sup.stop()
    assert tr.events[-4:] == ["stop d", "stop c", "stop b", "stop a"]
    assert not leaked_tasks()


async def test_rest_for_one_crash_of_last_child_restarts_only_it(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [ChildSpec("a", tr.child("a")), ChildSpec("b", tr.child("b")), ChildSpec("c", tr.child("c", ["raise"]))]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.REST_FOR_ONE)
    await sup.start()
    await until(lambda: tr.runs["c"] == 2)
    assert tr.events == ["start a", "start b", "start c", "crash c", "start c"]
    assert states(sup) == [("a", R, 0), ("b", R, 0), ("c", R, 1)]
    await sup.stop()
    assert not leaked_tasks()


async def test_one_for_all_restarts_everyone(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [ChildSpec("a", tr.child("a")), ChildSpec("b", tr.child("b")), ChildSpec("c", tr.child("c", ["raise"]))]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.ONE_FOR_ALL)
    await sup.start()
    await until(lambda: tr.runs["c"] == 2)
    assert tr.events == [
        "start a", "start b", "start c", "crash c",
        "stop b", "stop a",
        "start a", "start b", "start c",
    ]  # fmt: skip
    assert states(sup) == [("a", R, 1), ("b", R, 1), ("c", R, 1)]
    await sup.stop()
    assert not leaked_tasks()


async def test_strategy_does_not_restart_temporary_siblings(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [
        ChildSpec("a", tr.child("a", ["raise"])),
        ChildSpec("b", tr.child("b")),
        ChildSpec("t", tr.child("t"), restart=RestartType.TEMPORARY),
    ]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.REST_FOR_ONE)
    await sup.start()
    await until(lambda: tr.runs["b"] == 2)
    assert tr.events == ["start a", "crash a", "start b", "start t", "stop t", "stop b", "start a", "start b"]
    assert states(sup) == [("a", R, 1), ("b", R, 1), ("t", S, 0)]
    await sup.stop()
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- restart types


async def test_restart_types_on_normal_return_and_on_crash(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [
        ChildSpec("perm", tr.child("perm", ["return"]), restart=RestartType.PERMANENT),
        ChildSpec("trans_ok", tr.child("trans_ok", ["return"]), restart=RestartType.TRANSIENT),
        ChildSpec("trans_err", tr.child("trans_err", ["raise"]), restart=RestartType.TRANSIENT),
        ChildSpec("temp_ok", tr.child("temp_ok", ["return"]), restart=RestartType.TEMPORARY),
        ChildSpec("temp_err", tr.child("temp_err", ["raise"]), restart=RestartType.TEMPORARY),
    ]
    sup = make_sup("s", specs, fake_time)
    await sup.start()
    expected = [("perm", R, 1), ("trans_ok", S, 0), ("trans_err", R, 1), ("temp_ok", S, 0), ("temp_err", F, 0)]
    await until(lambda: states(sup) == expected, "settled")
    assert tr.runs == Counter(perm=2, trans_ok=1, trans_err=2, temp_ok=1, temp_err=1)
    health = sup.health()
    assert health.child("trans_ok").last_error is None
    assert health.child("temp_err").last_error == "ValueError('temp_err boom 0')"
    assert not health.ok  # a failed child makes the tree unhealthy
    assert fake_time.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]  # perm and trans_err, first attempts
    assert health.restarts_in_window == 2
    await sup.stop()
    assert not leaked_tasks()


async def test_temporary_crash_leaves_siblings_alone_under_one_for_all(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    specs = [
        ChildSpec("a", tr.child("a")),
        ChildSpec("t", tr.child("t", ["raise"]), restart=RestartType.TEMPORARY),
        ChildSpec("b", tr.child("b")),
    ]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.ONE_FOR_ALL)
    await sup.start()
    await until(lambda: sup.health().child("t").state is F)
    assert states(sup) == [("a", R, 0), ("t", F, 0), ("b", R, 0)]
    assert tr.runs == Counter(a=1, t=1, b=1)
    assert fake_time.sleeps == []
    await sup.stop()
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- backoff


async def test_backoff_schedule_is_applied_per_consecutive_crash(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    sup = make_sup(
        "s", [ChildSpec("x", tr.child("x", ["raise"] * 4))], fake_time, backoff=Backoff(0.1, 2.0, max_delay=0.5)
    )
    await sup.start()
    await until(lambda: tr.runs["x"] == 5)
    assert fake_time.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert states(sup) == [("x", R, 4)]
    await sup.stop()
    assert not leaked_tasks()


async def test_backoff_streak_resets_after_a_long_uptime(fake_time: FakeTime) -> None:
    runs = 0
    gate = asyncio.Event()

    async def flaky(ctx: ChildContext) -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            await gate.wait()  # this run stays up "long" (the test advances the fake clock)
        if runs <= 3:
            raise ValueError(f"crash {runs}")
        await ctx.wait_draining()

    sup = make_sup("s", [ChildSpec("x", flaky)], fake_time, backoff=Backoff(0.1, 2.0, reset_after=60.0))
    await sup.start()
    await until(lambda: runs == 3)
    assert fake_time.sleeps == pytest.approx([0.1, 0.2])
    fake_time.now += 100.0  # uptime of run 3 exceeds reset_after
    gate.set()
    await until(lambda: runs == 4)
    assert fake_time.sleeps == pytest.approx([0.1, 0.2, 0.1])
    await sup.stop()
    assert not leaked_tasks()


async def test_backoff_jitter_uses_the_injected_rng(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker

    def backoff(seed: int) -> Backoff:
        return Backoff(base=0.1, factor=2.0, max_delay=1.0, jitter=0.5, rng=random.Random(seed))

    expected = backoff(7).schedule(3)
    sup = make_sup("s", [ChildSpec("x", tr.child("x", ["raise"] * 3))], fake_time, backoff=backoff(7))
    await sup.start()
    await until(lambda: tr.runs["x"] == 4)
    assert fake_time.sleeps == expected
    assert expected != pytest.approx([0.1, 0.2, 0.4])
    await sup.stop()
    assert not leaked_tasks()


class GatedSleep:
    """Injected sleep whose first call blocks until ``gate`` is set; later calls return at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sleeps: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.sleeps.append(delay)
        if len(self.sleeps) == 1:
            await self.gate.wait()


def crash_on(trigger: asyncio.Event, events: list[str], name: str) -> ChildFn:
    """A child that serves until ``trigger`` is set on its first run, then raises; later runs just serve."""
    runs = 0

    async def run(ctx: ChildContext) -> None:
        nonlocal runs
        runs += 1
        events.append(f"start {name}")
        if runs == 1:
            await trigger.wait()
            events.append(f"crash {name}")
            raise ValueError(f"{name} crash")
        await ctx.wait_draining()
        events.append(f"stop {name}")

    return run


async def test_pending_backoff_does_not_block_supervision_of_siblings(tracker: Tracker) -> None:
    tr = tracker
    sleep = GatedSleep()
    y_crash = asyncio.Event()
    specs = [ChildSpec("x", tr.child("x", ["raise"])), ChildSpec("y", crash_on(y_crash, tr.events, "y"))]
    sup = Supervisor("s", specs, sleep=sleep, backoff=Backoff(base=0.5))
    await sup.start()
    await until(lambda: sup.health().child("x").state is X and len(sleep.sleeps) == 1, "x waiting")
    y_crash.set()
    await until(lambda: tr.events.count("start y") == 2, "y restarted while x still waits")
    assert states(sup) == [("x", X, 0), ("y", R, 1)]
    sleep.gate.set()
    await until(lambda: tr.runs["x"] == 2)
    assert states(sup) == [("x", R, 1), ("y", R, 1)]
    assert sleep.sleeps == [0.5, 0.5]
    await sup.stop()
    assert not leaked_tasks()


async def test_rest_for_one_merges_a_pending_restart_into_an_earlier_crash(tracker: Tracker) -> None:
    tr = tracker
    sleep = GatedSleep()
    a_crash = asyncio.Event()
    specs = [
        ChildSpec("a", crash_on(a_crash, tr.events, "a")),
        ChildSpec("b", tr.child("b", ["raise"])),
        ChildSpec("c", tr.child("c")),
    ]
    sup = Supervisor("s", specs, strategy=Strategy.REST_FOR_ONE, sleep=sleep)
    await sup.start()
    await until(lambda: states(sup) == [("a", R, 0), ("b", X, 0), ("c", X, 0)], "b and c pending")
    a_crash.set()  # a's restart group (a, b, c) takes over b and c's pending restart
    await until(lambda: tr.runs["c"] == 2)
    assert tr.events == [
        "start a", "start b", "crash b", "start c", "stop c",
        "crash a", "start a", "start b", "start c",
    ]  # fmt: skip
    assert states(sup) == [("a", R, 1), ("b", R, 1), ("c", R, 1)]
    assert len(sleep.sleeps) == 2  # the first (blocked) timer was cancelled, never fired
    await sup.stop()
    assert not leaked_tasks()


async def test_stop_interrupts_a_pending_backoff(tracker: Tracker) -> None:
    tr = tracker
    sleeps: list[float] = []

    async def never_wakes(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.Event().wait()

    sup = Supervisor("s", [ChildSpec("x", tr.child("x", ["raise"]))], sleep=never_wakes)
    await sup.start()
    await until(lambda: sup.health().child("x").state is X, "waiting to restart")
    await sup.stop()
    assert sleeps == [pytest.approx(0.1)]
    assert states(sup) == [("x", S, 0)]
    assert tr.runs["x"] == 1
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- intensity


async def test_intensity_exceeded_surfaces_typed_error_at_top(
    tracker: Tracker, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    tr = tracker
    specs = [ChildSpec("steady", tr.child("steady")), ChildSpec("x", tr.child("x", tail="raise"))]
    sup = make_sup("s", specs, fake_time, intensity=Intensity(max_restarts=2, period=10.0), backoff=NO_BACKOFF)
    await sup.start()
    with pytest.raises(RestartIntensityExceeded) as info:
        await asyncio.wait_for(sup.wait(), GUARD_S)
    err = info.value
    assert (err.supervisor, err.child, err.restarts, err.max_restarts) == ("s", "x", 3, 2)
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "x boom 2"
    assert tr.runs["x"] == 3
    assert sup.state is SupervisorState.FAILED
    assert sup.failure is err
    health = sup.health()
    assert health.error is not None and health.error.startswith("RestartIntensityExceeded(")
    assert states(sup) == [("steady", S, 0), ("x", F, 2)]
    assert "stop steady" in tr.events and "cancelled steady" not in tr.events  # drained, not killed
    escalations = records(caplog, "intensity_exceeded")
    assert len(escalations) == 1 and escalations[0].levelno == logging.ERROR
    assert (escalations[0].supervisor, escalations[0].child) == ("s", "x")  # type: ignore[attr-defined]
    await sup.stop()  # idempotent after failure, does not raise
    assert not leaked_tasks()


@pytest.mark.parametrize(("period", "escalates"), [(1.5, False), (2.5, True)])
async def test_intensity_window_slides_with_the_clock(
    tracker: Tracker, fake_time: FakeTime, period: float, escalates: bool
) -> None:
    # constant 1 s (fake) backoff: crashes at t = 0, 1, 2, 3, 4; at most 2 restarts per `period`
    tr = tracker
    sup = make_sup(
        "s",
        [ChildSpec("x", tr.child("x", ["raise"] * 5))],
        fake_time,
        intensity=Intensity(max_restarts=2, period=period),
        backoff=Backoff(base=1.0, factor=1.0, max_delay=1.0),
    )
    await sup.start()
    if escalates:
        with pytest.raises(RestartIntensityExceeded):
            await asyncio.wait_for(sup.wait(), GUARD_S)
        assert tr.runs["x"] == 3  # the third crash (t=2) is the third restart within 2.5 s
        assert fake_time.sleeps == [1.0, 1.0]
    else:
        await until(lambda: tr.runs["x"] == 6)
        assert states(sup) == [("x", R, 5)]
        assert fake_time.sleeps == [1.0] * 5
        await sup.stop()
    assert not leaked_tasks()


async def test_nested_supervisor_escalates_to_its_parent(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    inner = make_sup(
        "inner",
        [ChildSpec("leaf", tr.child("leaf", tail="raise"))],
        fake_time,
        intensity=Intensity(max_restarts=1, period=60.0),
        backoff=NO_BACKOFF,
    )
    top = make_sup(
        "top",
        [ChildSpec("sibling", tr.child("sibling")), inner.as_child()],
        fake_time,
        intensity=Intensity(max_restarts=1, period=60.0),
        backoff=NO_BACKOFF,
    )
    await top.start()
    with pytest.raises(RestartIntensityExceeded) as info:
        await asyncio.wait_for(top.wait(), GUARD_S)
    err = info.value
    assert (err.supervisor, err.child) == ("top", "inner")
    cause = err.__cause__
    assert isinstance(cause, RestartIntensityExceeded)
    assert (cause.supervisor, cause.child) == ("inner", "leaf")
    assert isinstance(cause.__cause__, ValueError)
    # inner ran twice (one restart by top); each incarnation allowed its leaf one restart
    assert tr.runs == Counter(leaf=4, sibling=1)
    assert tr.events.count("stop sibling") == 1
    health = top.health()
    assert states(top) == [("sibling", S, 0), ("inner", F, 1)]
    nested = health.child("inner")
    assert nested.last_error is not None and nested.last_error.startswith("RestartIntensityExceeded(")
    assert nested.nested is not None and nested.nested.state is SupervisorState.FAILED
    assert inner.state is SupervisorState.FAILED
    assert not leaked_tasks()


async def test_nested_supervisor_contains_its_own_crashes_and_reports_nested_health(
    tracker: Tracker, fake_time: FakeTime
) -> None:
    tr = tracker
    inner = make_sup("inner", [ChildSpec("leaf", tr.child("leaf", ["raise"]))], fake_time)
    top = make_sup("top", [ChildSpec("api", tr.child("api")), inner.as_child()], fake_time)
    async with top:
        await until(lambda: tr.runs["leaf"] == 2)
        fake_time.now += 12.5
        health = top.health()
        assert health.ok
        assert states(top) == [("api", R, 0), ("inner", R, 0)]  # the parent never saw the leaf crash
        nested = health.child("inner").nested
        assert nested is not None
        assert [(c.name, c.state, c.restarts) for c in nested.children] == [("leaf", R, 1)]
        assert nested.child("leaf").last_error == "ValueError('leaf boom 0')"
        assert health.uptime_s == pytest.approx(12.6) and nested.child("leaf").uptime_s == pytest.approx(12.5)
        data = json.loads(json.dumps(health.to_dict()))
        assert data["children"][1]["nested"]["children"][0]["state"] == "running"
        assert data["children"][1]["nested"]["children"][0]["restarts"] == 1
    assert top.state is SupervisorState.STOPPED and inner.state is SupervisorState.STOPPED
    assert tr.events[-2:] == ["stop leaf", "stop api"]  # inner started after api, so it drains first
    assert not top.health().ok
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- drain


async def test_graceful_drain_finishes_in_flight_work_and_cancels_stragglers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    events: list[str] = []
    release = asyncio.Event()

    async def worker(ctx: ChildContext) -> None:
        while True:
            events.append("worker job start")
            await release.wait()  # an in-flight job
            events.append("worker job done")
            if ctx.is_draining:
                events.append("worker drained")
                return

    async def late(ctx: ChildContext) -> None:
        events.append("late up")
        await ctx.wait_draining()
        events.append("late drained")

    async def stubborn(ctx: ChildContext) -> None:
        events.append("stubborn up")
        try:
            await asyncio.Event().wait()  # ignores draining
        except asyncio.CancelledError:
            events.append("stubborn cancelled")
            raise

    sup = Supervisor(
        "s",
        [
            ChildSpec("worker", worker, shutdown_timeout=GUARD_S),
            ChildSpec("late", late),
            ChildSpec("stubborn", stubborn, shutdown_timeout=0.02),
        ],
    )
    await sup.start()
    await until(lambda: "stubborn up" in events)
    stopping = asyncio.ensure_future(sup.stop())
    await until(lambda: sup.health().child("late").state is S, "late drained")
    health = sup.health()
    assert health.state is SupervisorState.STOPPING
    assert health.child("worker").state is ChildState.STOPPING  # still finishing its job
    assert health.child("stubborn").state is S
    assert "worker job done" not in events
    release.set()
    await stopping
    assert events == [
        "worker job start", "late up", "stubborn up",
        "stubborn cancelled", "late drained", "worker job done", "worker drained",
    ]  # fmt: skip
    assert states(sup) == [("worker", S, 0), ("late", S, 0), ("stubborn", S, 0)]
    assert [r.child for r in records(caplog, "child_drain_timeout")] == ["stubborn"]  # type: ignore[attr-defined]
    assert sup.state is SupervisorState.STOPPED
    assert not leaked_tasks()


async def test_child_that_swallows_cancellation_is_abandoned_after_kill_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    release = asyncio.Event()
    swallowed = 0
    task: asyncio.Task[object] | None = None

    async def stubborn(ctx: ChildContext) -> None:
        nonlocal swallowed, task
        task = asyncio.current_task()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed += 1

    sup = Supervisor("s", [ChildSpec("x", stubborn, shutdown_timeout=0)], kill_timeout=0.02)
    await sup.start()
    try:
        await until(lambda: task is not None)
        await sup.stop()
        assert swallowed == 1
        assert [r.child for r in records(caplog, "child_unkillable")] == ["x"]  # type: ignore[attr-defined]
        assert states(sup) == [("x", S, 0)]
    finally:
        release.set()
    await until(lambda: task is not None and task.done())
    assert not leaked_tasks()


async def test_hung_child_that_swallows_cancellation_is_abandoned_and_replaced(
    caplog: pytest.LogCaptureFixture, fake_time: FakeTime
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    release = asyncio.Event()
    tasks: list[asyncio.Task[object]] = []

    async def child(ctx: ChildContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        if len(tasks) == 1:
            while not release.is_set():  # hangs (no heartbeat) and refuses to die
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass
            return
        while not ctx.is_draining:
            ctx.heartbeat()
            await asyncio.sleep(0.005)

    spec = ChildSpec("h", child, liveness_timeout=0.05)
    sup = make_sup("s", [spec], fake_time, kill_timeout=0.02)
    await sup.start()
    try:
        await until(lambda: len(tasks) == 2, "replacement started")
        h = sup.health().child("h")
        assert (h.state, h.restarts) == (R, 1)
        assert h.last_error is not None and h.last_error.startswith("ChildHangError(")
        assert [r.child for r in records(caplog, "child_unkillable")] == ["h"]  # type: ignore[attr-defined]
        assert not tasks[0].done()  # abandoned, still running
        await sup.stop()
    finally:
        release.set()  # lets the stubborn task end even if an assertion failed
    await until(lambda: tasks[0].done())
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- lifecycle


async def test_lifecycle_errors_restart_after_stop_and_async_with(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    sup = make_sup("s", [ChildSpec("a", tr.child("a"))], fake_time)
    with pytest.raises(SupervisorStateError, match="never started"):
        await sup.wait()
    await sup.stop()  # stopping an idle supervisor is a no-op
    assert sup.state is SupervisorState.IDLE
    async with sup:
        with pytest.raises(SupervisorStateError, match="already running"):
            await sup.start()
        await until(lambda: tr.runs["a"] == 1)
    assert sup.health().state is SupervisorState.STOPPED
    await sup.wait()  # returns at once after a clean stop
    await sup.start()  # a stopped supervisor can start again, from scratch
    await until(lambda: tr.runs["a"] == 2)
    assert states(sup) == [("a", R, 0)]
    await sup.stop()
    await sup.stop()
    assert tr.events == ["start a", "stop a", "start a", "stop a"]
    assert not leaked_tasks()


async def test_async_with_raises_the_failure_on_exit(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    sup = make_sup("s", [ChildSpec("x", tr.child("x", tail="raise"))], fake_time, intensity=Intensity(0, 1.0))
    with pytest.raises(RestartIntensityExceeded, match="more than 0 restarts"):
        async with sup:
            await until(lambda: sup.state is SupervisorState.FAILED)
    assert tr.runs["x"] == 1
    assert not leaked_tasks()


async def test_request_stop_from_inside_a_child(tracker: Tracker, fake_time: FakeTime) -> None:
    tr = tracker
    holder: list[Supervisor] = []

    async def quitter(ctx: ChildContext) -> None:
        holder[0].request_stop()
        await ctx.wait_draining()

    sup = make_sup("s", [ChildSpec("a", tr.child("a")), ChildSpec("q", quitter)], fake_time)
    holder.append(sup)
    await sup.start()
    await asyncio.wait_for(sup.wait(), GUARD_S)
    assert sup.state is SupervisorState.STOPPED
    assert tr.events == ["start a", "stop a"]
    assert not leaked_tasks()


async def test_internal_error_fails_the_supervisor_and_stops_children(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    tr = tracker

    async def broken_sleep(delay: float) -> None:
        raise RuntimeError("sleep is broken")

    specs = [ChildSpec("ok", tr.child("ok")), ChildSpec("x", tr.child("x", ["raise"]))]
    sup = Supervisor("s", specs, sleep=broken_sleep)
    await sup.start()
    with pytest.raises(RuntimeError, match="sleep is broken"):
        await asyncio.wait_for(sup.wait(), GUARD_S)
    assert sup.state is SupervisorState.FAILED
    assert states(sup) == [("ok", S, 0), ("x", S, 0)]
    assert "stop ok" in tr.events
    assert len(records(caplog, "supervisor_crashed")) == 1
    assert not leaked_tasks()


# ---------------------------------------------------------------------------------------------- logging


async def test_restart_events_are_logged_with_structured_fields(
    tracker: Tracker, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    tr = tracker
    said: list[str] = []

    async def chatty(ctx: ChildContext) -> None:
        ctx.logger.info("hello", extra={"job": 7})
        said.append(ctx.name)
        await ctx.wait_draining()

    specs = [ChildSpec("b", tr.child("b", ["raise"])), ChildSpec("w", chatty)]
    sup = make_sup("s", specs, fake_time, strategy=Strategy.REST_FOR_ONE)
    await sup.start()
    await until(lambda: tr.runs["b"] == 2 and len(said) == 2)
    (exit_rec,) = records(caplog, "child_exit")
    assert (exit_rec.supervisor, exit_rec.child, exit_rec.restart) == ("s", "b", True)  # type: ignore[attr-defined]
    assert exit_rec.error == "ValueError('b boom 0')"  # type: ignore[attr-defined]
    (restart_rec,) = records(caplog, "child_restart")
    assert restart_rec.child == "b" and restart_rec.group == ["b", "w"]  # type: ignore[attr-defined]
    assert restart_rec.delay_s == pytest.approx(0.1) and restart_rec.attempt == 1  # type: ignore[attr-defined]
    hello = [r for r in caplog.records if r.getMessage() == "hello"]
    assert [(r.supervisor, r.child, r.job) for r in hello] == [("s", "w", 7)] * 2  # type: ignore[attr-defined]
    await sup.stop()
    assert not leaked_tasks()
