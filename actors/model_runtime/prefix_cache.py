"""Per-run KV prefix cache: the next turn of a run extends the previous transcript, so keep its K/V.

Entries are keyed by run id and hold the token ids whose K/V they contain and the adapter that computed
them: an entry is only reused by a request of the same adapter (one adapter's K/V are wrong for another).
A new request reuses the longest common prefix of *token ids* (never of text): when appended text changes
how the last tokens of the old transcript segment, the cache is cropped to the common prefix and only the
rest is computed.

Memory is bounded by an LRU over two budgets, cached tokens and K/V bytes; an entry that alone exceeds a
budget is not kept. Entries are *taken* out while a forward pass extends them (the worker thread owns them
exclusively) and put back afterwards.

Example:
    >>> common_prefix_len([1, 2, 3, 4], [1, 2, 5])
    2
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from schemas.sakana import BASE_ADAPTER_TOKEN


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def kv_nbytes(cache: DynamicCache) -> int:
    """Bytes held by a cache's key and value tensors."""
    total = 0
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        values = getattr(layer, "values", None)
        if isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor):
            total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return total


def crop_to(cache: DynamicCache, length: int) -> None:
    """Crop a cache in place so that it holds exactly its first ``length`` positions."""
    extra = cache.get_seq_length() - length
    if extra < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} positions to {length}")
    if extra:
        cache.crop(-extra)


@dataclass
class CacheEntry:
    """K/V of one run: ``token_ids[i]`` is the token whose K/V sit at position ``i``, computed by ``adapter``."""

    token_ids: list[int]
    cache: DynamicCache
    nbytes: int
    adapter: str = BASE_ADAPTER_TOKEN


@dataclass
class CacheStats:
    """Counters and current occupancy of a :class:`PrefixCache`."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0
    entries: int = 0
    tokens: int = 0
    bytes: int = 0
    reused_tokens: int = 0
    adapter_mismatches: int = 0


class PrefixCache:
    """LRU of per-run KV caches bounded by ``max_tokens`` and ``max_bytes`` (0 disables caching)."""

    def __init__(self, max_tokens: int, max_bytes: int) -> None:
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._stats = CacheStats()

    @property
    def enabled(self) -> bool:
        """Whether anything can be cached at all."""
        return self.max_tokens > 0 and self.max_bytes > 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Run ids held, least recently used first."""
        return list(self._entries)

    def take(self, key: str, adapter: str = BASE_ADAPTER_TOKEN) -> CacheEntry | None:
        """Remove and return the entry of ``key`` (the caller owns it until :meth:`put`), or ``None``.

        An entry computed by another adapter is a miss and stays (a later :meth:`put` of ``key`` replaces it).
        """
        entry = self._entries.get(key)
        if entry is not None and entry.adapter != adapter:
            self._stats.adapter_mismatches += 1
            entry = None
        else:
            self._entries.pop(key, None)
        if entry is None:
            self._stats.misses += 1
        else:
            self._stats.hits += 1
            self._stats.tokens -= len(entry.token_ids)
            self._stats.bytes -= entry.nbytes
        return entry

    def note_reuse(self, tokens: int) -> None:
        """Count ``tokens`` positions served from cache."""
        self._stats.reused_tokens += tokens

    def put(self, key: str, token_ids: list[int], cache: DynamicCache, adapter: str = BASE_ADAPTER_TOKEN) -> bool:
        """Keep ``cache`` (holding ``token_ids``, computed by ``adapter``) as the most recent entry; evict LRU
        entries over budget.

        Returns ``False`` (and keeps nothing) when the entry alone exceeds a budget.
        """
        old = self._entries.pop(key, None)
        if old is not None:
            self._stats.tokens -= len(old.token_ids)
            self._stats.bytes -= old.nbytes
        nbytes = kv_nbytes(cache)
        if len(token_ids) > self.max_tokens or nbytes > self.max_bytes:
            self._stats.rejected += 1
            self._stats.entries = len(self._entries)
            return False
        self._entries[key] = CacheEntry(list(token_ids), cache, nbytes, adapter)
        self._stats.tokens += len(token_ids)
        self._stats.bytes += nbytes
        while self._stats.tokens > self.max_tokens or self._stats.bytes > self.max_bytes:
            _, victim = self._entries.popitem(last=False)
            self._stats.tokens -= len(victim.token_ids)
            self._stats.bytes -= victim.nbytes
            self._stats.evictions += 1
        self._stats.entries = len(self._entries)
        return True

    def drop(self, key: str) -> None:
        """Forget ``key`` (e.g. when its run has finished)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._stats.tokens -= len(entry.token_ids)
            self._stats.bytes -= entry.nbytes
            self._stats.entries = len(self._entries)

    def drop_adapter(self, adapter: str) -> int:
        """Forget every entry computed by ``adapter`` (e.g. when it is unloaded); returns how many."""
        keys = [k for k, e in self._entries.items() if e.adapter == adapter]
        for k in keys:
            self.drop(k)
        return len(keys)

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        s = self._stats
        return CacheStats(s.hits, s.misses, s.evictions, s.rejected, len(self._entries), s.tokens, s.bytes,
                          s.reused_tokens, s.adapter_mismatches)
