"""run_until_signal: a real SIGINT/SIGTERM sent to this process drains the tree and restores handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from supervisors import (
    NO_BACKOFF,
    ChildContext,
    ChildSpec,
    Intensity,
    RestartIntensityExceeded,
    Supervisor,
    SupervisorState,
    run_until_signal,
)

GUARD_S = 5.0  # guards against a hang; never asserted as a duration


def _pending_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_supervisor_and_restores_handlers(sig: signal.Signals) -> None:
    events: list[str] = []
    before = signal.getsignal(sig)

    async def worker(ctx: ChildContext) -> None:
        events.append("worker up")
        await ctx.wait_draining()
        events.append("worker drained")

    async def sender(ctx: ChildContext) -> None:
        events.append("sender up")
        os.kill(os.getpid(), sig)  # delivered to the handler installed on the running loop
        await ctx.wait_draining()
        events.append("sender drained")

    sup = Supervisor("node", [ChildSpec("worker", worker), ChildSpec("sender", sender)])
    received = await asyncio.wait_for(run_until_signal(sup), GUARD_S)
    assert received is sig
    assert events == ["worker up", "sender up", "sender drained", "worker drained"]
    assert sup.state is SupervisorState.STOPPED
    assert signal.getsignal(sig) == before
    assert not _pending_tasks()


async def test_second_signal_while_draining_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisors")
    release = asyncio.Event()
    events: list[str] = []

    async def slow(ctx: ChildContext) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await ctx.wait_draining()
        events.append("draining")
        os.kill(os.getpid(), signal.SIGTERM)  # impatient operator
        await release.wait()
        events.append("finished in-flight work")

    async def releaser() -> None:
        while not any(r.getMessage().startswith("SIGTERM again") for r in caplog.records):
            await asyncio.sleep(0.001)
        release.set()

    sup = Supervisor("node", [ChildSpec("slow", slow, shutdown_timeout=GUARD_S)])
    helper = asyncio.ensure_future(releaser())
    received = await asyncio.wait_for(run_until_signal(sup), GUARD_S)
    await helper
    assert received is signal.SIGTERM
    assert events == ["draining", "finished in-flight work"]
    signal_records = [r for r in caplog.records if getattr(r, "event", None) == "signal"]
    assert [r.levelno for r in signal_records] == [logging.INFO, logging.WARNING]
    assert not _pending_tasks()


async def test_supervisor_failure_propagates_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def crasher(ctx: ChildContext) -> None:
        raise ValueError("no")

    sup = Supervisor("node", [ChildSpec("c", crasher)], intensity=Intensity(1, 60.0), backoff=NO_BACKOFF)
    with pytest.raises(RestartIntensityExceeded, match="'node'"):
        await asyncio.wait_for(run_until_signal(sup), GUARD_S)
    assert signal.getsignal(signal.SIGTERM) == before
    assert not _pending_tasks()


async def test_returns_none_when_the_tree_stops_by_itself() -> None:
    holder: list[Supervisor] = []

    async def quitter(ctx: ChildContext) -> None:
        holder[0].request_stop()
        await ctx.wait_draining()

    sup = Supervisor("node", [ChildSpec("q", quitter)])
    holder.append(sup)
    assert await asyncio.wait_for(run_until_signal(sup), GUARD_S) is None
    assert sup.state is SupervisorState.STOPPED
