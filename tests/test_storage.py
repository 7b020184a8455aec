"""The storage interface, run against both engines: SQLite (a temp file) and the real
PostgreSQL (a fresh schema per test, see tests/backends.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from backends import PgDatabase, free_port

from byok_relay.storage import (
    DataKeyRecord,
    RequestLogRow,
    Storage,
    StorageUnavailable,
    open_storage,
)
from byok_relay.storage.base import SealedRow
from byok_relay.storage.migrations import MIGRATIONS
from byok_relay.storage.sql import SQLStorage

pytestmark = pytest.mark.asyncio(loop_scope="session")

ALL_BYTES = bytes(range(256)) * 3
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01 in ms: past 2**31 and 2**32


def _now() -> int:
    return int(time.time() * 1000)


def _uid() -> str:
    return uuid.uuid4().hex


OpenStorage = Callable[[], Awaitable[Storage]]


@pytest_asyncio.fixture(
    loop_scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStorage]:
    """Opens (connected, migrated) storages on one fresh database of the param's engine."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"
    else:
        pg_db: PgDatabase = request.getfixturevalue("pg_db")
        url = pg_db.schema_url()
    opened: list[Storage] = []

    async def open_one() -> Storage:
        storage = open_storage(url, pool_size=4)
        await storage.connect()
        opened.append(storage)
        await storage.migrate()
        return storage

    yield open_one
    for storage in opened:
        await storage.close()


@pytest_asyncio.fixture(loop_scope="session")
async def db(open_db: OpenStorage) -> Storage:
    return await open_db()


async def _user(db: Storage, app_id: str = "app") -> tuple[str, str]:
    user_id, token_hash = _uid(), _uid()
    await db.create_user(user_id, app_id, token_hash, _now(), FAR_FUTURE)
    return user_id, token_hash


# --- schema ------------------------------------------------------------------------------
async def test_migrate_is_idempotent(db: Storage) -> None:
    assert await db.migrate() == []
    assert await db.schema_version() == MIGRATIONS[-1].version
    await db.ping()


async def test_fresh_database_gets_every_migration(open_db: OpenStorage) -> None:
    db = await open_db()  # the fixture migrated it; a second engine sees it done
    assert await db.schema_version() == MIGRATIONS[-1].version


async def test_concurrent_migrations_apply_once(
    open_db: OpenStorage, request: pytest.FixtureRequest
) -> None:
    """Several instances starting at once: each migration applied exactly once."""
    storages = [await open_db() for _ in range(3)]  # opened (and migrated) one by one
    results = await asyncio.gather(*(s.migrate() for s in storages))
    assert results == [[], [], []]


@pytest.mark.postgres
async def test_postgres_concurrent_first_migration(pg_db: PgDatabase) -> None:
    """On an empty schema, racing starters serialise on the advisory lock."""
    url = pg_db.schema_url()
    storages = [open_storage(url, pool_size=2) for _ in range(4)]
    for s in storages:
        await s.connect()
    try:
        results = await asyncio.gather(*(s.migrate() for s in storages))
    finally:
        for s in storages:
            await s.close()
    # One migration per transaction: racing starters may share the pending versions
    # between them, but each is applied exactly once.
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in MIGRATIONS], results


# --- identities (SPEC §10) ------------------------------------------------------------------
async def test_racing_first_uses_of_an_identity_make_one_user(open_db: OpenStorage) -> None:
    """Instances racing on a new sign-in: one user, every racer gets its id, no orphan."""
    storages = [await open_db() for _ in range(3)]
    racers = [s.create_identity_user(_uid(), "app", "https://idp.test/", "sub-1", _now())
              for s in storages for _ in range(3)]  # fmt: skip
    winners = set(await asyncio.gather(*racers))
    assert len(winners) == 1
    (user_id,) = winners
    db = storages[0]
    assert await db.lookup_identity("https://idp.test/", "sub-1") == user_id
    assert await db.lookup_identity("https://other.test/", "sub-1") is None
    assert isinstance(db, SQLStorage)
    async with db._read() as tx:  # the losers' user rows were rolled back
        assert await tx.fetchone("SELECT count(*) FROM users") == (1,)
    assert await db.delete_user(user_id)
    assert await db.lookup_identity("https://idp.test/", "sub-1") is None


# --- wrapped data keys (SPEC §11) ------------------------------------------------------------
async def test_data_keys_round_trip_and_latest(db: Storage) -> None:
    wrapped = bytes(range(60))  # binary, as the HSM returns it
    older = DataKeyRecord("dk-old", "pkcs11", "master", "AES-GCM", wrapped, _now() - 1000)
    newer = DataKeyRecord("dk-new", "pkcs11", "master", "AES-GCM", wrapped[::-1], _now())
    other = DataKeyRecord("dk-other", "pkcs11", "another", "AES-GCM", wrapped, _now() + 1000)
    for record in (older, newer, other):
        await db.put_data_key(record)
    assert await db.get_data_key("dk-old") == older
    assert await db.get_data_key("missing") is None
    assert await db.latest_data_key("pkcs11", "master") == newer
    assert await db.latest_data_key("pkcs11", "nothing") is None


# --- users and tokens ----------------------------------------------------------------------
async def test_token_lifecycle(db: Storage) -> None:
    user_id, token_hash = await _user(db, "my-app")
    record = await db.lookup_token(token_hash)
    assert record is not None
    assert (record.user_id, record.app_id, record.expires_at, record.revoked_at) == (
        user_id,
        "my-app",
        FAR_FUTURE,
        None,
    )
    assert await db.lookup_token("unknown") is None

    assert await db.revoke_token(token_hash, _now()) is True
    assert await db.revoke_token(token_hash, _now()) is False
    revoked = await db.lookup_token(token_hash)
    assert revoked is not None and revoked.revoked_at is not None


async def test_token_without_expiry(db: Storage) -> None:
    user_id, token_hash = _uid(), _uid()
    await db.create_user(user_id, "app", token_hash, _now(), None)
    record = await db.lookup_token(token_hash)
    assert record is not None and record.expires_at is None


async def test_rotate_keeps_user_and_kills_old_token(db: Storage) -> None:
    user_id, old = await _user(db)
    await db.put_key(user_id, "openai", "v1", b"x" * 40, "abcd", None, _now())
    new = _uid()
    assert await db.rotate_token(old, new, _now(), FAR_FUTURE) is True
    old_rec, new_rec = await db.lookup_token(old), await db.lookup_token(new)
    assert old_rec is not None and old_rec.revoked_at is not None
    assert new_rec is not None and new_rec.revoked_at is None and new_rec.user_id == user_id
    assert await db.get_key(user_id, "openai") is not None
    # A dead token cannot be rotated again.
    assert await db.rotate_token(old, _uid(), _now(), None) is False


async def test_concurrent_rotations_yield_one_successor(open_db: OpenStorage) -> None:
    """Two instances rotating the same token at once: exactly one wins."""
    a, b = await open_db(), await open_db()
    _, old = await _user(a)
    first, second = _uid(), _uid()
    results = await asyncio.gather(
        a.rotate_token(old, first, _now(), None), b.rotate_token(old, second, _now(), None)
    )
    assert sorted(results) == [False, True]
    live = [h for h in (first, second) if await a.lookup_token(h) is not None]
    assert len(live) == 1


async def test_duplicate_token_hash_is_an_error_not_an_outage(db: Storage) -> None:
    _, token_hash = await _user(db)
    with pytest.raises(Exception) as info:
        await db.create_user(_uid(), "app", token_hash, _now(), None)
    assert not isinstance(info.value, StorageUnavailable)
    # The failed transaction left nothing behind and the storage still works.
    await db.ping()


async def test_delete_user_erases_everything_of_theirs_only(db: Storage) -> None:
    gone, gone_token = await _user(db)
    kept, kept_token = await _user(db)
    for user in (gone, kept):
        await db.put_key(user, "openai", "v1", b"c" * 40, "abcd", None, _now())
        await db.record_usage([_row(user, "openai")], {})
    assert await db.delete_user(gone) is True
    assert await db.delete_user(gone) is False
    assert await db.lookup_token(gone_token) is None
    assert await db.get_key(gone, "openai") is None
    assert await db.list_keys(gone) == []
    assert (await db.usage_stats("user_id", gone, _now()))["total"] == 0
    assert await db.lookup_token(kept_token) is not None
    assert await db.get_key(kept, "openai") is not None
    assert (await db.usage_stats("user_id", kept, _now()))["total"] == 1


# --- keys ------------------------------------------------------------------------------
async def test_key_put_replace_list_delete(db: Storage) -> None:
    user_id, _ = await _user(db)
    t0 = _now()
    await db.put_key(user_id, "openai", "v1", ALL_BYTES, "wxyz", None, t0)
    stored = await db.get_key(user_id, "openai")
    assert stored is not None
    assert (stored.key_version, stored.ciphertext, stored.base_url) == ("v1", ALL_BYTES, None)

    await db.put_key(
        user_id, "openai-compatible", "v1", b"k" * 30, "1234", "https://gw.example/api", t0
    )
    await db.put_key(user_id, "openai", "v2", b"new" * 20, "abcd", None, t0 + 5)
    replaced = await db.get_key(user_id, "openai")
    assert replaced is not None and replaced.key_version == "v2"
    assert replaced.ciphertext == b"new" * 20

    listed = await db.list_keys(user_id)
    assert [k.provider for k in listed] == ["openai", "openai-compatible"]
    openai = listed[0]
    assert (openai.hint, openai.created_at, openai.updated_at, openai.last_used_at) == (
        "abcd",
        t0,
        t0 + 5,
        None,
    )
    assert listed[1].base_url == "https://gw.example/api"

    assert await db.delete_key(user_id, "openai") is True
    assert await db.delete_key(user_id, "openai") is False
    assert await db.get_key(user_id, "openai") is None
    assert [k.provider for k in await db.list_keys(user_id)] == ["openai-compatible"]


async def test_reencrypt_helpers(db: Storage) -> None:
    user_id, _ = await _user(db)
    for provider in ("anthropic", "google", "openai"):
        await db.put_key(user_id, provider, "old", provider.encode() * 8, "hint", None, _now())
    await db.put_key(user_id, "groq", "cur", b"g" * 20, "hint", None, _now())
    assert await db.count_keys_not_at_version("cur") >= 3
    batch = await db.keys_not_at_version("cur", (user_id, ""), 2)
    assert [(r.user_id, r.provider) for r in batch] == [
        (user_id, "anthropic"),
        (user_id, "google"),
    ]
    # The user replaces google meanwhile: that swap must be skipped.
    await db.put_key(user_id, "google", "cur", b"fresh" * 8, "hint", None, _now())
    changed = await db.replace_sealed_keys([(r, "cur", b"re" * 20) for r in batch])
    assert changed == 1
    google = await db.get_key(user_id, "google")
    assert google is not None and google.ciphertext == b"fresh" * 8
    stale = SealedRow(user_id, "openai", "nope", b"x")
    assert await db.replace_sealed_keys([(stale, "cur", b"y" * 20)]) == 0


# --- request log -------------------------------------------------------------------------
def _row(
    user_id: str,
    provider: str,
    *,
    status: int = 200,
    created_at: int | None = None,
    model: str | None = "gpt-4o-mini",
) -> RequestLogRow:
    return RequestLogRow(
        user_id=user_id,
        app_id="app",
        provider=provider,
        model=model,
        status=status,
        latency_ms=12,
        streaming=True,
        input_tokens=3,
        output_tokens=5,
        created_at=created_at or _now(),
    )


async def test_usage_rows_stats_last_used_and_purge(db: Storage) -> None:
    user_id, _ = await _user(db)
    await db.put_key(user_id, "openai", "v1", b"c" * 40, "abcd", None, _now())
    now = _now()
    old = now - 40 * 86_400_000
    rows = [
        _row(user_id, "openai", created_at=now),
        _row(user_id, "openai", status=429, created_at=now),
        _row(user_id, "anthropic", created_at=old, model=None),
    ]
    await db.record_usage(rows, {(user_id, "openai"): now})
    # A later flush with an older timestamp never moves last_used_at backwards.
    await db.record_usage([], {(user_id, "openai"): now - 1000})
    keys = await db.list_keys(user_id)
    assert keys[0].last_used_at == now

    stats = await db.usage_stats("user_id", user_id, now)
    assert stats["total"] == 3
    assert stats["last_7d"] == 2 and stats["last_30d"] == 2
    assert stats["error_count"] == 1
    assert stats["providers"]["openai"] == {"total": 2, "errors": 1}
    assert stats["total_input_tokens"] == 9 and stats["total_output_tokens"] == 15
    assert stats["top_models"][0]["model"] == "gpt-4o-mini"

    removed = await db.purge_request_log(now - 86_400_000)
    assert removed >= 1
    assert (await db.usage_stats("user_id", user_id, now))["total"] == 2


async def test_usage_rows_of_a_deleted_user_are_not_written(db: Storage) -> None:
    # A stream that ends after DELETE /users (on this or another instance) flushes its
    # row late: it must not bring back data of an erased user.
    user_id, _ = await _user(db)
    assert await db.delete_user(user_id)
    await db.record_usage([_row(user_id, "openai")], {(user_id, "openai"): _now()})
    assert (await db.usage_stats("user_id", user_id, _now()))["total"] == 0


# --- faults ------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_postgres_unreachable_is_storage_unavailable(pg_db: PgDatabase) -> None:
    storage = open_storage(f"postgresql://postgres@127.0.0.1:{free_port()}/x", pool_size=2)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await storage.connect()
    assert time.monotonic() - started < 6


@pytest.mark.postgres
async def test_postgres_unknown_database_is_storage_unavailable(pg_db: PgDatabase) -> None:
    url = pg_db.url.rsplit("/", 1)[0] + "/byok_no_such_database"
    with pytest.raises(StorageUnavailable):
        await open_storage(url).connect()


@pytest.mark.postgres
async def test_postgres_killed_connections_recover(pg_db: PgDatabase) -> None:
    """The server drops every connection (as on a restart): at most one failure, then the
    pool reconnects by itself."""
    from backends import _pg_admin

    victim = f"byok-victim-{uuid.uuid4().hex[:8]}"
    db = open_storage(f"{pg_db.schema_url()}&application_name={victim}", pool_size=3)
    await db.connect()
    try:
        await db.migrate()
        user_id, token_hash = await _user(db)
        await asyncio.gather(*(db.lookup_token(token_hash) for _ in range(6)))  # fill pool
        await _pg_admin(
            pg_db.url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{victim}'",
        )
        # Reads retry once on a fresh connection: no failure at all.
        record = await db.lookup_token(token_hash)
        assert record is not None and record.user_id == user_id
        # A write may fail once (its connection was dead); the next one succeeds.
        outcomes: list[str] = []
        for _ in range(3):
            try:
                await db.put_key(user_id, "openai", "v1", b"k" * 20, "hint", None, _now())
                outcomes.append("ok")
            except StorageUnavailable:
                outcomes.append("503")
        print("writes after the server dropped every connection:", outcomes)
        assert outcomes[-1] == "ok" and outcomes.count("503") <= 1, outcomes
        await db.ping()
    finally:
        await db.close()
