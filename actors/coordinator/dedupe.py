"""Idempotent request handling: one run per request id, its result shared by every duplicate.

Semantics (per coordinator process):

- The first request with a given id starts the run.
- A duplicate arriving **while it runs** waits for the same run and gets the same result.
- A duplicate arriving **after it finished** gets the cached result, for ``ttl_s`` seconds, among the
  ``capacity`` most recently finished ids (LRU); older ids are forgotten and would run again.
- Memory is bounded by bytes too: with ``max_bytes`` and ``size`` (bytes of one value), the least recently
  used results are evicted until the cached values total at most ``max_bytes``; a value larger than
  ``max_entry_bytes`` is not cached (its id keeps only its fingerprint, so a conflicting reuse is still
  refused, and a duplicate runs again).
- A duplicate whose payload differs (another query or budget under a reused id) is refused with
  :class:`~actors.coordinator.errors.DuplicateRequestConflict`, in flight or cached.
- A run that raised is not cached: every waiter gets the exception and the next duplicate runs afresh.
- A waiter that is cancelled (its caller went away) does not cancel the shared run.

Scope: the cache lives in one coordinator process. Coordinators in a queue group each see a share of
the requests; across them, request/reply runs claim their id in the run journal and store their result
(:meth:`~actors.coordinator.jobs.JobIntake.run_claimed`, setting ``reply_claims``), so a duplicate sent to
another node waits for that run's stored result there instead of running again.

Example:
    >>> import asyncio
    >>> d: Deduper[str] = Deduper(capacity=10, ttl_s=60.0, clock=lambda: 0.0)
    >>> async def work() -> str: return "result"
    >>> asyncio.run(d.run("q1", "fp", work))
    'result'
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from actors.coordinator.errors import DuplicateRequestConflict

V = TypeVar("V")


@dataclass
class DedupeStats:
    """Counters: runs started, duplicates joined in flight, served from cache, conflicts refused."""

    started: int = 0
    joined: int = 0
    cached: int = 0
    conflicts: int = 0
    evicted: int = 0
    too_large: int = 0


class Deduper(Generic[V]):
    """Run each key once; share in-flight runs; cache finished results (bounded LRU with a TTL)."""

    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float], *, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None, max_entry_bytes: int | None = None) -> None:
        if capacity < 0 or ttl_s < 0:
            raise ValueError(f"capacity and ttl_s must be >= 0, got {capacity} and {ttl_s}")
        if max_bytes is not None and (max_bytes < 0 or size is None):
            raise ValueError("max_bytes needs a size function and must be >= 0")
        self.capacity, self.ttl_s = capacity, ttl_s
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes if max_entry_bytes is not None else max_bytes
        self._size = size
        self.bytes = 0  # bytes of the cached values (when a size function is given)
        self._clock = clock
        self._inflight: dict[str, tuple[str, asyncio.Future[V]]] = {}
        self._done: OrderedDict[str, tuple[str, float, V | None, int]] = OrderedDict()
        self._tasks: set[asyncio.Future[V]] = set()
        self.stats = DedupeStats()

    def __len__(self) -> int:
        return len(self._done)

    @property
    def inflight(self) -> int:
        """Runs in progress."""
        return len(self._inflight)

    def _lookup(self, key: str) -> tuple[str, V] | None:
        entry = self._done.get(key)
        if entry is None:
            return None
        fingerprint, stored_at, value, nbytes = entry
        if self._clock() - stored_at > self.ttl_s:
            del self._done[key]
            self.bytes -= nbytes
            self.stats.evicted += 1
            return None
        self._done.move_to_end(key)
        return fingerprint, value  # type: ignore[return-value]

    def _store(self, key: str, fingerprint: str, value: V) -> None:
        if self.capacity == 0:
            return
        nbytes = self._size(value) if self._size is not None else 0
        kept: V | None = value
        if self.max_entry_bytes is not None and nbytes > self.max_entry_bytes:
            kept, nbytes = None, 0  # too large to cache: remember only the fingerprint
            self.stats.too_large += 1
        old = self._done.pop(key, None)
        if old is not None:
            self.bytes -= old[3]
        self._done[key] = (fingerprint, self._clock(), kept, nbytes)
        self.bytes += nbytes
        while len(self._done) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
            _, (_, _, _, freed) = self._done.popitem(last=False)
            self.bytes -= freed
            self.stats.evicted += 1

    async def run(self, key: str, fingerprint: str, work: Callable[[], Awaitable[V]]) -> V:
        """The result for ``key``: joined, cached, or computed by ``work()`` (see the module docstring)."""
        cached = self._lookup(key)
        if cached is not None:
            if cached[0] != fingerprint:
                self.stats.conflicts += 1
                raise DuplicateRequestConflict(key)
            if cached[1] is not None:
                self.stats.cached += 1
                return cached[1]
            del self._done[key]  # only its fingerprint was kept (too large): run it again
        inflight = self._inflight.get(key)
        if inflight is not None:
            if inflight[0] != fingerprint:
                self.stats.conflicts += 1
                raise DuplicateRequestConflict(key)
            self.stats.joined += 1
            return await asyncio.shield(inflight[1])
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (fingerprint, future)
        self.stats.started += 1
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._settle(key, fingerprint, future, t))
        return await asyncio.shield(future)

    def cancel_all(self) -> int:
        """Cancel every run still in progress (a node stopping past its drain timeout: their work is handed
        to another node, so it must not go on here). Returns how many were cancelled."""
        running = [t for t in self._tasks if not t.done()]
        for task in running:
            task.cancel()
        return len(running)

    def _settle(self, key: str, fingerprint: str, future: asyncio.Future[V], task: asyncio.Future[V]) -> None:
        self._inflight.pop(key, None)
        self._tasks.discard(task)
        if task.cancelled():
            future.cancel()
            return
        exc = task.exception()
        if exc is not None:
            future.set_exception(exc)
            # every waiter may have gone; mark the exception retrieved so asyncio does not log it
            future.exception()
            return
        value = task.result()
        self._store(key, fingerprint, value)
        future.set_result(value)
