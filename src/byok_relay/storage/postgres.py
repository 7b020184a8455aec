"""PostgreSQL engine (the scale-out shape): an asyncpg pool, the same SQL as SQLite.

- Queries are the shared ones from `sql.py`, written with `?`; each is translated to
  PostgreSQL's `$1, $2 …` once and the result cached.
- The pool holds up to DB_POOL_SIZE connections per process. A read borrows a connection
  for one statement; a write holds one for its transaction.
- Faults: any error that means "the server is not there" (refused, reset, shut down,
  starting up, too many connections, timeout) becomes `StorageUnavailable`, so routes
  answer 503. It also expires every pooled connection, so connections broken by a
  restart are replaced on their next use instead of failing one request each. A read
  that hits a broken connection is retried once on a fresh one. A statement that hangs
  (a peer gone silent) is bounded by a command timeout, so nothing wedges; the pool
  reconnects by itself when the server returns.
- Migrations take a transaction-scoped advisory lock, so instances starting together
  apply each migration once. Request-log rolls lock `request_log` against inserts for
  their (short) transaction, see `_lock_for_rollup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from byok_relay.logs import log_event
from byok_relay.storage.base import StorageUnavailable
from byok_relay.storage.sql import Row, SQLStorage, Tx

#: Any constant works; it names "byok-relay schema migration" among advisory locks.
MIGRATION_LOCK_ID = 0x62796F6B72656C  # "byokrel"
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 15.0
ACQUIRE_TIMEOUT_S = 10.0
MIGRATION_TIMEOUT_S = 3600.0

_PLACEHOLDER = re.compile(r"\?")
_translated: dict[str, str] = {}


def to_pg(sql: str) -> str:
    """`?` placeholders → `$1 … $n` (computed once per statement text)."""
    out = _translated.get(sql)
    if out is None:
        counter = iter(range(1, 10_000))
        out = _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)
        _translated[sql] = out
    return out


#: Errors that mean the server is unreachable, going away or not ready — not a bug in a
#: query. Anything else (a constraint violation, a syntax error) propagates unchanged.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,  # connect, acquire or command timeout
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections …
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the socket died under us
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # failover: we reached a standby
    asyncpg.exceptions.InterfaceError,  # "pool is closing", connection closed
    # A pooled connection whose server process was terminated while idle can raise this
    # (the FATAL message arrived before the EOF): it is broken, not our query.
    asyncpg.exceptions.InternalClientError,
)


def _rowcount(status: str) -> int:
    """asyncpg answers 'UPDATE 3', 'DELETE 0', 'INSERT 0 1'; the last word is the count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _PgTx:
    """Statements on one connection (inside a transaction for writes). `timeout` None:
    the pool's command timeout."""

    def __init__(self, conn: Any, timeout: float | None = None) -> None:
        self._conn = conn
        self._timeout = timeout

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _rowcount(await self._conn.execute(to_pg(sql), *args, timeout=self._timeout))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(to_pg(sql), rows, timeout=self._timeout)

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        row = await self._conn.fetchrow(to_pg(sql), *args, timeout=self._timeout)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows = await self._conn.fetch(to_pg(sql), *args, timeout=self._timeout)
        return [tuple(r) for r in rows]


class _PoolReader:
    """Single reads: each statement borrows a pooled connection just for itself, and is
    retried once on a fresh connection if the borrowed one turns out to be broken."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        storage = self._storage
        for attempt in (1, 2):
            try:
                async with storage.pool().acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    return await getattr(conn, method)(to_pg(sql), *args)
            except UNAVAILABLE_ERRORS as exc:
                await storage._connection_lost(exc)
                # A second try helps when the server came back and only this pooled
                # connection was stale; when it is still down it fails just as fast.
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise StorageUnavailable(_describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _rowcount(await self._run("execute", sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise TypeError("executemany needs a write transaction")  # pragma: no cover

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        row = await self._run("fetchrow", sql, *args)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in await self._run("fetch", sql, *args)]


def _describe(exc: BaseException) -> str:
    return f"PostgreSQL unavailable ({type(exc).__name__})"


class PostgresStorage(SQLStorage):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self._command_timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._pool: Any = None
        self._down = False
        self._write_timeout: float | None = None  # None: the pool's command timeout

    # --- lifecycle ---------------------------------------------------------------
    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                # Idle connections are closed after a while, so a pool sized for a peak
                # does not hold server slots forever.
                max_inactive_connection_lifetime=60.0,
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            # Refused, timed out, unknown database, authentication failed … (the message
            # names the host and user, never the password).
            raise StorageUnavailable(
                f"cannot connect to PostgreSQL ({type(exc).__name__}: {exc})"
            ) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5.0)
            except UNAVAILABLE_ERRORS:
                pool.terminate()

    def pool(self) -> Any:
        if self._pool is None:
            raise StorageUnavailable("database is not connected")
        return self._pool

    async def _connection_lost(self, exc: BaseException) -> None:
        """Every pooled connection may be dead (server restarted): replace them lazily."""
        pool = self._pool
        if pool is not None:
            # Bumps the pool's generation: each connection is reopened on its next use.
            await pool.expire_connections()
        if not self._down:
            self._down = True
            log_event(
                "PostgreSQL unavailable; answering 503 until it returns",
                logging.WARNING,
                error_type=type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log_event("PostgreSQL reachable again")

    # --- connections -------------------------------------------------------------
    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        yield _PoolReader(self)
        self._recovered()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        conn, transaction = await self._begin()
        try:
            try:
                yield _PgTx(conn, self._write_timeout)
            except BaseException:
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await transaction.rollback()
                raise
            await transaction.commit()
        except UNAVAILABLE_ERRORS as exc:
            # Not retried: once a statement was sent (or COMMIT), whether it took effect
            # cannot be known here; the caller gets a 503 and may try again.
            await self._connection_lost(exc)
            raise StorageUnavailable(_describe(exc)) from None
        finally:
            await self._release(conn)
        self._recovered()

    async def _begin(self) -> tuple[Any, Any]:
        """A pooled connection with a transaction open. A connection found dead at BEGIN
        (nothing sent yet) is replaced once, so a server restart costs no failed write."""
        pool = self.pool()
        for attempt in (1, 2):
            try:
                conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
            except UNAVAILABLE_ERRORS as exc:
                await self._connection_lost(exc)
                raise StorageUnavailable(_describe(exc)) from None
            transaction = conn.transaction()
            try:
                await transaction.start()
            except UNAVAILABLE_ERRORS as exc:
                await self._release(conn)
                await self._connection_lost(exc)
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise StorageUnavailable(_describe(exc)) from None
                continue
            except BaseException:
                await self._release(conn)
                raise
            return conn, transaction
        raise AssertionError("unreachable")  # pragma: no cover

    async def _release(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:
            conn.terminate()
            return
        try:
            await pool.release(conn, timeout=5.0)
        except UNAVAILABLE_ERRORS:
            conn.terminate()

    async def migrate(self) -> list[int]:
        # A migration may rewrite a big table, or wait for another instance's: the
        # short command timeout of the request path does not apply (start-up only).
        self._write_timeout = MIGRATION_TIMEOUT_S
        try:
            return await super().migrate()
        finally:
            self._write_timeout = None

    _for_update = " FOR UPDATE"

    async def _lock_for_rollup(self, tx: Tx) -> None:
        # Ids are drawn when an insert runs but become visible when it commits, not in id
        # order: this lock waits for every insert in flight and holds new ones back until
        # the roll commits, so no id below the new rolled_id can appear later. It also
        # serialises rollers on several instances.
        await tx.execute("LOCK TABLE request_log IN SHARE ROW EXCLUSIVE MODE")

    async def _lock_for_migration(self, tx: Tx) -> None:
        # Held until the migration's transaction ends; concurrent starters wait here,
        # then see the version already applied and skip it.
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))
