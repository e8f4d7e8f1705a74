"""Idempotent agent calls: one provider call per call id, however often the coordinator asks.

A coordinator killed while an agent call is in flight never gets its receipt; the coordinator that resumes the
job (from its run journal) asks again with the same intent. The agent keys every call by what defines it, the
request id, turn, agent, role, messages and completion parameters (not ``deadline_ms``, which shrinks on every
retry), and answers a repeat from the call still running (joined) or from its receipt, kept ``ttl_s`` seconds
within ``max_bytes`` of receipts (least recently used evicted first). Failures are not kept: a repeat of a
failed call calls the provider again. With a ``shared`` store (:class:`~.shared_receipts.SharedReceipts`), a
repeat this process has no receipt for is looked up there before the provider is called, and every receipt made
here is written there: a repeat that reaches another replica of the agent is answered once too.

Example:
    >>> import asyncio
    >>> from schemas import AgentCallIntent, AgentCallReceipt, Message, Role
    >>> cache = CallCache(ttl_s=60.0, max_bytes=1 << 20)
    >>> intent = AgentCallIntent(request_id="q1", turn=0, agent_id=1, role=Role.WORKER,
    ...                          messages=[Message(role="user", content="hi")])
    >>> calls = []
    >>> async def work() -> AgentCallReceipt:
    ...     calls.append(1)
    ...     return AgentCallReceipt(request_id="q1", turn=0, agent_id=1, content="hello")
    >>> async def twice() -> list[str]:
    ...     return [(await cache.call(intent, work)).content for _ in range(2)]
    >>> asyncio.run(twice()), len(calls)
    (['hello', 'hello'], 1)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from schemas.coordination import AgentCallIntent, AgentCallReceipt


def call_key(intent: AgentCallIntent) -> str:
    """The call id of ``intent``: sha256 of everything that defines the call but its deadline."""
    return hashlib.sha256(msgspec.json.encode(msgspec.structs.replace(intent, deadline_ms=None))).hexdigest()


class ReceiptStore(Protocol):
    """Receipts kept beyond this process (:class:`~.shared_receipts.SharedReceipts`); neither method raises."""

    async def get(self, intent: AgentCallIntent, call_id: str) -> AgentCallReceipt | None: ...

    async def put(self, intent: AgentCallIntent, call_id: str, receipt: AgentCallReceipt) -> None: ...


@dataclass
class CallCacheStats:
    """Provider calls made, repeats joined while running, repeats answered from a kept receipt (``shared``: from
    the store shared with other replicas), evictions."""

    calls: int = 0
    joined: int = 0
    cached: int = 0
    shared: int = 0
    evicted: int = 0


class CallCache:
    """In-flight joins and kept receipts by call id (see the module docstring); ``ttl_s = 0`` keeps none."""

    def __init__(self, ttl_s: float = 600.0, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic, shared: ReceiptStore | None = None) -> None:
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self.shared = shared if ttl_s > 0 else None
        self._clock = clock
        self._running: dict[str, asyncio.Future[AgentCallReceipt]] = {}
        self._done: OrderedDict[str, tuple[float, int, AgentCallReceipt]] = OrderedDict()
        self._bytes = 0
        self.stats = CallCacheStats()

    @property
    def kept_bytes(self) -> int:
        """Bytes of receipts kept (their encoded size)."""
        return self._bytes

    def _lookup(self, key: str) -> AgentCallReceipt | None:
        entry = self._done.get(key)
        if entry is None:
            return None
        at, size, receipt = entry
        if self._clock() - at > self.ttl_s:
            del self._done[key]
            self._bytes -= size
            self.stats.evicted += 1
            return None
        self._done.move_to_end(key)
        return receipt

    def _keep(self, key: str, receipt: AgentCallReceipt) -> None:
        if self.ttl_s <= 0:
            return
        size = len(msgspec.json.encode(receipt))
        if size > self.max_bytes:
            return
        self._done[key] = (self._clock(), size, receipt)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, old, _) = self._done.popitem(last=False)
            self._bytes -= old
            self.stats.evicted += 1

    async def call(self, intent: AgentCallIntent, work: Callable[[], Awaitable[AgentCallReceipt]]) -> AgentCallReceipt:
        """The receipt of ``intent``: kept, joined, or made by ``work()`` (once per call id)."""
        key = call_key(intent)
        kept = self._lookup(key)
        if kept is not None:
            self.stats.cached += 1
            return kept
        running = self._running.get(key)
        if running is not None:
            self.stats.joined += 1
            return await asyncio.shield(running)
        future: asyncio.Future[AgentCallReceipt] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            receipt = await self.shared.get(intent, key) if self.shared is not None else None
            if receipt is not None:  # made by another replica
                self.stats.shared += 1
            else:
                self.stats.calls += 1
                receipt = await work()
                if self.shared is not None:
                    await self.shared.put(intent, key, receipt)
        except BaseException as e:
            if isinstance(e, Exception):
                future.set_exception(e)
            else:
                future.cancel()
            future.exception() if not future.cancelled() else None  # retrieved: no "never retrieved" warning
            raise
        else:
            self._keep(key, receipt)
            future.set_result(receipt)
            return receipt
        finally:
            self._running.pop(key, None)
