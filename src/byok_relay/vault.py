"""Provider keys: sealed before they are stored, opened once and cached briefly.

The cache holds decrypted keys in this process's memory for CACHE_TTL_S so the hot path
does no database read and no decryption for a key used in the last seconds. A key stored,
replaced or deleted here is dropped at once, and announced on the invalidation bus
(`bus.py`) so every other instance drops it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from byok_relay.crypto import DecryptionError, KeyCipher, SealedKey, key_hint
from byok_relay.logs import log_event
from byok_relay.storage import KeyInfo, Storage

_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class OpenKey:
    secret: str
    base_url: str | None


class KeyUnreadable(Exception):
    """A stored key exists but cannot be decrypted with the configured secrets."""


class Vault:
    def __init__(self, storage: Storage, cipher: KeyCipher, cache_ttl_s: float) -> None:
        self._storage = storage
        self._cipher = cipher
        self.configured_ttl = cache_ttl_s
        #: Effective TTL; the invalidation bus lowers it while it cannot hear other instances.
        self.ttl = cache_ttl_s
        self._cache: dict[tuple[str, str], tuple[float, OpenKey]] = {}
        # Bumped by every invalidation: a read that raced with one is not cached.
        self._epoch = 0
        #: Set by the invalidation bus: tells the other instances what to forget.
        self.announce: Callable[..., None] | None = None

    async def get(self, user_id: str, provider: str) -> OpenKey | None:
        cache_key = (user_id, provider)
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        epoch = self._epoch
        stored = await self._storage.get_key(user_id, provider)
        if stored is None:
            self._cache.pop(cache_key, None)
            return None
        try:
            secret = self._cipher.open(
                SealedKey(stored.key_version, stored.ciphertext), user_id, provider
            )
        except DecryptionError as exc:
            log_event("stored key cannot be decrypted", 40, provider=provider, reason=str(exc))
            raise KeyUnreadable(str(exc)) from None
        opened = OpenKey(secret, stored.base_url)
        if epoch == self._epoch:  # else an invalidation arrived during the read
            if len(self._cache) >= _CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
            self._cache[cache_key] = (now, opened)
        return opened

    async def put(self, user_id: str, provider: str, secret: str, base_url: str | None) -> None:
        sealed = self._cipher.seal(secret, user_id, provider)
        await self._storage.put_key(
            user_id,
            provider,
            sealed.version,
            sealed.blob,
            key_hint(secret),
            base_url,
            int(time.time() * 1000),
        )
        self.forget(user_id, provider)

    async def delete(self, user_id: str, provider: str) -> bool:
        deleted = await self._storage.delete_key(user_id, provider)
        self.forget(user_id, provider)
        return deleted

    async def list(self, user_id: str) -> list[KeyInfo]:
        return await self._storage.list_keys(user_id)

    # Call forget* after the database change has committed: here and on every instance.
    def forget(self, user_id: str, provider: str) -> None:
        self.drop(user_id, provider)
        if self.announce is not None:
            self.announce("key", user_id, provider)

    def forget_user(self, user_id: str) -> None:
        self.drop_user(user_id)
        if self.announce is not None:
            self.announce("user", user_id)

    # drop* and clear act on this process only (the bus calls them).
    def drop(self, user_id: str, provider: str) -> None:
        self._epoch += 1
        self._cache.pop((user_id, provider), None)

    def drop_user(self, user_id: str) -> None:
        self._epoch += 1
        for key in [k for k in self._cache if k[0] == user_id]:
            del self._cache[key]

    def clear(self) -> None:
        self._epoch += 1
        self._cache.clear()
