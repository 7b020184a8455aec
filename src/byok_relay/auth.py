"""Credentials: the credential headers → HMAC → a `Principal`, cached briefly.

Three kinds of bearer token reach here: relay tokens (`byok_rt_`, from POST /users),
scoped tokens (`byok_st_`, from POST /tokens, SPEC §9) and the app's own sign-in tokens
(JWTs from a JWT_ISSUERS_FILE issuer, SPEC §10), whose (issuer, subject) is a relay user
created on first use. A token seen in the last
CACHE_TTL_S seconds costs no database read. The caches are `InvalidatingCache`s whose
entries the accounts service drops through the invalidation bus (`bus.py`) after every
revoke, rotation and erase, on this instance at once and on every other one within
milliseconds. Without a bus, other processes re-read within CACHE_TTL_S.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from byok_relay.cache import InvalidatingCache
from byok_relay.crypto import SCOPED_TOKEN_PREFIX, TokenHasher, looks_like_token
from byok_relay.errors import ApiError
from byok_relay.identity import Identity, IdentityVerifier, looks_like_jwt
from byok_relay.scopes import Scope
from byok_relay.storage import ScopedTokenRecord, Storage, TokenRecord

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
SCOPED_REVOKED = "This scoped token was revoked: ask the app for a new one (POST /tokens)."
SCOPED_EXPIRED = "This scoped token has expired (ttl_s): ask the app for a new one (POST /tokens)."
NO_IDENTITY_PROVIDER = (
    "Invalid sign-in token (JWT): this relay trusts no identity provider (no "
    "JWT_ISSUERS_FILE). Use a relay token from POST /users."
)
NOT_A_JWS = (
    "Invalid sign-in token (JWT): not a signed JWT of three base64url parts of at most "
    "8192 characters; an encrypted (five-part) or opaque access token cannot be verified."
)
#: A signed-in user's stand-in for a token hash: the parent of the scoped tokens they mint.
IDENTITY_HASH_PREFIX = "identity:"
SCOPED_CANNOT_MANAGE = (
    "a scoped token cannot manage the account: use the relay token that minted it."
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. `token_hash` is the HMAC of the token used; `scoped` is set for a
    scoped token (with its id and scope), None for the account's own relay token;
    `issuer` is set for the app's sign-in token (the identity provider owns it)."""

    user_id: str
    app_id: str
    token_hash: str
    expires_at: int | None
    scoped: ScopedGrant | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class ScopedGrant:
    id: str
    scope: Scope
    parent_hash: str


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
    def __init__(
        self,
        storage: Storage,
        hasher: TokenHasher,
        cache_ttl_s: float,
        identity: IdentityVerifier | None = None,
    ) -> None:
        self._storage = storage
        self.hasher = hasher
        self.identity = identity
        #: (issuer, subject) → user id
        self.identities: InvalidatingCache[tuple[str, str], str] = InvalidatingCache(
            "identities", cache_ttl_s
        )
        self.tokens: InvalidatingCache[str, TokenRecord] = InvalidatingCache("tokens", cache_ttl_s)
        self.scoped: InvalidatingCache[str, tuple[ScopedTokenRecord, Scope]] = InvalidatingCache(
            "scoped-tokens", cache_ttl_s
        )

    async def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        token = read_credential(headers)
        if not token:
            raise ApiError(401, MISSING_TOKEN)
        if not looks_like_token(token):
            if looks_like_jwt(token):
                return await self._identity_principal(token)
            if token.count(".") >= 2:
                raise ApiError(401, NOT_A_JWS, extra={"code": "jwt_invalid"})
            raise ApiError(401, INVALID_TOKEN)
        token_hash = self.hasher.hash(token)
        if token.startswith(SCOPED_TOKEN_PREFIX):
            return await self._scoped_principal(token_hash)
        try:
            return await self.principal_for(token_hash)
        except ApiError as exc:
            if exc.message != INVALID_TOKEN or not await self._adopt_old_hash(token, token_hash):
                raise
        return await self.principal_for(token_hash)

    async def _adopt_old_hash(self, token: str, token_hash: str) -> bool:
        """A token hashed under a previous ENCRYPTION_SECRET: store its current hash.
        Looked up first, so an unknown token costs reads, never a database write."""
        for old in self.hasher.previous_hashes(token):
            if await self._storage.lookup_token(old) is None:
                continue
            if await self._storage.rehash_token(old, token_hash):
                return True
        return False

    async def principal_for(self, token_hash: str) -> Principal:
        record = await self.tokens.load(token_hash, lambda: self._storage.lookup_token(token_hash))
        if record is None:
            raise ApiError(401, INVALID_TOKEN)
        if record.revoked_at is not None:
            raise ApiError(401, REVOKED_TOKEN)
        if record.expires_at is not None and record.expires_at <= time.time() * 1000:
            raise ApiError(401, EXPIRED_TOKEN)
        return Principal(record.user_id, record.app_id, token_hash, record.expires_at)

    async def _scoped_principal(self, token_hash: str) -> Principal:
        hit = await self.scoped.load(token_hash, lambda: self._read_scoped(token_hash))
        if hit is None:
            raise ApiError(401, "Invalid scoped token: ask the app for a new one (POST /tokens).")
        record, scope = hit
        if record.revoked_at is not None:
            raise ApiError(401, SCOPED_REVOKED)
        if record.expires_at <= time.time() * 1000:
            raise ApiError(401, SCOPED_EXPIRED)
        return Principal(
            record.user_id,
            record.app_id,
            token_hash,
            record.expires_at,
            ScopedGrant(record.id, scope, record.parent_hash),
        )

    async def _identity_principal(self, token: str) -> Principal:
        if self.identity is None:
            raise ApiError(401, NO_IDENTITY_PROVIDER)
        who = await self.identity.verify(token)
        issuer = who.issuer
        user_id = await self.identities.load(
            (issuer.issuer, who.subject), lambda: self._identity_user(who)
        )
        assert user_id is not None
        return Principal(
            user_id, issuer.app_id, IDENTITY_HASH_PREFIX + user_id, who.expires_at,
            issuer=issuer.issuer,
        )  # fmt: skip

    async def _identity_user(self, who: Identity) -> str:
        """The relay user of a signed-in identity; created on its first use (the one
        write on this path, once per identity)."""
        issuer = who.issuer.issuer
        found = await self._storage.lookup_identity(issuer, who.subject)
        if found is not None:
            return found
        return await self._storage.create_identity_user(
            uuid.uuid4().hex, who.issuer.app_id, issuer, who.subject, int(time.time() * 1000)
        )

    async def _read_scoped(self, token_hash: str) -> tuple[ScopedTokenRecord, Scope] | None:
        found = await self._storage.lookup_scoped_token(token_hash)
        return (found, Scope.from_json(found.scope)) if found is not None else None

    # --- invalidation handlers (the bus calls them, here and on every instance) ---------
    def drop_token(self, token_hash: str) -> None:
        """A relay or scoped token changed; a relay token's scoped children too."""
        self.tokens.drop(token_hash)
        self.scoped.drop_where(lambda k, v: k == token_hash or v[0].parent_hash == token_hash)

    def drop_user(self, user_id: str) -> None:
        self.identities.drop_where(lambda _, uid: uid == user_id)
        self.tokens.drop_where(lambda _, r: r.user_id == user_id)
        self.scoped.drop_where(lambda _, v: v[0].user_id == user_id)
