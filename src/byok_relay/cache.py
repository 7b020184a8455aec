"""The one small invalidating cache behind tokens, keys, scoped tokens and budgets.

Entries live for `ttl` seconds; `drop`/`drop_where`/`clear` act on this process only and
bump an epoch, so a database read that raced with an invalidation is not cached
(`put_if_current`). The invalidation bus (`bus.py`) lowers `ttl` while it cannot hear
other instances and clears every registered cache when it (re)subscribes.

Concurrent misses of one key share one read: when an entry expires under load, every
request in flight misses at once, and without this each would make its own database
read (or HSM unwrap) for the same row. An invalidation detaches the read in flight, so
a request that arrives after it never joins a read that started before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 100_000


class InvalidatingCache(Generic[K, V]):
    __slots__ = (
        "_entries",
        "_loading",
        "configured_ttl",
        "epoch",
        "max_entries",
        "name",
        "reads",
        "shared",
        "ttl",
    )

    def __init__(self, name: str, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.name = name
        self.configured_ttl = ttl
        #: Effective TTL; the bus caps it while cross-instance invalidations cannot arrive.
        self.ttl = ttl
        self.max_entries = max_entries
        #: Bumped by every invalidation; read it before a lookup, pass it to put_if_current.
        self.epoch = 0
        self._entries: dict[K, tuple[float, V]] = {}
        #: Reads in flight, shared by every request that misses the same key meanwhile.
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        #: Misses that made a read, and misses that waited for one in flight (GET /metrics).
        self.reads = 0
        self.shared = 0

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    async def load(self, key: K, read: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, or `read()`'s (cached unless None, or unless an invalidation
        arrived while it was being read). Misses of the same key meanwhile wait for this
        read instead of making their own; a waiter that is cancelled (its client left)
        leaves the read running for the others."""
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self._loading.get(key)
        if pending is None:
            self.reads += 1
            pending = asyncio.ensure_future(self._read(key, read, self.epoch))
            pending.add_done_callback(_retrieve)
            self._loading[key] = pending
        else:
            self.shared += 1
        return await asyncio.shield(pending)

    async def _read(self, key: K, read: Callable[[], Awaitable[V | None]], epoch: int) -> V | None:
        try:
            value = await read()
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
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
        self._loading.clear()  # reads in flight may predate this: later misses read anew

    def drop_where(self, pred: Callable[[K, V], bool]) -> None:
        self.epoch += 1
        self._loading.clear()
        for key in [k for k, (_, v) in self._entries.items() if pred(k, v)]:
            del self._entries[key]

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._loading.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _retrieve(read: asyncio.Future[Any]) -> None:
    # A failed read whose waiters all left is not an "exception never retrieved": each
    # waiter that stayed got the error itself.
    if not read.cancelled():
        read.exception()
