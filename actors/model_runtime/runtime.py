"""The async face of the engine: validate on the event loop, batch, run torch work on one worker thread.

Adapters load and unload on the same single worker thread as the forward passes, between batches, so a
load never races a forward pass and never changes what a request in flight uses.

Example:
    >>> rt = RouterRuntime(engine)  # doctest: +SKIP
    >>> await rt.start(); logits = await rt.route(request); await rt.close()  # doctest: +SKIP
    >>> info = await rt.load_adapter("model_iter_60.npy")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from actors.model_runtime.adapters import AdapterInfo, VectorSource
from actors.model_runtime.batcher import BatcherStats, DynamicBatcher
from actors.model_runtime.engine import PreparedRoute, RouterEngine
from actors.model_runtime.errors import ModelRuntimeError, RuntimeClosed
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
        # The one worker thread: batches and adapter loads run here, one at a time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-runtime")
        self._closed = False
        self.batcher: DynamicBatcher[PreparedRoute, RouteLogits] = DynamicBatcher(
            self._run,
            window_ms=s.batch_window_ms if window_ms is None else window_ms,
            max_batch=s.max_batch if max_batch is None else max_batch,
            max_queue=s.max_queue if max_queue is None else max_queue,
            executor=self._worker,
            stall_after_s=s.batcher_stall_after_s,
        )

    def _run(self, batch: list[PreparedRoute]) -> list[RouteLogits | ModelRuntimeError]:
        return self.engine.run(batch)

    async def start(self) -> None:
        """Start the batcher."""
        await self.batcher.start()

    async def route(self, request: RouteRequest) -> RouteLogits:
        """Route one request (batched with concurrent ones); raises :class:`ModelRuntimeError` on bad input."""
        return await self.batcher.submit(self.engine.prepare(request))

    async def route_sized(self, request: RouteRequest) -> tuple[RouteLogits, int, float]:
        """:meth:`route`, with the size of the batch it ran in and the seconds it queued before it."""
        return await self.batcher.submit_sized(self.engine.prepare(request))

    async def load_adapter(self, source: VectorSource) -> AdapterInfo:
        """Load a router vector as an adapter on the worker thread (between batches); see
        :meth:`RouterEngine.load_adapter` for errors."""
        if self._closed:
            raise RuntimeClosed()
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.engine.load_adapter, source)

    async def unload_adapter(self, token: str) -> None:
        """Unload an adapter on the worker thread (between batches); requests already queued for it fail as
        not served. See :meth:`RouterEngine.unload_adapter` for errors."""
        if self._closed:
            raise RuntimeClosed()
        await asyncio.get_running_loop().run_in_executor(self._worker, self.engine.unload_adapter, token)

    async def close(self) -> None:
        """Finish queued work and stop the worker thread."""
        self._closed = True
        await self.batcher.close()
        # never block the event loop on a batch still running: wait for the worker in a helper thread
        await asyncio.to_thread(self._worker.shutdown, wait=True)

    def stats(self) -> RuntimeStats:
        """Batching and cache counters."""
        return RuntimeStats(self.batcher.stats(), self.engine.cache.stats())
