"""SQLite engine (the default): one file, WAL, safe with several worker processes.

Two connections per process: a reader (WAL lets it read while another process writes)
and a writer whose transactions are serialised by an asyncio lock, because statements
from different coroutines must not interleave inside one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from byok_relay.storage.base import StorageUnavailable
from byok_relay.storage.sql import Row, SQLStorage

_BUSY_TIMEOUT_MS = 10_000


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(sql, args)
        n = cur.rowcount
        await cur.close()
        return n

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, args) as cur:
            row = await cur.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [tuple(r) for r in rows]


def sqlite_path(url: str) -> str:
    """SQLAlchemy's reading: sqlite:///rel/path is relative, sqlite:////abs/path absolute."""
    path = url.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        return ":memory:"
    return path


class SqliteStorage(SQLStorage):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._reader: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we answer 200; a crash loses nothing stored.
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def connect(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm
                # files the database file's mode, and they hold the same ciphertexts.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._writer = await self._open()
            self._reader = self._writer if self.path == ":memory:" else await self._open()
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot open SQLite database: {exc}") from None
        if self.path != ":memory:":
            for suffix in ("", "-wal", "-shm"):  # a database made by an older version too
                with contextlib.suppress(FileNotFoundError):
                    Path(self.path + suffix).chmod(0o600)

    async def close(self) -> None:
        for conn in {id(c): c for c in (self._reader, self._writer) if c}.values():
            await conn.close()
        self._reader = self._writer = None

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_SqliteTx]:
        if self._reader is None:
            raise StorageUnavailable("database is not connected")
        try:
            yield _SqliteTx(self._reader)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"database error: {exc}") from None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_SqliteTx]:
        if self._writer is None:
            raise StorageUnavailable("database is not connected")
        async with self._lock:
            conn = self._writer
            try:
                # IMMEDIATE takes the write lock up front: no upgrade deadlocks between
                # worker processes, busy_timeout makes the others wait their turn.
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"database is busy: {exc}") from None
            try:
                yield _SqliteTx(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            else:
                await conn.execute("COMMIT")
