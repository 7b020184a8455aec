"""Relay-token authentication: credential headers → HMAC → user, cached briefly.

A token seen in the last CACHE_TTL_S seconds costs no database read. Revocation and
deletion on this process drop the cache entry at once; `forget_*` also announce it on the
invalidation bus (`bus.py`, Redis pub/sub), so every other instance drops it within
milliseconds. Without a bus, other processes re-read within CACHE_TTL_S.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from byok_relay.crypto import TokenHasher, looks_like_token
from byok_relay.errors import ApiError
from byok_relay.storage import Storage, TokenRecord

MISSING_TOKEN = (
    "Missing relay token: send it in the x-relay-token header "
    "(or Authorization: Bearer <token>). Get one with POST /users."
)
INVALID_TOKEN = "Invalid relay token: register with POST /users to get a new one."
REVOKED_TOKEN = (
    "This relay token was revoked or replaced: use the newer token, "
    "or register again with POST /users."
)
EXPIRED_TOKEN = "This relay token has expired: register again with POST /users."

_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    app_id: str
    token_hash: str
    expires_at: int | None


def read_credential(headers: CIMultiDictProxy[str]) -> str | None:
    """SPEC §2 precedence: x-relay-token, Authorization: Bearer, x-api-key, x-goog-api-key."""
    token = headers.get("x-relay-token")
    if token:
        return token.strip()
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or None


class Authenticator:
    def __init__(self, storage: Storage, hasher: TokenHasher, cache_ttl_s: float) -> None:
        self._storage = storage
        self._hasher = hasher
        self.configured_ttl = cache_ttl_s
        #: Effective TTL; the invalidation bus lowers it while it cannot hear other instances.
        self.ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, TokenRecord]] = {}
        # Bumped by every invalidation: a lookup that raced with one is not cached.
        self._epoch = 0
        #: Set by the invalidation bus: tells the other instances what to forget.
        self.announce: Callable[..., None] | None = None

    async def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        token = read_credential(headers)
        if not token:
            raise ApiError(401, MISSING_TOKEN)
        if not looks_like_token(token):
            raise ApiError(401, INVALID_TOKEN)
        token_hash = self._hasher.hash(token)
        try:
            return await self.principal_for(token_hash)
        except ApiError as exc:
            if exc.message != INVALID_TOKEN or not await self._adopt_old_hash(token, token_hash):
                raise
        return await self.principal_for(token_hash)

    async def _adopt_old_hash(self, token: str, token_hash: str) -> bool:
        """A token hashed under a previous ENCRYPTION_SECRET: store its current hash.
        Looked up first, so an unknown token costs reads, never a database write."""
        for old in self._hasher.previous_hashes(token):
            if await self._storage.lookup_token(old) is None:
                continue
            if await self._storage.rehash_token(old, token_hash):
                return True
        return False

    async def principal_for(self, token_hash: str) -> Principal:
        now = time.monotonic()
        hit = self._cache.get(token_hash)
        if hit is not None and now - hit[0] < self.ttl:
            record = hit[1]
        else:
            epoch = self._epoch
            found = await self._storage.lookup_token(token_hash)
            if found is None:
                self._cache.pop(token_hash, None)
                raise ApiError(401, INVALID_TOKEN)
            record = found
            if epoch == self._epoch:  # else an invalidation arrived during the read
                if len(self._cache) >= _CACHE_MAX:
                    # Drop the oldest entry (dicts keep insertion order).
                    self._cache.pop(next(iter(self._cache)))
                self._cache[token_hash] = (now, record)
        if record.revoked_at is not None:
            raise ApiError(401, REVOKED_TOKEN)
        if record.expires_at is not None and record.expires_at <= time.time() * 1000:
            raise ApiError(401, EXPIRED_TOKEN)
        return Principal(record.user_id, record.app_id, token_hash, record.expires_at)

    # Call forget_* after the database change has committed: here and on every instance.
    def forget_token(self, token_hash: str) -> None:
        self.drop_token(token_hash)
        if self.announce is not None:
            self.announce("token", token_hash)

    def forget_user(self, user_id: str) -> None:
        self.drop_user(user_id)
        if self.announce is not None:
            self.announce("user", user_id)

    # drop_* and clear act on this process only (the bus calls them).
    def drop_token(self, token_hash: str) -> None:
        self._epoch += 1
        self._cache.pop(token_hash, None)

    def drop_user(self, user_id: str) -> None:
        self._epoch += 1
        for key in [k for k, (_, r) in self._cache.items() if r.user_id == user_id]:
            del self._cache[key]

    def clear(self) -> None:
        self._epoch += 1
        self._cache.clear()
