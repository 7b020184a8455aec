"""The one small invalidating cache behind tokens, keys, scoped tokens and budgets.

Entries live for `ttl` seconds; `drop`/`drop_where`/`clear` act on this process only and
bump an epoch, so a database read that raced with an invalidation is not cached
(`put_if_current`). The invalidation bus (`bus.py`) lowers `ttl` while it cannot hear
other instances and clears every registered cache when it (re)subscribes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 100_000


class InvalidatingCache(Generic[K, V]):
    __slots__ = ("_entries", "configured_ttl", "epoch", "max_entries", "name", "ttl")

    def __init__(self, name: str, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.name = name
        self.configured_ttl = ttl
        #: Effective TTL; the bus caps it while cross-instance invalidations cannot arrive.
        self.ttl = ttl
        self.max_entries = max_entries
        #: Bumped by every invalidation; read it before a lookup, pass it to put_if_current.
        self.epoch = 0
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    async def load(self, key: K, read: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, or `read()`'s (cached unless None, or unless an invalidation
        arrived while it was being read)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        epoch = self.epoch
        value = await read()
        if value is not None:
            self.put_if_current(key, value, epoch)
        return value

    def put_if_current(self, key: K, value: V, epoch: int) -> None:
        """Cache `value` unless an invalidation arrived since `epoch` was read."""
        if epoch != self.epoch:
            return
        entries = self._entries
        if len(entries) >= self.max_entries and key not in entries:
            entries.pop(next(iter(entries)))  # the oldest (dicts keep insertion order)
        entries[key] = (time.monotonic(), value)

    def drop(self, key: K) -> None:
        self.epoch += 1
        self._entries.pop(key, None)

    def drop_where(self, pred: Callable[[K, V], bool]) -> None:
        self.epoch += 1
        for key in [k for k, (_, v) in self._entries.items() if pred(k, v)]:
            del self._entries[key]

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
