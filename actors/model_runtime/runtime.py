"""The async face of the engine: validate on the event loop, batch, run torch work on one worker thread.

Example:
    >>> rt = RouterRuntime(engine)  # doctest: +SKIP
    >>> await rt.start(); logits = await rt.route(request); await rt.close()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.model_runtime.batcher import BatcherStats, DynamicBatcher
from actors.model_runtime.engine import PreparedRoute, RouterEngine
from actors.model_runtime.errors import ModelRuntimeError
from actors.model_runtime.prefix_cache import CacheStats
from schemas.routing import RouteLogits, RouteRequest


@dataclass
class RuntimeStats:
    """Batching and prefix-cache counters of a :class:`RouterRuntime`."""

    batcher: BatcherStats
    cache: CacheStats


class RouterRuntime:
    """Routes requests through a :class:`DynamicBatcher` onto a :class:`RouterEngine`.

    Bad requests (wrong adapter, too short, too long) fail fast with a :class:`ModelRuntimeError` before
    queueing; the engine's prefix cache is only touched by the worker thread.
    """

    def __init__(self, engine: RouterEngine, *, window_ms: float | None = None, max_batch: int | None = None,
                 max_queue: int | None = None) -> None:
        s = engine.settings
        self.engine = engine
        self.batcher: DynamicBatcher[PreparedRoute, RouteLogits] = DynamicBatcher(
            self._run,
            window_ms=s.batch_window_ms if window_ms is None else window_ms,
            max_batch=s.max_batch if max_batch is None else max_batch,
            max_queue=s.max_queue if max_queue is None else max_queue,
        )

    def _run(self, batch: list[PreparedRoute]) -> list[RouteLogits | ModelRuntimeError]:
        return self.engine.run(batch)

    async def start(self) -> None:
        """Start the batcher."""
        await self.batcher.start()

    async def route(self, request: RouteRequest) -> RouteLogits:
        """Route one request (batched with concurrent ones); raises :class:`ModelRuntimeError` on bad input."""
        return await self.batcher.submit(self.engine.prepare(request))

    async def close(self) -> None:
        """Finish queued work and stop the worker thread."""
        await self.batcher.close()

    def stats(self) -> RuntimeStats:
        """Batching and cache counters."""
        return RuntimeStats(self.batcher.stats(), self.engine.cache.stats())
