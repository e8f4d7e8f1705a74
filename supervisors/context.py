"""The handle a supervised child receives.

A well-behaved child heartbeats while it works and stops taking new work once ``draining`` is set::

    async def worker(ctx: ChildContext) -> None:
        while not ctx.is_draining:
            job = await next_job()          # bounded wait, so the loop re-checks draining
            ctx.heartbeat()
            await handle(job)               # in-flight work finishes during a graceful stop
        ctx.logger.info("drained")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from typing import Any


class _MergingAdapter(logging.LoggerAdapter[logging.Logger]):
    """LoggerAdapter that merges its fields into the caller's ``extra`` instead of replacing them."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class ChildContext:
    """Per-run handle of a child: its name, a ``draining`` event, ``heartbeat()`` and a logger.

    A fresh context is built for every (re)start. ``restart_count`` is how many times this child was
    restarted before this run.
    """

    def __init__(
        self,
        *,
        name: str,
        supervisor: str,
        restart_count: int,
        beat: Callable[[], None],
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self.supervisor = supervisor
        self.restart_count = restart_count
        self.draining = asyncio.Event()
        self.logger: logging.LoggerAdapter[logging.Logger] = _MergingAdapter(
            logger, {"supervisor": supervisor, "child": name}
        )
        self._beat = beat

    def heartbeat(self) -> None:
        """Tell the supervisor this child is alive (resets its liveness deadline)."""
        self._beat()

    @property
    def is_draining(self) -> bool:
        """True once the supervisor asked this child to finish in-flight work and return."""
        return self.draining.is_set()

    async def wait_draining(self) -> None:
        """Block until the supervisor asks this child to drain."""
        await self.draining.wait()
