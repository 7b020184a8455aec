"""Versioned schema migrations, shared by every engine.

Each migration runs in one transaction together with its row in `schema_migrations`,
so a failed migration leaves the database exactly as it was. Never edit a released
migration: add a new one. `{blob}`, `{bigint}`, `{serial}` and `{without_rowid}` are
filled per dialect.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


TYPES = {
    "sqlite": {
        "blob": "BLOB",
        "bigint": "INTEGER",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        # The primary key is the table: no second copy of its columns in an index.
        "without_rowid": "WITHOUT ROWID",
    },
    "postgresql": {
        "blob": "BYTEA",
        "bigint": "BIGINT",
        "serial": "BIGSERIAL PRIMARY KEY",
        "without_rowid": "",
    },
}

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {bigint} NOT NULL
)"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, tokens, api_keys, request_log",
        (
            """CREATE TABLE users (
                id TEXT PRIMARY KEY,
                app_id TEXT NOT NULL,
                created_at {bigint} NOT NULL
            )""",
            "CREATE INDEX users_app_id ON users (app_id)",
            # Tokens live apart from users so rotation keeps the user (and keys) and a
            # revoked token can still be told apart from an unknown one.
            """CREATE TABLE tokens (
                token_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                created_at {bigint} NOT NULL,
                expires_at {bigint},
                revoked_at {bigint}
            )""",
            "CREATE INDEX tokens_user_id ON tokens (user_id)",
            """CREATE TABLE api_keys (
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                provider TEXT NOT NULL,
                key_version TEXT NOT NULL,
                ciphertext {blob} NOT NULL,
                hint TEXT NOT NULL,
                base_url TEXT,
                created_at {bigint} NOT NULL,
                updated_at {bigint} NOT NULL,
                last_used_at {bigint},
                PRIMARY KEY (user_id, provider)
            )""",
            "CREATE INDEX api_keys_key_version ON api_keys (key_version)",
            """CREATE TABLE request_log (
                id {serial},
                user_id TEXT NOT NULL,
                app_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT,
                status INTEGER NOT NULL,
                latency_ms INTEGER NOT NULL,
                streaming INTEGER NOT NULL,
                input_tokens INTEGER,
                output_tokens INTEGER,
                created_at {bigint} NOT NULL
            )""",
            "CREATE INDEX request_log_user ON request_log (user_id, created_at)",
            "CREATE INDEX request_log_app ON request_log (app_id, created_at)",
            "CREATE INDEX request_log_created ON request_log (created_at)",
        ),
    ),
    Migration(
        2,
        "scoped tokens, owner budgets, request_log.token_id",
        (
            # Scoped tokens (SPEC §9) are apart from relay tokens: they cannot manage the
            # account, and a parent's revocation revokes them by parent_hash.
            """CREATE TABLE scoped_tokens (
                id TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                parent_hash TEXT NOT NULL,
                label TEXT,
                scope TEXT NOT NULL,
                created_at {bigint} NOT NULL,
                expires_at {bigint} NOT NULL,
                revoked_at {bigint}
            )""",
            "CREATE INDEX scoped_tokens_user ON scoped_tokens (user_id)",
            "CREATE INDEX scoped_tokens_parent ON scoped_tokens (parent_hash)",
            """CREATE TABLE budgets (
                user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
                budget TEXT NOT NULL,
                updated_at {bigint} NOT NULL
            )""",
            # No index of its own: every query by token_id also names the user, and
            # request_log_user serves it; one index fewer per logged request.
            "ALTER TABLE request_log ADD COLUMN token_id TEXT",
        ),
    ),
    Migration(
        3,
        "identities (users from the app's identity provider)",
        (
            # SPEC §10: a user signed in at the app's identity provider is the pair
            # (issuer, subject); the same subject under two issuers is two users.
            """CREATE TABLE identities (
                issuer TEXT NOT NULL,
                subject TEXT NOT NULL,
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                created_at {bigint} NOT NULL,
                PRIMARY KEY (issuer, subject)
            )""",
            "CREATE INDEX identities_user ON identities (user_id)",
        ),
    ),
    Migration(
        4,
        "data_keys (envelope encryption under an HSM master key)",
        (
            # SPEC §11: data keys wrapped by the HSM; api_keys.key_version 'p11:<id>'
            # names the one that sealed a row.
            """CREATE TABLE data_keys (
                id TEXT PRIMARY KEY,
                custody TEXT NOT NULL,
                key_label TEXT NOT NULL,
                mechanism TEXT NOT NULL,
                wrapped {blob} NOT NULL,
                created_at {bigint} NOT NULL
            )""",
        ),
    ),
    Migration(
        5,
        "request_log_hourly (per-hour rollups of the request log)",
        (
            # One row per (user, hour, provider, model, scoped token): what every usage
            # read needs, so raw rows can be kept for a shorter time. '' stands for "no
            # model" / "no scoped token" (NULL cannot be in a primary key).
            """CREATE TABLE request_log_hourly (
                user_id TEXT NOT NULL,
                app_id TEXT NOT NULL,
                token_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                hour {bigint} NOT NULL,
                requests {bigint} NOT NULL,
                errors {bigint} NOT NULL,
                input_tokens {bigint} NOT NULL,
                output_tokens {bigint} NOT NULL,
                last_at {bigint} NOT NULL,
                PRIMARY KEY (user_id, hour, provider, model, token_id)
            ) {without_rowid}""",
            "CREATE INDEX request_log_hourly_app ON request_log_hourly (app_id, hour)",
            # For REQUEST_LOG_ROLLUP_RETENTION_DAYS: purging by hour without a full scan.
            "CREATE INDEX request_log_hourly_hour ON request_log_hourly (hour)",
            # The highest request_log.id folded into the rollups: reads add the raw rows
            # above it. 0: the rows already there are folded by the first rolls.
            """CREATE TABLE request_log_rollup (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                rolled_id {bigint} NOT NULL
            )""",
            "INSERT INTO request_log_rollup (id, rolled_id) VALUES (1, 0)",
        ),
    ),
)


def render(sql: str, dialect: str) -> str:
    return sql.format(**TYPES[dialect])
