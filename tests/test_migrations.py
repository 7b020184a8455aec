"""Migration safety: an existing database keeps every user and key across an upgrade; a
failing migration leaves the database exactly as it was; `byok-relay migrate` and
concurrent starters apply each migration once (SQLite and PostgreSQL)."""

from __future__ import annotations

import ast
import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from backends import PgDatabase, run_sync
from providers.mock import MockProviders
from providers.relay import TEST_ENCRYPTION_SECRET, StartRelay

from byok_relay.crypto import KeyCipher, SealedKey, TokenHasher, key_hint, new_token
from byok_relay.storage import Storage, open_storage
from byok_relay.storage import sql as sql_module
from byok_relay.storage.migrations import MIGRATIONS, Migration

# The schema exactly as release 1 created it (frozen here on purpose: a database made by
# that release must keep working even if someone edits migration 1 in place, which they
# must not).
V1_SQLITE_SCHEMA = """
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
CREATE TABLE users (id TEXT PRIMARY KEY, app_id TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX users_app_id ON users (app_id);
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER);
CREATE INDEX tokens_user_id ON tokens (user_id);
CREATE TABLE api_keys (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider TEXT NOT NULL, key_version TEXT NOT NULL, ciphertext BLOB NOT NULL,
    hint TEXT NOT NULL, base_url TEXT, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, last_used_at INTEGER,
    PRIMARY KEY (user_id, provider));
CREATE INDEX api_keys_key_version ON api_keys (key_version);
CREATE TABLE request_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, app_id TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT, status INTEGER NOT NULL, latency_ms INTEGER NOT NULL,
    streaming INTEGER NOT NULL, input_tokens INTEGER, output_tokens INTEGER,
    created_at INTEGER NOT NULL);
CREATE INDEX request_log_user ON request_log (user_id, created_at);
CREATE INDEX request_log_app ON request_log (app_id, created_at);
CREATE INDEX request_log_created ON request_log (created_at);
INSERT INTO schema_migrations VALUES (1, 'users, tokens, api_keys, request_log', 1700000000000);
"""

PROVIDERS = ("openai", "anthropic", "google")
N_USERS = 25


def _key_for(i: int, provider: str) -> str:
    return f"sk-migr-{provider}-{i:04d}-0123456789"


def build_v1_database(path: Path) -> list[tuple[str, str]]:
    """A SQLite file as release 1 left it, with users, tokens, keys and log rows.
    Returns (user_id, token) pairs."""
    cipher = KeyCipher(TEST_ENCRYPTION_SECRET)
    hasher = TokenHasher(TEST_ENCRYPTION_SECRET)
    users = []
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(V1_SQLITE_SCHEMA)
        for i in range(N_USERS):
            user_id, token = f"user{i:04d}", new_token()
            users.append((user_id, token))
            conn.execute("INSERT INTO users VALUES (?, ?, ?)", (user_id, "migr-app", 1_700_000_000))
            conn.execute(
                "INSERT INTO tokens (token_hash, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, NULL)",
                (hasher.hash(token), user_id, 1_700_000_000_000),
            )
            for provider in PROVIDERS:
                secret = _key_for(i, provider)
                sealed = cipher.seal(secret, user_id, provider)
                conn.execute(
                    "INSERT INTO api_keys (user_id, provider, key_version, ciphertext, hint,"
                    " base_url, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                    (user_id, provider, sealed.version, sealed.blob, key_hint(secret),
                     1_700_000_000_000, 1_700_000_000_000),
                )  # fmt: skip
            conn.execute(
                "INSERT INTO request_log (user_id, app_id, provider, model, status, latency_ms,"
                " streaming, input_tokens, output_tokens, created_at)"
                " VALUES (?, 'migr-app', 'openai', 'gpt-4o-mini', 200, 10, 1, 1, 2, ?)",
                (user_id, 1_700_000_000_000),
            )
    conn.close()
    return users


async def _assert_all_kept(storage: Storage, users: list[tuple[str, str]]) -> None:
    cipher = KeyCipher(TEST_ENCRYPTION_SECRET)
    hasher = TokenHasher(TEST_ENCRYPTION_SECRET)
    for i, (user_id, token) in enumerate(users):
        record = await storage.lookup_token(hasher.hash(token))
        assert record is not None and record.user_id == user_id and record.revoked_at is None
        assert [k.provider for k in await storage.list_keys(user_id)] == sorted(PROVIDERS)
        for provider in PROVIDERS:
            stored = await storage.get_key(user_id, provider)
            assert stored is not None
            sealed = SealedKey(stored.key_version, stored.ciphertext)
            assert cipher.open(sealed, user_id, provider) == _key_for(i, provider)


def test_v1_sqlite_database_upgrades_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Current code (plus a synthetic future migration, so an upgrade really runs)
    migrates a release-1 database and every user, token and key is still readable."""
    db_path = tmp_path / "v1.db"
    users = build_v1_database(db_path)
    future = Migration(
        MIGRATIONS[-1].version + 1,
        "synthetic: a new column and index",
        (
            "ALTER TABLE api_keys ADD COLUMN label TEXT",
            "CREATE INDEX api_keys_label ON api_keys (label)",
        ),
    )
    monkeypatch.setattr(sql_module, "MIGRATIONS", (*MIGRATIONS, future))

    async def run() -> list[int]:
        storage = open_storage(f"sqlite:///{db_path}")
        await storage.connect()
        try:
            applied = await storage.migrate()
            assert await storage.schema_version() == future.version
            await _assert_all_kept(storage, users)
            return applied
        finally:
            await storage.close()

    applied = run_sync(run())
    assert applied == [m.version for m in MIGRATIONS[1:]] + [future.version]


def test_v1_sqlite_database_served_by_current_relay(
    tmp_path: Path, start_relay: StartRelay, mocks: MockProviders
) -> None:
    """The real server started on a release-1 file: migrates at start, every user's token
    works, every key is listed and is the exact key sent upstream."""
    data_dir = tmp_path / "relay"
    data_dir.mkdir()
    users = build_v1_database(data_dir / "relay.db")
    relay = start_relay(data_dir=data_dir)
    with relay.client() as client:
        for i, (_user_id, token) in enumerate(users):
            headers = {"x-relay-token": token}
            listed = client.get("/keys", headers=headers)
            assert listed.status_code == 200, listed.text
            assert sorted(listed.json()["providers"]) == sorted(PROVIDERS)
            if i % 5 == 0:  # a sample goes all the way upstream
                r = client.post(
                    "/relay/openai/v1/chat/completions",
                    headers=headers,
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert r.status_code == 200, r.text
                sent = mocks.openai.last_request.headers.get("authorization")
                assert sent == f"Bearer {_key_for(i, 'openai')}"


# --- a failing migration ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    pg_db: PgDatabase = request.getfixturevalue("pg_db")
    return pg_db.schema_url()


async def _snapshot(storage: Storage) -> Any:
    """Schema and every row, engine-neutral enough to compare before/after."""
    from byok_relay.storage.sql import SQLStorage

    assert isinstance(storage, SQLStorage)
    async with storage._read() as tx:
        if storage.dialect == "sqlite":
            schema = await tx.fetchall(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
            )
        else:
            schema = await tx.fetchall(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() ORDER BY table_name, column_name"
            )
            schema += await tx.fetchall(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = current_schema() ORDER BY indexname"
            )
        data = {}
        for table in ("schema_migrations", "users", "tokens", "api_keys", "request_log"):
            data[table] = sorted(map(tuple, await tx.fetchall(f"SELECT * FROM {table}")))
    return schema, data


@pytest.mark.asyncio(loop_scope="session")
async def test_failing_migration_leaves_database_untouched(
    any_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(any_url, pool_size=2)
    await storage.connect()
    try:
        await storage.migrate()
        await storage.create_user("keeper", "app", "hash-keeper", 1, None)
        await storage.put_key("keeper", "openai", "v1", b"\x00sealed\xff", "abcd", None, 1)
        before = await _snapshot(storage)
        version = await storage.schema_version()

        broken = Migration(
            MIGRATIONS[-1].version + 1,
            "broken on purpose",
            (
                "CREATE TABLE half_done (a INTEGER)",
                "ALTER TABLE users ADD COLUMN note TEXT",
                "UPDATE users SET app_id = 'clobbered'",
                "DELETE FROM api_keys",
                "THIS IS NOT SQL",
            ),
        )
        monkeypatch.setattr(sql_module, "MIGRATIONS", (*MIGRATIONS, broken))
        with pytest.raises(Exception, match=r"(?i)syntax"):
            await storage.migrate()

        assert await _snapshot(storage) == before
        assert await storage.schema_version() == version
        stored = await storage.get_key("keeper", "openai")
        assert stored is not None and stored.ciphertext == b"\x00sealed\xff"

        # Fixed migration: applies cleanly afterwards.
        fixed = Migration(broken.version, "fixed", ("CREATE TABLE half_done (a INTEGER)",))
        monkeypatch.setattr(sql_module, "MIGRATIONS", (*MIGRATIONS, fixed))
        assert await storage.migrate() == [fixed.version]
    finally:
        await storage.close()


# --- the CLI and concurrent starters ---------------------------------------------------------
def _migrate_cli(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "DATABASE_URL": url,
    }
    return subprocess.run(
        [sys.executable, "-m", "byok_relay", "migrate"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_migrate_cli_on_both_backends(any_url: str, tmp_path: Path) -> None:
    first = _migrate_cli(any_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied migrations: [" in first.stdout
    second = _migrate_cli(any_url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout


@pytest.mark.postgres
def test_concurrent_migrate_commands_apply_once(pg_url: str, tmp_path: Path) -> None:
    """Several instances starting together on an empty database: the advisory lock makes
    each migration apply once. (SQLite: see test_storage's concurrent migrations.)"""
    any_url = pg_url

    async def run_all() -> list[tuple[int, str, str]]:
        async def one() -> tuple[int, str, str]:
            env = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
                   "DATABASE_URL": any_url}  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "byok_relay", "migrate", env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            return proc.returncode or 0, out.decode(), err.decode()

        return await asyncio.gather(*(one() for _ in range(3)))

    results = run_sync(run_all())
    assert [r[0] for r in results] == [0, 0, 0], results
    # Each starter applies whatever is pending when it gets the lock, one migration per
    # transaction, so the versions may be split among them; each is applied exactly once.
    applied = [
        version
        for _, out, _ in results
        if out.startswith("applied migrations: ")
        for version in ast.literal_eval(out.removeprefix("applied migrations: ").strip())
    ]
    assert sorted(applied) == [m.version for m in MIGRATIONS], results
