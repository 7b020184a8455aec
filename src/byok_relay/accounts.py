"""Accounts: users and their tokens — register, rotate, revoke, erase, and scoped tokens.

The write side of credentials lives here (keys are the `Vault`'s): each operation makes
its database change first and then invalidates through the bus (`bus.py`), which drops
the affected cache entries on this instance at once and on every other instance within
milliseconds. Routes call these methods; they never sequence storage, caches and the
bus themselves.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from byok_relay.auth import Principal
from byok_relay.bus import InvalidationBus
from byok_relay.crypto import SCOPED_TOKEN_PREFIX, TokenHasher, new_token
from byok_relay.errors import ApiError
from byok_relay.scopes import Scope
from byok_relay.storage import ScopedTokenRecord, Storage, UsageTotals
from byok_relay.usage import UsageRecorder

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class ScopedToken:
    """A scoped token as its owner sees it (never its secret, except once at mint)."""

    record: ScopedTokenRecord
    scope: Scope
    usage: UsageTotals


class Accounts:
    def __init__(
        self,
        storage: Storage,
        hasher: TokenHasher,
        bus: InvalidationBus,
        usage: UsageRecorder,
        token_expiry_days: int,
        scoped_max_ttl_s: int,
    ) -> None:
        self._storage = storage
        self._hasher = hasher
        self._bus = bus
        self._usage = usage
        self._expiry_days = token_expiry_days
        self.scoped_max_ttl_s = scoped_max_ttl_s

    def _expiry(self, now: int) -> int | None:
        days = self._expiry_days
        return now + days * _DAY_MS if days > 0 else None

    # --- relay tokens ----------------------------------------------------------------
    async def register(self, app_id: str) -> IssuedToken:
        token = new_token()
        now = _now()
        expires_at = self._expiry(now)
        await self._storage.create_user(
            uuid.uuid4().hex, app_id, self._hasher.hash(token), now, expires_at
        )
        return IssuedToken(token, expires_at)

    async def rotate(self, principal: Principal) -> IssuedToken:
        """A new relay token for the same user; the old one dies, its scoped tokens live on."""
        _not_for_sign_in(principal, "rotate")
        token = new_token()
        now = _now()
        expires_at = self._expiry(now)
        rotated = await self._storage.rotate_token(
            principal.token_hash, self._hasher.hash(token), now, expires_at
        )
        self._bus.invalidate("token", principal.token_hash)
        if not rotated:
            raise ApiError(401, "This relay token was revoked or replaced meanwhile.")
        return IssuedToken(token, expires_at)

    async def revoke(self, principal: Principal) -> bool:
        """The relay token and every scoped token it minted die at once."""
        _not_for_sign_in(principal, "revoke")
        revoked = await self._storage.revoke_token(principal.token_hash, _now())
        self._bus.invalidate("token", principal.token_hash)
        return revoked

    async def erase(self, principal: Principal) -> bool:
        """The user, every token, key, budget and request-log row. Pending log rows are
        dropped first, so none is written after the erase."""
        self._usage.forget_user(principal.user_id)
        deleted = await self._storage.delete_user(principal.user_id)
        self._bus.invalidate("user", principal.user_id)
        return deleted

    # --- scoped tokens ---------------------------------------------------------------
    async def mint_scoped(
        self, principal: Principal, label: str | None, scope: Scope, ttl_s: int
    ) -> tuple[str, ScopedTokenRecord]:
        if principal.scoped is not None:
            raise ApiError(403, "a scoped token cannot mint tokens: use the relay token.")
        if not 0 < ttl_s <= self.scoped_max_ttl_s:
            raise ApiError(
                400,
                f"ttl_s must be between 1 and {self.scoped_max_ttl_s} seconds "
                "(SCOPED_TOKEN_MAX_TTL_S).",
            )
        now = _now()
        expires_at = now + ttl_s * 1000
        if principal.expires_at is not None:
            expires_at = min(expires_at, principal.expires_at)  # never past the parent's
        token = new_token(SCOPED_TOKEN_PREFIX)
        record = ScopedTokenRecord(
            id="st_" + uuid.uuid4().hex[:20],
            token_hash=self._hasher.hash(token),
            user_id=principal.user_id,
            app_id=principal.app_id,
            parent_hash=principal.token_hash,
            label=label,
            scope=scope.to_json(),
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        await self._storage.create_scoped_token(record)
        return token, record

    async def list_scoped(self, user_id: str) -> list[ScopedToken]:
        await self._usage.flush()  # the newest requests count at once
        records = await self._storage.list_scoped_tokens(user_id, _now())
        usage = await self._storage.usage_by_token(user_id) if records else {}
        return [
            ScopedToken(r, Scope.from_json(r.scope), usage.get(r.id, UsageTotals()))
            for r in records
        ]

    async def revoke_scoped(self, user_id: str, token_id: str) -> bool:
        token_hash = await self._storage.revoke_scoped_token(user_id, token_id, _now())
        if token_hash is None:
            return False
        self._bus.invalidate("token", token_hash)
        return True


def _not_for_sign_in(principal: Principal, verb: str) -> None:
    if principal.issuer is not None:
        raise ApiError(
            400,
            f"This credential is your app's sign-in token (issuer {principal.issuer}): the "
            f"relay cannot {verb} it. Sign the user out or refresh the token at the identity "
            "provider; DELETE /users erases the relay's data of this user.",
        )


def _now() -> int:
    return int(time.time() * 1000)
