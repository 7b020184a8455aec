"""Cross-instance cache invalidation over Redis pub/sub.

Every instance caches tokens, scoped tokens, opened keys and budgets (`cache.py`) for
CACHE_TTL_S. A change is *invalidated* here by kind: `invalidate(kind, *args)` runs this
process's handlers for that kind at once and announces it; every other instance's
subscriber runs the same handlers, typically within a few milliseconds. So a revoke on
instance A is honoured by instance B well within a second, even with a long CACHE_TTL_S.
Components register their handlers (`register`) and caches (`register_cache`) by name
at start; the bus knows nothing about what they hold.

- What travels: only an HMAC token hash, a user id and a provider name. Never a token,
  never a key.
- Message: one line per invalidation, `<origin> <kind> <arg>…`, several lines batched in
  one PUBLISH; the kinds in use are listed in `services.py` where they are registered.
- Announcing never blocks a request: lines are queued and a background task publishes
  them (retrying briefly if Redis hiccups).
- Fallback: while the subscriber is not connected (Redis down, not yet subscribed), the
  cache TTL is capped at FALLBACK_TTL_S, and on every (re)subscription the caches are
  cleared because messages may have been missed meanwhile. Without REDIS_URL there is
  no bus and CACHE_TTL_S alone bounds staleness (default 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from byok_relay.cache import InvalidatingCache
from byok_relay.logs import log_event

FALLBACK_TTL_S = 1.0
#: How long an announcement is retried before it is given up (the TTL covers the rest).
PUBLISH_DEADLINE_S = 1.0
_RECONNECT_MIN_S = 0.2
_RECONNECT_MAX_S = 5.0
_WARN_EVERY_S = 30.0

Handler = Callable[..., None]


class InvalidationBus:
    def __init__(self, redis_url: str | None, channel: str) -> None:
        self.url = redis_url
        self.channel = channel
        self.origin = os.urandom(6).hex()  # skip our own messages (already applied)
        self.connected = False
        self.received = 0
        self._handlers: dict[str, tuple[int, list[Handler]]] = {}
        self._caches: list[InvalidatingCache[Any, Any]] = []
        self._queue: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
        self._last_warning: dict[str, float] = {}

    # --- registration (at start) -------------------------------------------------
    def register(self, kind: str, nargs: int, handler: Handler) -> None:
        """Run `handler(*args)` for every invalidation of `kind` (here and remote)."""
        known = self._handlers.setdefault(kind, (nargs, []))
        if known[0] != nargs:
            raise ValueError(f"invalidation kind {kind!r} takes {known[0]} arguments")
        known[1].append(handler)

    def register_cache(self, cache: InvalidatingCache[Any, Any]) -> None:
        """A cache whose TTL the bus caps while deaf and which it clears on resubscribe."""
        self._caches.append(cache)
        self._set_ttl(connected=self.connected or not self.url)

    @property
    def enabled(self) -> bool:
        return self.url is not None

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        if not self.url:
            return
        import redis.asyncio as redis

        options: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 1.0,
            "health_check_interval": 2,  # PING an idle subscription: notice a dead server
        }
        if not self.url.startswith("unix://"):
            options["socket_keepalive"] = True
        self._redis = redis.Redis.from_url(self.url, **options)
        self._queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._send())]

    async def stop(self) -> None:
        if self._queue is not None and not self._queue.empty():
            # Give pending announcements a moment to leave before we go.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), timeout=1.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def _drained(self) -> None:
        assert self._queue is not None
        await self._queue.join()

    # --- publishing --------------------------------------------------------------
    def invalidate(self, kind: str, *args: str) -> None:
        """Apply an invalidation here at once and announce it to the other instances.
        Call it after the database change has committed. Never blocks, never raises."""
        self._run(kind, args)
        self.announce(kind, *args)

    def announce(self, kind: str, *args: str) -> None:
        """Queue an invalidation for the other instances only."""
        known = self._handlers.get(kind)
        if self._queue is None or known is None or known[0] != len(args):
            return
        if any(not a or any(c.isspace() for c in a) for a in args):
            return  # ids, hashes and provider names never contain whitespace
        self._queue.put_nowait(" ".join((self.origin, kind, *args)))

    def _run(self, kind: str, args: tuple[str, ...] | list[str]) -> bool:
        known = self._handlers.get(kind)
        if known is None or known[0] != len(args):
            return False
        for handler in known[1]:
            handler(*args)
        return True

    async def _send(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            first = await queue.get()
            lines = [first]
            while not queue.empty():
                lines.append(queue.get_nowait())
            message = "\n".join(dict.fromkeys(lines))  # batched, duplicates removed
            deadline = time.monotonic() + PUBLISH_DEADLINE_S
            try:
                while True:
                    try:
                        await self._redis.publish(self.channel, message)
                        break
                    except Exception as exc:
                        if time.monotonic() >= deadline:
                            self._warn(
                                "publish",
                                "cache invalidation not published; other instances "
                                "re-read within CACHE_TTL_S",
                                exc,
                            )
                            break
                        await asyncio.sleep(0.1)
            finally:
                for _ in lines:
                    queue.task_done()

    # --- receiving ---------------------------------------------------------------
    async def _listen(self) -> None:
        delay = _RECONNECT_MIN_S
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._on_connected()
                delay = _RECONNECT_MIN_S
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_disconnected(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def apply(self, data: bytes | str) -> None:
        """Apply one received message (one or more invalidation lines)."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) < 3 or parts[0] == self.origin:
                continue
            if self._run(parts[1], parts[2:]):
                self.received += 1

    def _on_connected(self) -> None:
        # Messages sent while we were not subscribed are lost: start from a clean cache.
        self._clear_caches()
        if not self.connected:
            self.connected = True
            self._set_ttl(connected=True)
            log_event("cache invalidation bus subscribed", channel=self.channel)

    def _on_disconnected(self, exc: Exception) -> None:
        was_connected = self.connected
        self.connected = False
        self._set_ttl(connected=False)
        if was_connected:
            self._clear_caches()
        self._warn(
            "listen",
            f"cache invalidation bus unavailable; caches held at most {FALLBACK_TTL_S:g} s "
            "until Redis returns",
            exc,
        )

    def _clear_caches(self) -> None:
        for cache in self._caches:
            cache.clear()

    def _set_ttl(self, *, connected: bool) -> None:
        # Without REDIS_URL there is nobody to hear: CACHE_TTL_S alone bounds staleness.
        for cache in self._caches:
            configured = cache.configured_ttl
            cache.ttl = configured if connected else min(configured, FALLBACK_TTL_S)

    def _warn(self, what: str, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(what, -_WARN_EVERY_S - 1) > _WARN_EVERY_S:
            self._last_warning[what] = now
            log_event(message, logging.WARNING, error_type=type(exc).__name__, error=str(exc)[:200])
