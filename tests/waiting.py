"""Waiting in tests: poll a condition under a hang guard (a guard against hangs, not a timing assertion)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(pred: Callable[[], object], what: str, *, guard_s: float = 60.0, poll_s: float = 0.02) -> None:
    """Return once ``pred()`` is true; raise ``AssertionError`` naming ``what`` after ``guard_s`` seconds."""
    end = time.monotonic() + guard_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"not reached within the hang guard: {what}")
        await asyncio.sleep(poll_s)
