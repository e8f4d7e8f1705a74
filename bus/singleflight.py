"""Single flight: concurrent callers asking for the same key share one call instead of making one each.

Used where a burst of requests would otherwise repeat one expensive remote call: the coordinator's
placement client asks the registry once per key, the registry loads an adapter once per runtime.

Example:
    >>> import asyncio
    >>> async def demo() -> list[int]:
    ...     calls = []
    ...     async def fetch() -> int:
    ...         calls.append(1)
    ...         await asyncio.sleep(0.01)
    ...         return 42
    ...     flight: SingleFlight[str, int] = SingleFlight()
    ...     out = await asyncio.gather(*(flight.do("k", fetch) for _ in range(5)))
    ...     return [*out, len(calls)]
    >>> asyncio.run(demo())
    [42, 42, 42, 42, 42, 1]
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One call in flight per key; every caller of that key gets its result or its exception.

    If the caller that started the call is cancelled, the call is cancelled for everyone sharing it.
    """

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def in_flight(self, key: K) -> bool:
        """Whether a call for ``key`` is running."""
        return key in self._calls

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """``await fn()`` unless a call for ``key`` is already running, in which case wait for that one."""
        fut = self._calls.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._calls[key] = fut
            try:
                fut.set_result(await fn())
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - delivered to every caller sharing the call
                fut.set_exception(e)
                fut.exception()  # retrieved here: waiters re-raise it, asyncio logs nothing
            finally:
                del self._calls[key]
        return await asyncio.shield(fut)
