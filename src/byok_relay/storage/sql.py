"""The SQL every engine runs, written once with `?` placeholders.

Engines supply a connection wrapper (`Tx`) and translate placeholders; the queries, the
migration runner and the row mapping live here so a new engine touches no route.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from byok_relay.storage.base import (
    DataKeyRecord,
    KeyInfo,
    RequestLogRow,
    ScopedTokenRecord,
    SealedRow,
    Storage,
    StoredKey,
    TokenRecord,
    UsageTotals,
)
from byok_relay.storage.migrations import CREATE_MIGRATIONS_TABLE, MIGRATIONS, render

Row = Sequence[Any]


class Tx(Protocol):
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


class SQLStorage(Storage):
    """Storage on a SQL engine; subclasses provide `_read`, `_write` and `_migration_lock`."""

    @abc.abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Tx]:
        """A connection for a single read (no transaction needed)."""

    @abc.abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction: committed on exit, rolled back on error."""

    # --- schema ----------------------------------------------------------------
    async def _applied_versions(self, tx: Tx) -> set[int]:
        await tx.execute(render(CREATE_MIGRATIONS_TABLE, self.dialect))
        return {int(r[0]) for r in await tx.fetchall("SELECT version FROM schema_migrations")}

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        for migration in MIGRATIONS:
            # One transaction per migration, re-checked inside it: concurrent starters
            # (several workers or instances) serialise on the write lock.
            async with self._write() as tx:
                await self._lock_for_migration(tx)
                if migration.version in await self._applied_versions(tx):
                    continue
                for statement in migration.statements:
                    await tx.execute(render(statement, self.dialect))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _now()),
                )
                applied.append(migration.version)
        return applied

    async def _lock_for_migration(self, tx: Tx) -> None:
        """Engines that need an explicit lock (PostgreSQL advisory lock) override this."""

    async def schema_version(self) -> int:
        async with self._write() as tx:
            await self._lock_for_migration(tx)
            versions = await self._applied_versions(tx)
        return max(versions, default=0)

    async def ping(self) -> None:
        async with self._read() as tx:
            await tx.fetchone("SELECT 1")

    # --- users and tokens ------------------------------------------------------
    async def create_user(
        self, user_id: str, app_id: str, token_hash: str, now: int, expires_at: int | None
    ) -> None:
        async with self._write() as tx:
            await _insert_user(tx, user_id, app_id, now)
            await tx.execute(
                "INSERT INTO tokens (token_hash, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, user_id, now, expires_at),
            )

    async def lookup_token(self, token_hash: str) -> TokenRecord | None:
        async with self._read() as tx:
            row = await tx.fetchone(
                "SELECT t.token_hash, t.user_id, u.app_id, t.expires_at, t.revoked_at"
                " FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
                (token_hash,),
            )
        return TokenRecord(*row) if row else None

    async def rehash_token(self, old_hash: str, new_hash: str) -> bool:
        async with self._write() as tx:
            n = await tx.execute(
                "UPDATE tokens SET token_hash = ? WHERE token_hash = ?", (new_hash, old_hash)
            )
        return n > 0

    async def revoke_token(self, token_hash: str, now: int) -> bool:
        async with self._write() as tx:
            n = await tx.execute(
                "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                (now, token_hash),
            )
            # Every scoped token it minted dies with it.
            await tx.execute(
                "UPDATE scoped_tokens SET revoked_at = ?"
                " WHERE parent_hash = ? AND revoked_at IS NULL",
                (now, token_hash),
            )
        return n > 0

    async def rotate_token(
        self, old_hash: str, new_hash: str, now: int, expires_at: int | None
    ) -> bool:
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT user_id FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
                (old_hash,),
            )
            if row is None:
                return False
            # Conditional: of two concurrent rotations only one revokes the old token
            # (PostgreSQL re-checks the WHERE after waiting for the row lock), so a token
            # can never yield two live successors.
            n = await tx.execute(
                "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                (now, old_hash),
            )
            if n == 0:
                return False
            await tx.execute(
                "INSERT INTO tokens (token_hash, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (new_hash, row[0], now, expires_at),
            )
            # Rotation keeps the scoped tokens alive: the successor becomes their parent.
            await tx.execute(
                "UPDATE scoped_tokens SET parent_hash = ? WHERE parent_hash = ?",
                (new_hash, old_hash),
            )
        return True

    async def delete_user(self, user_id: str) -> bool:
        async with self._write() as tx:
            await tx.execute("DELETE FROM request_log WHERE user_id = ?", (user_id,))
            # After request_log (a roll in progress is waited for), under the rollup lock.
            await _rolled_id(tx, self._for_update)
            await tx.execute("DELETE FROM request_log_hourly WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM scoped_tokens WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM budgets WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM identities WHERE user_id = ?", (user_id,))
            n = await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
        return n > 0

    # --- wrapped data keys -------------------------------------------------------
    _DATA_KEY_SELECT = (
        "SELECT id, custody, key_label, mechanism, wrapped, created_at FROM data_keys"
    )

    async def put_data_key(self, record: DataKeyRecord) -> None:
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO data_keys (id, custody, key_label, mechanism, wrapped, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.custody, record.key_label, record.mechanism,
                 record.wrapped, record.created_at),
            )  # fmt: skip

    async def get_data_key(self, data_key_id: str) -> DataKeyRecord | None:
        async with self._read() as tx:
            row = await tx.fetchone(self._DATA_KEY_SELECT + " WHERE id = ?", (data_key_id,))
        return _data_key(row) if row else None

    async def latest_data_key(self, custody: str, key_label: str) -> DataKeyRecord | None:
        async with self._read() as tx:
            row = await tx.fetchone(
                self._DATA_KEY_SELECT
                + " WHERE custody = ? AND key_label = ? ORDER BY created_at DESC, id LIMIT 1",
                (custody, key_label),
            )
        return _data_key(row) if row else None

    # --- identities --------------------------------------------------------------
    async def lookup_identity(self, issuer: str, subject: str) -> str | None:
        async with self._read() as tx:
            row = await tx.fetchone(
                "SELECT user_id FROM identities WHERE issuer = ? AND subject = ?",
                (issuer, subject),
            )
        return str(row[0]) if row else None

    async def create_identity_user(
        self, user_id: str, app_id: str, issuer: str, subject: str, now: int
    ) -> str:
        async with self._write() as tx:
            await _insert_user(tx, user_id, app_id, now)
            # A concurrent first use (another instance) may have won: keep its user.
            await tx.execute(
                "INSERT INTO identities (issuer, subject, user_id, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (issuer, subject) DO NOTHING",
                (issuer, subject, user_id, now),
            )
            row = await tx.fetchone(
                "SELECT user_id FROM identities WHERE issuer = ? AND subject = ?",
                (issuer, subject),
            )
            assert row is not None
            winner = str(row[0])
            if winner != user_id:
                await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
        return winner

    # --- scoped tokens -----------------------------------------------------------
    _SCOPED_COLUMNS = (
        "s.id, s.token_hash, s.user_id, u.app_id, s.parent_hash, s.label, s.scope,"
        " s.created_at, s.expires_at, s.revoked_at"
        " FROM scoped_tokens s JOIN users u ON u.id = s.user_id"
    )

    async def create_scoped_token(self, record: ScopedTokenRecord) -> None:
        r = record
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO scoped_tokens (id, token_hash, user_id, parent_hash, label, scope,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.id, r.token_hash, r.user_id, r.parent_hash, r.label, r.scope,
                 r.created_at, r.expires_at),
            )  # fmt: skip

    async def lookup_scoped_token(self, token_hash: str) -> ScopedTokenRecord | None:
        async with self._read() as tx:
            row = await tx.fetchone(
                f"SELECT {self._SCOPED_COLUMNS} WHERE s.token_hash = ?", (token_hash,)
            )
        return ScopedTokenRecord(*row) if row else None

    async def list_scoped_tokens(self, user_id: str, now: int) -> list[ScopedTokenRecord]:
        async with self._read() as tx:
            rows = await tx.fetchall(
                f"SELECT {self._SCOPED_COLUMNS} WHERE s.user_id = ? AND s.revoked_at IS NULL"
                " AND s.expires_at > ? ORDER BY s.created_at DESC, s.id",
                (user_id, now),
            )
        return [ScopedTokenRecord(*r) for r in rows]

    async def revoke_scoped_token(self, user_id: str, token_id: str, now: int) -> str | None:
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT token_hash FROM scoped_tokens WHERE id = ? AND user_id = ?"
                " AND revoked_at IS NULL",
                (token_id, user_id),
            )
            if row is None:
                return None
            await tx.execute(
                "UPDATE scoped_tokens SET revoked_at = ? WHERE id = ?", (now, token_id)
            )
        return str(row[0])

    # --- owner budgets -----------------------------------------------------------
    async def get_budget(self, user_id: str) -> str | None:
        async with self._read() as tx:
            row = await tx.fetchone("SELECT budget FROM budgets WHERE user_id = ?", (user_id,))
        return str(row[0]) if row else None

    async def put_budget(self, user_id: str, budget: str, now: int) -> None:
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO budgets (user_id, budget, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET budget = excluded.budget,"
                " updated_at = excluded.updated_at",
                (user_id, budget, now),
            )

    async def delete_budget(self, user_id: str) -> bool:
        async with self._write() as tx:
            n = await tx.execute("DELETE FROM budgets WHERE user_id = ?", (user_id,))
        return n > 0

    # --- keys ------------------------------------------------------------------
    async def put_key(
        self,
        user_id: str,
        provider: str,
        key_version: str,
        ciphertext: bytes,
        hint: str,
        base_url: str | None,
        now: int,
    ) -> None:
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO api_keys (user_id, provider, key_version, ciphertext, hint,"
                " base_url, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, provider) DO UPDATE SET"
                " key_version = excluded.key_version, ciphertext = excluded.ciphertext,"
                " hint = excluded.hint, base_url = excluded.base_url,"
                " updated_at = excluded.updated_at",
                (user_id, provider, key_version, ciphertext, hint, base_url, now, now),
            )

    async def get_key(self, user_id: str, provider: str) -> StoredKey | None:
        async with self._read() as tx:
            row = await tx.fetchone(
                "SELECT key_version, ciphertext, base_url FROM api_keys"
                " WHERE user_id = ? AND provider = ?",
                (user_id, provider),
            )
        return StoredKey(row[0], _blob(row[1]), row[2]) if row else None

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        async with self._read() as tx:
            rows = await tx.fetchall(
                "SELECT provider, hint, base_url, created_at, updated_at, last_used_at"
                " FROM api_keys WHERE user_id = ? ORDER BY provider",
                (user_id,),
            )
        return [KeyInfo(*r) for r in rows]

    async def delete_key(self, user_id: str, provider: str) -> bool:
        async with self._write() as tx:
            n = await tx.execute(
                "DELETE FROM api_keys WHERE user_id = ? AND provider = ?", (user_id, provider)
            )
        return n > 0

    # --- secret rotation -------------------------------------------------------
    async def keys_not_at_version(
        self, version: str, after: tuple[str, str], limit: int
    ) -> list[SealedRow]:
        async with self._read() as tx:
            rows = await tx.fetchall(
                "SELECT user_id, provider, key_version, ciphertext FROM api_keys"
                " WHERE key_version <> ? AND (user_id > ? OR (user_id = ? AND provider > ?))"
                " ORDER BY user_id, provider LIMIT ?",
                (version, after[0], after[0], after[1], limit),
            )
        return [SealedRow(r[0], r[1], r[2], _blob(r[3])) for r in rows]

    async def replace_sealed_keys(self, rows: list[tuple[SealedRow, str, bytes]]) -> int:
        changed = 0
        async with self._write() as tx:
            for old, version, ciphertext in rows:
                changed += await tx.execute(
                    "UPDATE api_keys SET key_version = ?, ciphertext = ?"
                    " WHERE user_id = ? AND provider = ? AND key_version = ? AND ciphertext = ?",
                    (version, ciphertext, old.user_id, old.provider, old.key_version,
                     old.ciphertext),
                )  # fmt: skip
        return changed

    async def count_keys_not_at_version(self, version: str) -> int:
        async with self._read() as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM api_keys WHERE key_version <> ?", (version,)
            )
        return int(row[0]) if row else 0

    # --- request log -----------------------------------------------------------
    async def record_usage(
        self, rows: list[RequestLogRow], last_used: dict[tuple[str, str], int]
    ) -> None:
        async with self._write() as tx:
            if rows:
                await tx.executemany(
                    # Only for users that still exist: a stream that ends after
                    # DELETE /users (on any instance) must not leave a row behind.
                    "INSERT INTO request_log (user_id, app_id, provider, model, status,"
                    " latency_ms, streaming, input_tokens, output_tokens, created_at, token_id)"
                    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM users WHERE id = ?)",
                    [
                        (
                            r.user_id,
                            r.app_id,
                            r.provider,
                            r.model,
                            r.status,
                            r.latency_ms,
                            int(r.streaming),
                            r.input_tokens,
                            r.output_tokens,
                            r.created_at,
                            r.token_id,
                            r.user_id,
                        )
                        for r in rows
                    ],
                )
            if last_used:
                await tx.executemany(
                    "UPDATE api_keys SET last_used_at = ? WHERE user_id = ? AND provider = ?"
                    " AND (last_used_at IS NULL OR last_used_at < ?)",
                    [(ts, user, prov, ts) for (user, prov), ts in last_used.items()],
                )

    # Rollups: request_log_hourly holds every raw row with id <= request_log_rollup's
    # rolled_id, summed per (user, hour, provider, model, token). Each read adds the raw
    # rows above rolled_id in the same statement: one snapshot, so a roll committing
    # meanwhile is neither counted twice nor missed (PostgreSQL gives each statement of
    # a read its own snapshot).
    async def roll_up_request_log(self, limit: int) -> int:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        greatest = "MAX" if self.dialect == "sqlite" else "GREATEST"
        async with self._write() as tx:
            await self._lock_for_rollup(tx)
            rolled = await _rolled_id(tx, self._for_update)
            # The next `limit` ids, wherever they are: gaps (rolled-back inserts, erased
            # users) never stall the roll.
            batch = await tx.fetchone(
                "SELECT COUNT(*), MAX(id) FROM"
                " (SELECT id FROM request_log WHERE id > ? ORDER BY id LIMIT ?) b",
                (rolled, limit),
            )
            if batch is None or not batch[0]:
                return 0
            count, upper = int(batch[0]), int(batch[1])
            # The WHERE also keeps SQLite from reading ON CONFLICT as a join constraint.
            # Only fixed fragments are interpolated (S608); the values are bound.
            await tx.execute(
                "INSERT INTO request_log_hourly (user_id, hour, provider, model, token_id,"  # noqa: S608
                " app_id, requests, errors, input_tokens, output_tokens, last_at)"
                f" SELECT user_id, created_at - created_at % {_HOUR_MS} AS h, provider,"
                " COALESCE(model, '') AS m, COALESCE(token_id, '') AS tok, MIN(app_id),"
                f" COUNT(*), SUM({_ERROR}), SUM(COALESCE(input_tokens, 0)),"
                " SUM(COALESCE(output_tokens, 0)), MAX(created_at)"
                " FROM request_log WHERE id > ? AND id <= ?"
                " GROUP BY user_id, h, provider, m, tok"
                " ON CONFLICT (user_id, hour, provider, model, token_id) DO UPDATE SET"
                " requests = request_log_hourly.requests + excluded.requests,"
                " errors = request_log_hourly.errors + excluded.errors,"
                " input_tokens = request_log_hourly.input_tokens + excluded.input_tokens,"
                " output_tokens = request_log_hourly.output_tokens + excluded.output_tokens,"
                f" last_at = {greatest}(request_log_hourly.last_at, excluded.last_at)",
                (rolled, upper),
            )
            await tx.execute("UPDATE request_log_rollup SET rolled_id = ? WHERE id = 1", (upper,))
        return count

    async def _lock_for_rollup(self, tx: Tx) -> None:
        """Engines whose ids can commit out of order (PostgreSQL) wait here for inserts in
        flight; SQLite's write transaction already excludes every other writer."""

    #: Appended to a SELECT of the rollup state row in a write: serialises the writers of
    #: request_log_hourly on that row (their row locks then never cross: no deadlock).
    _for_update = ""

    async def purge_request_log(self, before: int) -> int:
        async with self._write() as tx:
            # Never a raw row not yet rolled up: the reads would lose it.
            return await tx.execute(
                "DELETE FROM request_log WHERE created_at < ?"
                " AND id <= (SELECT rolled_id FROM request_log_rollup)",
                (before,),
            )

    async def purge_request_log_rollups(self, before: int) -> int:
        async with self._write() as tx:
            await _rolled_id(tx, self._for_update)
            return await tx.execute(
                "DELETE FROM request_log_hourly WHERE hour < ?", (before - before % _HOUR_MS,)
            )

    async def usage_stats(self, column: str, value: str, now: int) -> dict[str, Any]:
        if column not in ("user_id", "app_id"):  # never interpolate anything else
            raise ValueError(column)
        day = 86_400_000
        since_7d, since_30d = _hour_of(now - 7 * day), _hour_of(now - 30 * day)
        usage = _usage(f"{column} = ?", f"{column} = ?")  # column is one of two fixed names
        both = (value, value)
        async with self._read() as tx:
            totals = await tx.fetchone(
                "SELECT SUM(requests), SUM(CASE WHEN t >= ? THEN requests ELSE 0 END),"
                " SUM(CASE WHEN t >= ? THEN requests ELSE 0 END), SUM(errors),"
                " SUM(input_tokens), SUM(output_tokens), MAX(last_at),"
                f" COUNT(DISTINCT user_id) {usage}",
                (since_7d, since_30d, *both),
            )
            providers = await tx.fetchall(
                f"SELECT provider, SUM(requests), SUM(errors) {usage}"
                " GROUP BY provider ORDER BY SUM(requests) DESC, provider",
                both,
            )
            models = await tx.fetchall(
                "SELECT model, SUM(requests), SUM(input_tokens), SUM(output_tokens)"
                f" {usage} WHERE model <> ''"
                " GROUP BY model ORDER BY SUM(requests) DESC, model LIMIT 10",
                both,
            )
        t = totals or (0, 0, 0, 0, 0, 0, None, 0)
        total = int(t[0] or 0)
        errors = int(t[3] or 0)
        return {
            "total": total,
            "last_7d": int(t[1] or 0),
            "last_30d": int(t[2] or 0),
            "error_count": errors,
            "error_rate": round(errors / total, 4) if total else 0,
            "providers": {r[0]: {"total": int(r[1]), "errors": int(r[2] or 0)} for r in providers},
            "top_models": [
                {
                    "model": r[0],
                    "total": int(r[1]),
                    "input_tokens": int(r[2] or 0),
                    "output_tokens": int(r[3] or 0),
                }
                for r in models
            ],
            "total_input_tokens": int(t[4] or 0),
            "total_output_tokens": int(t[5] or 0),
            "last_request": int(t[6]) if t[6] is not None else None,
            "user_count": int(t[7] or 0),
        }

    async def usage_since(self, user_id: str, since: int) -> dict[str, UsageTotals]:
        if since % _HOUR_MS:  # a rollup row cannot be split inside its hour
            raise ValueError("since must be the start of an hour (UTC)")
        usage = _usage("user_id = ? AND hour >= ?", "user_id = ? AND created_at >= ?")
        async with self._read() as tx:
            rows = await tx.fetchall(
                "SELECT provider, SUM(requests), SUM(input_tokens), SUM(output_tokens),"
                f" MAX(last_at) {usage} GROUP BY provider",
                (user_id, since, user_id, since),
            )
        return {r[0]: _totals(r) for r in rows}

    async def usage_by_token(self, user_id: str) -> dict[str, UsageTotals]:
        usage = _usage("user_id = ? AND token_id <> ''", "user_id = ? AND token_id IS NOT NULL")
        async with self._read() as tx:
            rows = await tx.fetchall(
                "SELECT token_id, SUM(requests), SUM(input_tokens), SUM(output_tokens),"
                f" MAX(last_at) {usage} GROUP BY token_id",
                (user_id, user_id),
            )
        return {r[0]: _totals(r) for r in rows}


_HOUR_MS = 3_600_000
_ERROR = "CASE WHEN status < 200 OR status >= 300 THEN 1 ELSE 0 END"
_ROLLED = "(SELECT rolled_id FROM request_log_rollup)"


def _usage(hourly_where: str, raw_where: str) -> str:
    """`FROM` the usage rows both tables give, as one subquery: the rollups matching
    `hourly_where` and the raw rows not yet rolled up matching `raw_where` (each served
    by its table's indexes). Columns: user_id, provider, model and token_id ('' for
    none), t (the hour, or the raw row's time), requests, errors, input_tokens,
    output_tokens, last_at."""
    # Only fixed fragments are interpolated (S608): callers' conditions bind their values.
    return (
        "FROM (SELECT user_id, provider, model, token_id, hour AS t, requests, errors,"  # noqa: S608
        " input_tokens, output_tokens, last_at"
        f" FROM request_log_hourly WHERE {hourly_where}"
        " UNION ALL"
        " SELECT user_id, provider, COALESCE(model, ''), COALESCE(token_id, ''), created_at,"
        f" 1, {_ERROR}, COALESCE(input_tokens, 0), COALESCE(output_tokens, 0), created_at"
        f" FROM request_log WHERE {raw_where} AND id > {_ROLLED}) u"
    )


def _hour_of(ms: int) -> int:
    return ms - ms % _HOUR_MS


async def _rolled_id(tx: Tx, for_update: str) -> int:
    sql = "SELECT rolled_id FROM request_log_rollup WHERE id = 1" + for_update  # noqa: S608
    row = await tx.fetchone(sql)
    if row is None:  # migration 5 inserts it; without it every read would be wrong
        raise RuntimeError("the request_log_rollup row is missing")
    return int(row[0])


def _totals(r: Row) -> UsageTotals:
    return UsageTotals(
        int(r[1] or 0), int(r[2] or 0), int(r[3] or 0), int(r[4]) if r[4] is not None else None
    )


def _now() -> int:
    return int(time.time() * 1000)


def _blob(value: Any) -> bytes:
    """A ciphertext column as bytes; a mistyped value (TEXT where a BLOB belongs, after a
    bad restore) becomes bytes that fail to decrypt with a clear error, not a crash."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b""


async def _insert_user(tx: Tx, user_id: str, app_id: str, now: int) -> None:
    await tx.execute(
        "INSERT INTO users (id, app_id, created_at) VALUES (?, ?, ?)", (user_id, app_id, now)
    )


def _data_key(row: Any) -> DataKeyRecord:
    return DataKeyRecord(str(row[0]), str(row[1]), str(row[2]), str(row[3]),
                         _blob(row[4]), int(row[5]))  # fmt: skip
