"""The GGUF -> safetensors conversion runs in a child process: the event loop keeps its pace meanwhile.

In-process, the conversion holds the GIL for 15-130 s, so the runtime sharing the process missed its
heartbeats and was dropped from placement. These tests convert into a fresh cache directory (slow: ~15-30 s).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from actors.provider_agents.local_model import (
    LocalModel,
    LocalModelProvider,
    aconvert_gguf,
    checkpoint_dir,
    locate_gguf,
)
from config.provider_agents import LocalModelSettings

pytestmark = pytest.mark.slow
TICK_S = 0.05


#: Largest event-loop stall allowed while the child converts. Measured on 2 busy cores: ~0.06 s with the child
#: process; converting in a thread of the same process stalled the loop 0.5 s at a time (idle machine) and for
#: whole heartbeat periods on a loaded one.
MAX_STALL_S = 0.3


class Ticker:
    """A coroutine that wakes every ``TICK_S`` and records each wake-up's time and the gap before it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.gaps: list[tuple[float, float]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last = self.loop.time()
        while True:
            await asyncio.sleep(TICK_S)
            now = self.loop.time()
            self.gaps.append((now, now - last))
            last = now

    def max_gap(self, until: float) -> float:
        """The largest gap among wake-ups up to loop time ``until``."""
        return max(gap for t, gap in self.gaps if t <= until)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _children_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (Linux ``/proc``)."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


async def test_event_loop_keeps_ticking_while_the_model_converts(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = LocalModelSettings(cache_dir=str(tmp_path / "cache"), convert_progress_s=1.0)
    provider = LocalModelProvider(settings)
    caplog.set_level(logging.INFO, logger="actors.provider_agents.local_model")
    ticker = Ticker()
    converted_at: list[float] = []

    class OnConverted(logging.Handler):  # runs on the loop's thread: aconvert_gguf logs from the loop
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("local model: converted "):
                converted_at.append(ticker.loop.time())

    handler = OnConverted()
    logging.getLogger("actors.provider_agents.local_model").addHandler(handler)
    try:
        report = await provider.start()  # convert in a child process, then load in a thread
    finally:
        await ticker.stop()
        logging.getLogger("actors.provider_agents.local_model").removeHandler(handler)
    assert report.converted and report.convert_seconds > 0 and len(converted_at) == 1
    # an event-loop latency bound while the conversion ran (not a limit on the conversion's length)
    stall = ticker.max_gap(until=converted_at[0])
    assert stall < min(MAX_STALL_S, report.convert_seconds / 10), (stall, report.convert_seconds)
    assert len([t for t, _ in ticker.gaps if t <= converted_at[0]]) > report.convert_seconds / (2 * TICK_S)
    lines = [r.getMessage() for r in caplog.records]
    assert any("in a child process" in m for m in lines)
    assert any(m.startswith("local model: converted ") for m in lines)
    if report.convert_seconds > 2.0:
        assert any("still converting" in m for m in lines)
    # atomic: only the finished checkpoint is left in the cache, and a fresh model loads it without converting
    ckpt = Path(report.checkpoint_dir)
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    assert LocalModel(settings).load().converted is False
    await provider.aclose()


async def test_cancelled_conversion_kills_the_child_and_leaves_no_checkpoint(tmp_path: Path) -> None:
    settings = LocalModelSettings(cache_dir=str(tmp_path / "cache"))
    gguf = locate_gguf(settings)
    dest = checkpoint_dir(settings, gguf)
    progress = asyncio.Event()

    class OnProgress(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "still converting" in record.getMessage():
                progress.set()

    handler = OnProgress()
    log = logging.getLogger("actors.provider_agents.local_model")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        task = asyncio.create_task(aconvert_gguf(gguf, dest, progress_s=0.5))
        async with asyncio.timeout(120):
            await progress.wait()
        assert _children_naming(dest), "the child process should be converting now"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert _children_naming(dest) == []
    assert not dest.exists()
