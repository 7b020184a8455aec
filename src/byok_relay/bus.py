"""Cross-instance cache invalidation over Redis pub/sub.

Every instance caches tokens (`auth.py`) and opened keys (`vault.py`) for CACHE_TTL_S.
When one instance revokes or rotates a token, deletes a user, or stores, replaces or
deletes a key, it drops its own entry and *announces* the change here; every instance's
subscriber drops the same entries, typically within a few milliseconds. So a revoke on
instance A is honoured by instance B well within a second, even with a long CACHE_TTL_S.

- What travels: only an HMAC token hash, a user id and a provider name. Never a token,
  never a key.
- Message: one line per invalidation, `<origin> <kind> <arg>…`, several lines batched in
  one PUBLISH; kinds are `token <hash>`, `user <user_id>`, `key <user_id> <provider>`.
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
from typing import Any

from byok_relay.auth import Authenticator
from byok_relay.logs import log_event
from byok_relay.usage import UsageRecorder
from byok_relay.vault import Vault

FALLBACK_TTL_S = 1.0
#: How long an announcement is retried before it is given up (the TTL covers the rest).
PUBLISH_DEADLINE_S = 1.0
_RECONNECT_MIN_S = 0.2
_RECONNECT_MAX_S = 5.0
_WARN_EVERY_S = 30.0
_KINDS = {"token": 1, "user": 1, "key": 2}


class InvalidationBus:
    def __init__(
        self,
        redis_url: str | None,
        channel: str,
        auth: Authenticator,
        vault: Vault,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.url = redis_url
        self.channel = channel
        self._auth = auth
        self._vault = vault
        self._usage = usage
        self.origin = os.urandom(6).hex()  # skip our own messages (already applied)
        self.connected = False
        self.received = 0
        self._queue: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
        self._last_warning: dict[str, float] = {}
        if redis_url:
            auth.announce = self.announce
            vault.announce = self.announce
            self._set_ttl(connected=False)

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
    def announce(self, kind: str, *args: str) -> None:
        """Queue an invalidation for the other instances (never blocks, never raises)."""
        if self._queue is None or _KINDS.get(kind) != len(args):
            return
        if any(not a or any(c.isspace() for c in a) for a in args):
            return  # ids, hashes and provider names never contain whitespace
        self._queue.put_nowait(" ".join((self.origin, kind, *args)))

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
            kind, args = parts[1], parts[2:]
            if _KINDS.get(kind) != len(args):
                continue
            self.received += 1
            if kind == "token":
                self._auth.drop_token(args[0])
            elif kind == "key":
                self._vault.drop(args[0], args[1])
            elif kind == "user":
                self._auth.drop_user(args[0])
                self._vault.drop_user(args[0])
                if self._usage is not None:
                    # Rows of an erased user still queued here must not be written later.
                    self._usage.forget_user(args[0])

    def _on_connected(self) -> None:
        # Messages sent while we were not subscribed are lost: start from a clean cache.
        self._auth.clear()
        self._vault.clear()
        if not self.connected:
            self.connected = True
            self._set_ttl(connected=True)
            log_event("cache invalidation bus subscribed", channel=self.channel)

    def _on_disconnected(self, exc: Exception) -> None:
        was_connected = self.connected
        self.connected = False
        self._set_ttl(connected=False)
        if was_connected:
            self._auth.clear()
            self._vault.clear()
        self._warn(
            "listen",
            f"cache invalidation bus unavailable; caches held at most {FALLBACK_TTL_S:g} s "
            "until Redis returns",
            exc,
        )

    def _set_ttl(self, *, connected: bool) -> None:
        for cache in (self._auth, self._vault):
            configured = cache.configured_ttl
            cache.ttl = configured if connected else min(configured, FALLBACK_TTL_S)

    def _warn(self, what: str, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(what, -_WARN_EVERY_S - 1) > _WARN_EVERY_S:
            self._last_warning[what] = now
            log_event(message, logging.WARNING, error_type=type(exc).__name__, error=str(exc)[:200])
