"""The backup and restore procedures of docs/backup.md, run for real: backups taken while a
relay serves traffic, restored, and served by a new relay with every user and key."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from backends import PgDatabase, _pg_admin, run_sync, with_database, with_schema
from providers.mock import MockProviders
from providers.relay import CHAT, Relay, StartRelay, User, http_client, register_user

CHAT_PATH = "/relay/openai/v1/chat/completions"


def _users(relay: Relay, n: int) -> list[tuple[User, str]]:
    out = []
    for i in range(n):
        user = register_user(relay, f"backup-app-{i % 3}")
        key = f"sk-backup-{i:03d}-{uuid.uuid4().hex[:12]}"
        user.store_key("openai", key)
        out.append((user, key))
    return out


@contextmanager
def _traffic(relay: Relay) -> Iterator[None]:
    """Registrations and key writes keep coming while the backup is taken."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            user = register_user(relay, "busy")
            user.store_key("anthropic", "sk-ant-busy-0123456789")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _assert_served(relay: Relay, users: list[tuple[User, str]], mocks: MockProviders) -> None:
    http = http_client()
    for user, key in users:
        headers = user.headers
        listed = http.get(f"{relay.url}/keys", headers=headers)
        assert listed.status_code == 200, listed.text
        assert "openai" in listed.json()["providers"]
        r = http.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=headers)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == f"Bearer {key}"


def test_sqlite_online_backup_and_restore(
    start_relay: StartRelay, mocks: MockProviders, tmp_path: Path
) -> None:
    source_dir = tmp_path / "live"
    relay = start_relay(data_dir=source_dir, DATABASE_URL=f"sqlite:///{source_dir / 'relay.db'}")
    users = _users(relay, 8)
    backups = tmp_path / "backups"
    backups.mkdir()
    with _traffic(relay):
        # The three documented ways, taken while the relay writes.
        src = sqlite3.connect(source_dir / "relay.db")
        dst = sqlite3.connect(backups / "api.db")
        src.backup(dst)
        dst.close()
        src.close()
        if shutil.which("sqlite3"):
            db = str(source_dir / "relay.db")
            subprocess.run(["sqlite3", db, f".backup '{backups / 'shell.db'}'"], check=True)
            subprocess.run(["sqlite3", db, f"VACUUM INTO '{backups / 'vacuum.db'}'"], check=True)
    assert relay.alive
    relay.stop()

    expected = None
    for backup in sorted(backups.glob("*.db")):
        with sqlite3.connect(backup) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = conn.execute(
                "SELECT user_id, provider, key_version, ciphertext FROM api_keys"
                " WHERE provider = 'openai' ORDER BY user_id"
            ).fetchall()
        conn.close()
        assert len(rows) == len(users)
        expected = expected or rows
        assert rows == expected  # every method captured the same keys
    # One backup all the way: a new relay served from it, as docs/backup.md restores.
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    chosen = backups / ("vacuum.db" if (backups / "vacuum.db").exists() else "api.db")
    shutil.copy(chosen, restored_dir / "relay.db")
    restored = start_relay(
        data_dir=restored_dir, DATABASE_URL=f"sqlite:///{restored_dir / 'relay.db'}"
    )
    _assert_served(restored, users, mocks)
    restored.stop()


@pytest.mark.postgres
def test_postgres_pg_dump_and_restore(
    start_relay: StartRelay, mocks: MockProviders, pg_db: PgDatabase, tmp_path: Path
) -> None:
    if not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        pytest.skip("pg_dump / pg_restore not installed")
    schema = f"b_{uuid.uuid4().hex[:10]}"
    url = pg_db.schema_url(schema)
    relay = start_relay(DATABASE_URL=url, DB_POOL_SIZE="3")
    users = _users(relay, 8)
    dump = tmp_path / "relay.dump"
    with _traffic(relay):
        subprocess.run(
            ["pg_dump", "--format=custom", "--no-owner", f"--schema={schema}",
             f"--file={dump}", pg_db.url],
            check=True, timeout=60,
        )  # fmt: skip
    relay.stop()

    restored_db = f"{pg_db.name}_r"
    run_sync(_pg_admin(pg_db.admin_url, f'CREATE DATABASE "{restored_db}"'))
    try:
        restored_url = with_database(pg_db.admin_url, restored_db)
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={restored_url}", str(dump)],
            check=True, timeout=60,
        )  # fmt: skip
        restored = start_relay(DATABASE_URL=with_schema(restored_url, schema), DB_POOL_SIZE="3")
        _assert_served(restored, users, mocks)
        restored.stop()
    finally:
        run_sync(
            _pg_admin(pg_db.admin_url, f'DROP DATABASE IF EXISTS "{restored_db}" WITH (FORCE)')
        )
