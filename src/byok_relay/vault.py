"""Provider keys: sealed before they are stored, opened once and cached briefly.

The cache holds decrypted keys in this process's memory for CACHE_TTL_S so the hot path
does no database read and no decryption for a key used in the last seconds. Sealing and
opening go through the key custody (`custody/`: the local secret or an HSM, SPEC §11). A key stored,
replaced or deleted here is invalidated through the bus (`bus.py`): dropped here at once
and on every other instance within milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from byok_relay.bus import InvalidationBus
from byok_relay.cache import InvalidatingCache
from byok_relay.crypto import DecryptionError, SealedKey, key_hint
from byok_relay.custody import KeyCustody
from byok_relay.logs import log_event
from byok_relay.storage import KeyInfo, Storage


@dataclass(frozen=True, slots=True)
class OpenKey:
    secret: str
    base_url: str | None


class KeyUnreadable(Exception):
    """A stored key exists but cannot be decrypted with the configured secrets."""


class Vault:
    def __init__(
        self,
        storage: Storage,
        custody: KeyCustody,
        cache_ttl_s: float,
        bus: InvalidationBus | None = None,
    ) -> None:
        self._storage = storage
        self.custody = custody
        self._bus = bus
        self.keys: InvalidatingCache[tuple[str, str], OpenKey] = InvalidatingCache(
            "keys", cache_ttl_s
        )

    async def get(self, user_id: str, provider: str) -> OpenKey | None:
        cache_key = (user_id, provider)
        return await self.keys.load(cache_key, lambda: self._open(user_id, provider))

    async def _open(self, user_id: str, provider: str) -> OpenKey | None:
        stored = await self._storage.get_key(user_id, provider)
        if stored is None:
            return None
        try:
            secret = await self.custody.open(
                SealedKey(stored.key_version, stored.ciphertext), user_id, provider
            )
        except DecryptionError as exc:
            log_event("stored key cannot be decrypted", 40, provider=provider, reason=str(exc))
            raise KeyUnreadable(str(exc)) from None
        return OpenKey(secret, stored.base_url)

    async def put(self, user_id: str, provider: str, secret: str, base_url: str | None) -> None:
        sealed = await self.custody.seal(secret, user_id, provider)
        await self._storage.put_key(
            user_id,
            provider,
            sealed.version,
            sealed.blob,
            key_hint(secret),
            base_url,
            int(time.time() * 1000),
        )
        self._invalidate(user_id, provider)

    async def delete(self, user_id: str, provider: str) -> bool:
        deleted = await self._storage.delete_key(user_id, provider)
        self._invalidate(user_id, provider)
        return deleted

    async def list(self, user_id: str) -> list[KeyInfo]:
        return await self._storage.list_keys(user_id)

    def _invalidate(self, user_id: str, provider: str) -> None:
        # After the database change has committed: here and on every instance.
        if self._bus is not None:
            self._bus.invalidate("key", user_id, provider)
        else:
            self.drop(user_id, provider)

    # --- invalidation handlers (the bus calls them, here and on every instance) ---------
    def drop(self, user_id: str, provider: str) -> None:
        self.keys.drop((user_id, provider))

    def drop_user(self, user_id: str) -> None:
        self.keys.drop_where(lambda k, _: k[0] == user_id)
