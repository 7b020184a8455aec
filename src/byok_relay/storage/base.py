"""The storage interface the routes and the relay use; engines implement it."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


class StorageUnavailable(Exception):
    """The database cannot be reached right now (routes answer 503)."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str
    user_id: str
    app_id: str
    expires_at: int | None  # ms since epoch
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class ScopedTokenRecord:
    """A scoped token (SPEC §9). `parent_hash` is the relay token that minted it: its
    revocation revokes this one; its rotation hands this one to the successor."""

    id: str
    token_hash: str
    user_id: str
    app_id: str
    parent_hash: str
    label: str | None
    scope: str  # JSON (scopes.Scope.to_json)
    created_at: int
    expires_at: int
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    last_used_at: int | None = None


@dataclass(frozen=True, slots=True)
class DataKeyRecord:
    """A data key wrapped by an HSM master key (SPEC §11): `custody` and `key_label` say
    which master key, `mechanism` how it was wrapped."""

    id: str
    custody: str
    key_label: str
    mechanism: str
    wrapped: bytes
    created_at: int


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_version: str
    ciphertext: bytes
    base_url: str | None


@dataclass(frozen=True, slots=True)
class SealedRow:
    user_id: str
    provider: str
    key_version: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class KeyInfo:
    provider: str
    hint: str
    base_url: str | None
    created_at: int
    updated_at: int
    last_used_at: int | None


@dataclass(frozen=True, slots=True)
class RequestLogRow:
    user_id: str
    app_id: str
    provider: str
    model: str | None
    status: int
    latency_ms: int
    streaming: bool
    input_tokens: int | None
    output_tokens: int | None
    created_at: int
    token_id: str | None = None  # the scoped token used, if any


class Storage(abc.ABC):
    """Everything the relay keeps. All times are ms since the epoch."""

    dialect: str

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StorageUnavailable when the database does not answer."""

    # users and tokens
    @abc.abstractmethod
    async def create_user(
        self, user_id: str, app_id: str, token_hash: str, now: int, expires_at: int | None
    ) -> None: ...

    @abc.abstractmethod
    async def lookup_token(self, token_hash: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def rehash_token(self, old_hash: str, new_hash: str) -> bool:
        """Replace a token's stored HMAC (after the HMAC key changed)."""

    @abc.abstractmethod
    async def revoke_token(self, token_hash: str, now: int) -> bool: ...

    @abc.abstractmethod
    async def rotate_token(
        self, old_hash: str, new_hash: str, now: int, expires_at: int | None
    ) -> bool:
        """Replace a live token by a new one for the same user, atomically."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> bool:
        """Erase the user, their tokens, scoped tokens, budget, keys, request-log rows and
        request-log rollups."""

    # identities (SPEC §10)
    @abc.abstractmethod
    async def lookup_identity(self, issuer: str, subject: str) -> str | None:
        """The user id of a signed-in identity, or None before its first use."""

    @abc.abstractmethod
    async def create_identity_user(
        self, user_id: str, app_id: str, issuer: str, subject: str, now: int
    ) -> str:
        """Create the user of an identity, or, when another request created it first,
        return that one's id (racing first uses make one user)."""

    # scoped tokens (revoke_token revokes the ones a token minted; rotate_token moves them)
    @abc.abstractmethod
    async def create_scoped_token(self, record: ScopedTokenRecord) -> None: ...

    @abc.abstractmethod
    async def lookup_scoped_token(self, token_hash: str) -> ScopedTokenRecord | None: ...

    @abc.abstractmethod
    async def list_scoped_tokens(self, user_id: str, now: int) -> list[ScopedTokenRecord]:
        """The user's scoped tokens that are neither revoked nor expired, newest first."""

    @abc.abstractmethod
    async def revoke_scoped_token(self, user_id: str, token_id: str, now: int) -> str | None:
        """Revoke one of the user's scoped tokens; its hash, or None if none was live."""

    # owner budgets
    @abc.abstractmethod
    async def get_budget(self, user_id: str) -> str | None:
        """The user's budget as stored (JSON), or None."""

    @abc.abstractmethod
    async def put_budget(self, user_id: str, budget: str, now: int) -> None: ...

    @abc.abstractmethod
    async def delete_budget(self, user_id: str) -> bool: ...

    # keys
    @abc.abstractmethod
    async def put_key(
        self,
        user_id: str,
        provider: str,
        key_version: str,
        ciphertext: bytes,
        hint: str,
        base_url: str | None,
        now: int,
    ) -> None: ...

    @abc.abstractmethod
    async def get_key(self, user_id: str, provider: str) -> StoredKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, user_id: str) -> list[KeyInfo]: ...

    @abc.abstractmethod
    async def delete_key(self, user_id: str, provider: str) -> bool: ...

    # wrapped data keys (key custody, SPEC §11)
    @abc.abstractmethod
    async def put_data_key(self, record: DataKeyRecord) -> None: ...

    @abc.abstractmethod
    async def get_data_key(self, data_key_id: str) -> DataKeyRecord | None: ...

    @abc.abstractmethod
    async def latest_data_key(self, custody: str, key_label: str) -> DataKeyRecord | None: ...

    # secret rotation (`byok-relay reencrypt`)
    @abc.abstractmethod
    async def keys_not_at_version(
        self, version: str, after: tuple[str, str], limit: int
    ) -> list[SealedRow]:
        """Keys sealed under another key version, ordered by (user_id, provider) > after."""

    @abc.abstractmethod
    async def replace_sealed_keys(self, rows: list[tuple[SealedRow, str, bytes]]) -> int:
        """Swap ciphertexts in one transaction, each only if the row is unchanged since it
        was read (a key the user replaced meanwhile is left alone). Returns rows changed."""

    @abc.abstractmethod
    async def count_keys_not_at_version(self, version: str) -> int: ...

    # request log (written in batches, off the hot path)
    @abc.abstractmethod
    async def record_usage(
        self, rows: list[RequestLogRow], last_used: dict[tuple[str, str], int]
    ) -> None: ...

    @abc.abstractmethod
    async def roll_up_request_log(self, limit: int) -> int:
        """Fold up to `limit` raw rows not yet rolled up into the per-hour rollups, in
        one transaction; returns the rows folded (fewer than `limit`: none are left)."""

    @abc.abstractmethod
    async def purge_request_log(self, before: int) -> int:
        """Delete raw rows created before `before` that are already rolled up."""

    @abc.abstractmethod
    async def purge_request_log_rollups(self, before: int) -> int:
        """Delete the per-hour rollups of hours that ended by `before`."""

    # Every usage read is the rollups plus the raw rows not yet rolled up, read together.
    @abc.abstractmethod
    async def usage_stats(self, column: str, value: str, now: int) -> dict[str, Any]:
        """Request-log aggregates where `column` (user_id or app_id) = value; `last_7d`
        and `last_30d` count from the start of the hour 7 (30) days before `now`."""

    @abc.abstractmethod
    async def usage_since(self, user_id: str, since: int) -> dict[str, UsageTotals]:
        """The user's requests and tokens since `since` (the start of an hour, as every
        budget window's is), per provider."""

    @abc.abstractmethod
    async def usage_by_token(self, user_id: str) -> dict[str, UsageTotals]:
        """The user's requests and tokens per scoped token id."""
