"""The storage interface, run against both engines: SQLite (a temp file) and the real
PostgreSQL (a fresh schema per test, see tests/backends.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

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
from byok_relay.usage import UsageRecorder

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

    # Raw rows go only once rolled up; the rollups then still count them, until the
    # rollups of those hours are purged too.
    assert await db.purge_request_log(now - 86_400_000) == 0
    assert await db.roll_up_request_log(100) >= 3
    assert await db.purge_request_log(now - 86_400_000) >= 1
    assert (await db.usage_stats("user_id", user_id, now))["total"] == 3
    assert await db.purge_request_log_rollups(now - 86_400_000) >= 1
    assert (await db.usage_stats("user_id", user_id, now))["total"] == 2


async def test_usage_rows_of_a_deleted_user_are_not_written(db: Storage) -> None:
    # A stream that ends after DELETE /users (on this or another instance) flushes its
    # row late: it must not bring back data of an erased user.
    user_id, _ = await _user(db)
    assert await db.delete_user(user_id)
    await db.record_usage([_row(user_id, "openai")], {(user_id, "openai"): _now()})
    assert (await db.usage_stats("user_id", user_id, _now()))["total"] == 0


# --- request-log rollups ---------------------------------------------------------------------
HOUR = 3_600_000
DAY = 86_400_000


def _mixed_rows(user_id: str, app_id: str, token_id: str, now: int) -> list[RequestLogRow]:
    """Rows over ~42 days at varying minutes: three providers, models and none, errors
    (status < 200 and >= 300), a scoped token, missing token counts, and runs of rows in
    one hour (they share a rollup row)."""
    rows = []
    for k in range(48):
        at = now - k * 21 * HOUR - (k * 7919) % HOUR
        rows.append(
            RequestLogRow(
                user_id=user_id,
                app_id=app_id,
                provider=("openai", "anthropic", "google")[k % 3],
                model=None if k % 5 == 0 else f"model-{k % 4}",
                status=(200, 201, 429, 500, 199, 300)[k % 6],
                latency_ms=10,
                streaming=k % 2 == 0,
                input_tokens=None if k % 7 == 0 else k,
                output_tokens=None if k % 11 == 0 else 2 * k,
                created_at=at,
                token_id=token_id if k % 4 == 0 else None,
            )
        )
    same_hour = now - now % HOUR - 2 * HOUR + 60_000
    rows += [_row(user_id, "openai", created_at=same_hour + i) for i in range(5)]
    return [dataclasses.replace(r, app_id=app_id) for r in rows]


async def _reads(db: Storage, users: list[str], app_id: str, now: int) -> dict[str, Any]:
    """Every usage read the relay makes, for these users and their app."""
    hour = now - now % HOUR
    windows = (hour, hour - 5 * HOUR, hour - DAY, hour - 31 * DAY, 0)
    return {
        "stats": [await db.usage_stats("user_id", u, now) for u in users],
        "app": await db.usage_stats("app_id", app_id, now),
        "since": [[await db.usage_since(u, w) for w in windows] for u in users],
        "tokens": [await db.usage_by_token(u) for u in users],
    }


async def _sql(db: Storage, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """One statement on the storage's own connection: a SELECT's rows, else []."""
    assert isinstance(db, SQLStorage)
    async with db._write() as tx:
        if sql.startswith("SELECT"):
            return [tuple(r) for r in await tx.fetchall(sql, args)]
        await tx.execute(sql, args)
        return []


async def _rolled_id(db: Storage) -> int:
    return int((await _sql(db, "SELECT rolled_id FROM request_log_rollup"))[0][0])


async def _two_users_with_usage(db: Storage, now: int) -> tuple[list[str], str, int]:
    app_id = _uid()
    users = [(await _user(db, app_id))[0] for _ in range(2)]
    rows = [r for u in users for r in _mixed_rows(u, app_id, f"st_{u[:8]}", now)]
    await db.record_usage(rows, {})
    return users, app_id, len(rows)


async def test_reads_are_the_same_before_and_after_a_roll(db: Storage) -> None:
    now = _now()
    users, app_id, n = await _two_users_with_usage(db, now)
    before = await _reads(db, users, app_id, now)
    assert before["stats"][0]["total"] == n // 2 and before["app"]["user_count"] == 2
    assert before["stats"][0]["top_models"] and before["tokens"][0]
    assert await db.roll_up_request_log(50_000) == n
    assert await _rolled_id(db) == (await _sql(db, "SELECT MAX(id) FROM request_log"))[0][0]
    (folded,) = await _sql(db, "SELECT COUNT(*), SUM(requests) FROM request_log_hourly")
    assert folded[1] == n and folded[0] < n  # rows of one hour share a rollup row
    assert await _reads(db, users, app_id, now) == before
    # The raw rows gone: every read now comes from the rollups alone.
    await _sql(db, "DELETE FROM request_log")
    assert await _reads(db, users, app_id, now) == before


async def test_last_7d_and_30d_count_from_the_start_of_the_hour(db: Storage) -> None:
    user_id, _ = await _user(db)
    now = _now()
    for days in (7, 30):
        start = (now - days * DAY) - (now - days * DAY) % HOUR
        await db.record_usage(
            [
                _row(user_id, "openai", created_at=start),
                _row(user_id, "openai", created_at=start - 1),
            ],
            {},
        )
    for _ in range(2):  # raw, then rolled up
        stats = await db.usage_stats("user_id", user_id, now)
        assert (stats["total"], stats["last_7d"], stats["last_30d"]) == (4, 1, 3)
        await db.roll_up_request_log(100)


async def test_usage_since_wants_the_start_of_an_hour(db: Storage) -> None:
    user_id, _ = await _user(db)
    with pytest.raises(ValueError, match="start of an hour"):
        await db.usage_since(user_id, HOUR + 1)


async def test_a_late_row_with_an_old_time_still_counts(db: Storage) -> None:
    """A batch written after a roll (the database was down, a long stream ended) with
    rows of hours already rolled up: counted at once, merged into those hours later."""
    now = _now()
    users, app_id, _ = await _two_users_with_usage(db, now)
    await db.roll_up_request_log(50_000)
    rolled = await _reads(db, users, app_id, now)
    hourly_rows = await _sql(db, "SELECT COUNT(*) FROM request_log_hourly")
    same_hour = now - now % HOUR - 2 * HOUR + 90_000  # an hour _mixed_rows filled
    late = [_row(users[0], "openai", created_at=same_hour),
            _row(users[0], "openai", created_at=now - 40 * DAY - 5, status=503)]  # fmt: skip
    await db.record_usage([dataclasses.replace(r, app_id=app_id) for r in late], {})
    expected = await _reads(db, users, app_id, now)
    stats = expected["stats"][0]
    assert stats["total"] == rolled["stats"][0]["total"] + 2
    assert stats["error_count"] == rolled["stats"][0]["error_count"] + 1
    window = expected["since"][0][1]["openai"]  # the last 5 hours
    assert window.requests == rolled["since"][0][1]["openai"].requests + 1
    assert await db.roll_up_request_log(50_000) == 2
    assert await _reads(db, users, app_id, now) == expected
    # The row of a rolled hour was added to that hour's rollup row, not beside it.
    after = await _sql(db, "SELECT COUNT(*) FROM request_log_hourly")
    assert after[0][0] == hourly_rows[0][0] + 1


async def test_raw_purge_never_drops_a_row_not_rolled_up(db: Storage) -> None:
    now = _now()
    users, app_id, n = await _two_users_with_usage(db, now)
    before = await _reads(db, users, app_id, now)
    assert await db.purge_request_log(now - DAY) == 0  # nothing is rolled up yet
    assert await _reads(db, users, app_id, now) == before
    await db.roll_up_request_log(30)  # a part only
    rolled_id = await _rolled_id(db)
    assert await db.purge_request_log(now + HOUR) > 0
    (left,) = await _sql(db, "SELECT COUNT(*), MIN(id) FROM request_log")
    assert left[0] == n - 30 and left[1] == rolled_id + 1  # every row above rolled_id
    assert await _reads(db, users, app_id, now) == before
    # Rolled up, the raw rows can all go: stats and budget windows are unchanged.
    await db.roll_up_request_log(50_000)
    assert await db.purge_request_log(now - DAY) > 0
    assert await _reads(db, users, app_id, now) == before
    assert await db.purge_request_log(now + HOUR) > 0
    assert await _sql(db, "SELECT COUNT(*) FROM request_log") == [(0,)]
    assert await _reads(db, users, app_id, now) == before


async def test_rolling_again_counts_nothing_twice(db: Storage) -> None:
    now = _now()
    users, app_id, n = await _two_users_with_usage(db, now)
    before = await _reads(db, users, app_id, now)
    assert await db.roll_up_request_log(50_000) == n
    assert await db.roll_up_request_log(50_000) == 0
    assert await _reads(db, users, app_id, now) == before
    await db.record_usage([dataclasses.replace(_row(users[1], "google"), app_id=app_id)], {})
    assert await db.roll_up_request_log(50_000) == 1
    assert await db.roll_up_request_log(50_000) == 0
    assert await _sql(db, "SELECT SUM(requests) FROM request_log_hourly") == [(n + 1,)]
    stats = await db.usage_stats("app_id", app_id, now)
    assert stats["total"] == before["app"]["total"] + 1


async def test_small_batches_fold_everything_and_reads_stay_exact(db: Storage) -> None:
    """A backlog folded `limit` rows at a time (the first rolls after the upgrade): exact
    between batches, and an id gap wider than a batch (an erased user's rows) does not
    stall the roll."""
    now = _now()
    users, app_id, n = await _two_users_with_usage(db, now)
    erased, _ = await _user(db, app_id)
    await db.record_usage([_row(erased, "openai") for _ in range(20)], {})
    assert await db.delete_user(erased)
    later = [dataclasses.replace(_row(users[0], "anthropic"), app_id=app_id) for _ in range(4)]
    await db.record_usage(later, {})
    n += len(later)
    before = await _reads(db, users, app_id, now)
    batches = []
    while True:
        batches.append(await db.roll_up_request_log(7))
        assert await _reads(db, users, app_id, now) == before
        if batches[-1] < 7:
            break
    assert sum(batches) == n and batches[:-1] == [7] * (len(batches) - 1)
    assert await _sql(db, "SELECT SUM(requests) FROM request_log_hourly") == [(n,)]


async def test_delete_user_removes_their_rollups(db: Storage) -> None:
    now = _now()
    (gone, kept), app_id, _ = await _two_users_with_usage(db, now)
    kept_before = await _reads(db, [kept], app_id, now)
    await db.roll_up_request_log(50_000)
    assert await db.delete_user(gone)
    count = "SELECT COUNT(*) FROM request_log_hourly WHERE user_id = ?"
    assert await _sql(db, count, gone) == [(0,)]
    assert (await _sql(db, count, kept))[0][0] > 0
    assert (await db.usage_stats("user_id", gone, now))["total"] == 0
    assert await db.usage_by_token(gone) == {}
    after = await _reads(db, [kept], app_id, now)
    assert after.pop("app")["user_count"] == 1
    kept_before.pop("app")
    assert after == kept_before


async def test_concurrent_rollers_and_writers_neither_miss_nor_double(
    open_db: OpenStorage,
) -> None:
    """Two instances rolling in a loop while a third writes in parallel batches (on
    PostgreSQL their ids commit out of order): every read lies between what had been
    written before it began and what had been sent when it ended, and at the end the
    rollups hold exactly what was written."""
    writer, roller_a, roller_b = await open_db(), await open_db(), await open_db()
    user_id, _ = await _user(writer)
    done = started = 0
    writing = True

    async def write(worker: int) -> None:
        nonlocal done, started
        for batch in range(15):
            rows = [_row(user_id, "openai", created_at=_now() - (worker * batch % 5) * HOUR)
                    for _ in range(1 + (worker + batch) % 4)]  # fmt: skip
            started += len(rows)
            await writer.record_usage(rows, {})
            done += len(rows)

    async def roll(db: Storage) -> int:
        folded = 0
        while writing:
            folded += await db.roll_up_request_log(3)
            await asyncio.sleep(0)
        return folded

    async def read() -> None:
        while writing:
            low = done
            total = (await roller_a.usage_stats("user_id", user_id, _now()))["total"]
            assert low <= total <= started
            await asyncio.sleep(0)

    async def writers() -> None:
        nonlocal writing
        await asyncio.gather(*(write(w) for w in range(4)))
        writing = False

    _, folded_a, folded_b, _ = await asyncio.gather(
        writers(), roll(roller_a), roll(roller_b), read()
    )
    assert folded_a > 0 and folded_b > 0, "the rollers never overlapped the writes"
    while await roller_a.roll_up_request_log(50_000):
        pass
    assert done == started
    assert await _sql(writer, "SELECT SUM(requests) FROM request_log_hourly") == [(done,)]
    assert await _sql(writer, "SELECT COUNT(*) FROM request_log") == [(done,)]
    assert (await writer.usage_stats("user_id", user_id, _now()))["total"] == done


@pytest.mark.postgres
async def test_postgres_roll_waits_for_an_insert_in_flight(pg_db: PgDatabase) -> None:
    """PostgreSQL draws an id when the insert runs and shows it at commit: an insert
    still open when a later id has committed must not be skipped by a roll."""
    url = pg_db.schema_url()
    slow, fast, roller = (open_storage(url, pool_size=2) for _ in range(3))
    for s in (slow, fast, roller):
        await s.connect()
        await s.migrate()
    try:
        user_id, _ = await _user(fast)
        assert isinstance(slow, SQLStorage)
        async with slow._write() as tx:
            await tx.execute(
                "INSERT INTO request_log (user_id, app_id, provider, status, latency_ms,"
                " streaming, created_at) VALUES (?, 'app', 'openai', 200, 1, 0, ?)",
                (user_id, _now()),
            )
            await fast.record_usage([_row(user_id, "openai")], {})  # a higher id, committed
            rolling = asyncio.create_task(roller.roll_up_request_log(50_000))
            await asyncio.sleep(0.3)
            assert not rolling.done(), "the roll did not wait for the open insert"
        assert await rolling == 2
        assert (await roller.usage_stats("user_id", user_id, _now()))["total"] == 2
        assert await roller.roll_up_request_log(50_000) == 0
    finally:
        for s in (slow, fast, roller):
            await s.close()


async def test_recorder_rolls_at_stop_and_retries_a_failed_roll(
    db: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    user_id, _ = await _user(db)
    recorder = UsageRecorder(db, retention_days=1)
    for _ in range(3):
        recorder.record(_row(user_id, "openai"))
    await recorder.flush()
    # A real failure: the rollup table is away for a moment.
    await _sql(db, "ALTER TABLE request_log_hourly RENAME TO hourly_away")
    with caplog.at_level(logging.WARNING, logger="byok_relay"):
        assert await recorder.roll() == 0
    assert "request log rollup failed; will retry" in caplog.text
    await _sql(db, "ALTER TABLE hourly_away RENAME TO request_log_hourly")
    assert await _rolled_id(db) == 0
    recorder.record(_row(user_id, "anthropic"))
    await recorder.stop()  # the last flush, then the roll
    (max_id,) = await _sql(db, "SELECT MAX(id) FROM request_log")
    assert await _rolled_id(db) == max_id[0]
    await _sql(db, "DELETE FROM request_log")
    stats = await db.usage_stats("user_id", user_id, _now())
    assert stats["total"] == 4 and set(stats["providers"]) == {"openai", "anthropic"}


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
