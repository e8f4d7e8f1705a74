"""Dynamic batching: requests arriving within a short window run as one call on a single worker thread.

The first request of a batch opens a window of ``window_ms``; requests arriving before it closes (up to
``max_batch``) join the batch. While the worker runs a batch, new requests queue up and form the next one,
so under load batches fill without waiting. The batch function runs off the event loop, on one worker
thread, so the actor keeps serving (and rejecting bad input) while tensors are crunched.

Example:
    >>> import asyncio
    >>> async def demo() -> list[int]:
    ...     b = DynamicBatcher(lambda xs: [x * 2 for x in xs], window_ms=5, max_batch=8, max_queue=16)
    ...     await b.start()
    ...     out = await asyncio.gather(*(b.submit(i) for i in range(3)))
    ...     await b.close()
    ...     return list(out)
    >>> asyncio.run(demo())
    [0, 2, 4]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from actors.model_runtime.errors import Overloaded, RuntimeClosed
from supervisors.watch import LoopWatch

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatcherStats:
    """Counters of a :class:`DynamicBatcher`."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    rejected: int = 0
    queued: int = 0
    in_flight: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float
    batch_size: int = 0  # the size of the batch it ran in (set when its batch starts)
    waited_s: float = 0.0  # queued before its batch started


class DynamicBatcher(Generic[T, R]):
    """Collects items into batches and runs ``run(batch)`` on a single worker thread.

    ``run`` returns one result per item, in order; a result that is a ``BaseException`` is raised to that
    item's submitter only. If ``run`` itself raises, every item of the batch gets the exception.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R | BaseException]], *, window_ms: float, max_batch: int,
                 max_queue: int, executor: ThreadPoolExecutor | None = None, keep_sizes: int = 1024,
                 stall_after_s: float = 900.0) -> None:
        self._run = run
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-runtime")
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stats = BatcherStats()
        self._keep_sizes = keep_sizes
        # the collecting loop, watched: it died, or ran no batch for stall_after_s while items wait
        self.watch = LoopWatch("model runtime batcher", stall_after_s=stall_after_s, pending=self._waiting)

    async def _waiting(self) -> int:
        return self._queue.qsize() + self._stats.in_flight

    async def start(self) -> None:
        """Start the collecting loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="model-runtime-batcher")
            self.watch.attach(self._task)

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result once its batch ran. Raises ``Overloaded`` when the queue is full."""
        return (await self.submit_sized(item))[0]

    async def submit_sized(self, item: T) -> tuple[R, int, float]:
        """Like :meth:`submit`, with the size of the batch ``item`` ran in and the seconds it queued."""
        if self._closed:
            raise RuntimeClosed()
        if self._queue.qsize() >= self.max_queue:
            self._stats.rejected += 1
            raise Overloaded(self._queue.qsize(), self.max_queue)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, fut, time.monotonic())
        self._queue.put_nowait(pending)
        result = await fut
        return result, pending.batch_size, pending.waited_s

    async def close(self) -> None:
        """Stop taking items, finish what is queued, then stop the loop and the worker thread."""
        self._closed = True
        while not self._queue.empty() or self._stats.in_flight:
            await asyncio.sleep(0.001)
        self.watch.detach()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        s = self._stats
        return BatcherStats(s.batches, s.items, s.largest_batch, s.rejected, self._queue.qsize(), s.in_flight,
                            list(s.batch_sizes))

    async def _collect(self) -> list[_Pending[T, R]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.arrived + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [p for p in batch if not p.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self._stats.in_flight = len(batch)
            started = time.monotonic()
            for p in batch:
                p.batch_size, p.waited_s = len(batch), started - p.arrived
            try:
                results = await loop.run_in_executor(self._executor, self._run, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # noqa: BLE001 - delivered to every submitter of the failed batch
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p, r in zip(batch, results, strict=True):
                    if p.future.done():
                        continue
                    if isinstance(r, BaseException):
                        p.future.set_exception(r)
                    else:
                        p.future.set_result(r)
            finally:
                self._stats.in_flight = 0
            self._stats.batches += 1
            self._stats.items += len(batch)
            self._stats.largest_batch = max(self._stats.largest_batch, len(batch))
            self._stats.batch_sizes = [*self._stats.batch_sizes[-(self._keep_sizes - 1):], len(batch)]
            self.watch.progress()
