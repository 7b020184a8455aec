"""PostgreSQL and Redis for the tests: the machine's services, and private instances.

Shared services (markers ``postgres`` / ``redis``):
    ``TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) is only
    used to create one database ``byok_test_<random>`` per test run (dropped at the end);
    each test gets its own schema in it (``?search_path=`` in the URL, which the relay's
    PostgreSQL engine passes to the server).  ``TEST_REDIS_URL`` (default
    ``redis://127.0.0.1:6379/0``): each test gets its own key prefix
    (``REDIS_KEY_PREFIX``) and every key under it is deleted afterwards.

When a service is missing the test is skipped with the reason, or fails when ``CI=true``
or ``REQUIRE_SERVICES=1``.

Private instances (fault tests stop and start them; the machine's services are never
touched): ``PrivateRedis`` (``redis-server`` on a free port, nothing on disk) and
``PrivatePostgres`` (``initdb`` + ``pg_ctl`` on a free port, in a temporary directory).

``BYOK_TEST_BACKEND=postgres`` makes every relay the harness starts use PostgreSQL (one
schema per relay data directory) instead of SQLite, so the API tests run on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Missing services fail the test instead of skipping it (CI sets one of these).
IN_CI = os.environ.get("CI", "").lower() == "true" or os.environ.get("REQUIRE_SERVICES") == "1"
BACKEND = os.environ.get("BYOK_TEST_BACKEND", "sqlite").lower()

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def service_missing(what: str) -> None:
    """Skip (or, in CI, fail) a test whose service is not reachable."""
    if IN_CI:
        pytest.fail(f"{what} (CI / REQUIRE_SERVICES: the services must run)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, "", ""))


def with_schema(db_url: str, schema: str) -> str:
    return f"{db_url}?search_path={schema}"


# --- PostgreSQL ------------------------------------------------------------------------
async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_reachable(url: str = PG_ADMIN_URL) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        run_sync(_pg_admin(url, "SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class PgDatabase:
    """One database for the whole test run; a fresh schema per caller."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"byok_test_{uuid.uuid4().hex[:12]}"
        self.url = with_database(admin_url, self.name)
        self._lock = threading.Lock()
        self._schemas: set[str] = set()

    def create(self) -> None:
        run_sync(_pg_admin(self.admin_url, f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            run_sync(
                _pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            )

    def schema_url(self, schema: str | None = None) -> str:
        """URL of a schema in the test database (created on first use)."""
        schema = schema or f"t_{uuid.uuid4().hex[:12]}"
        with self._lock:
            if schema not in self._schemas:
                run_sync(_pg_admin(self.url, f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                self._schemas.add(schema)
        return with_schema(self.url, schema)


_pg_database: PgDatabase | None = None
_pg_lock = threading.Lock()


def pg_database() -> PgDatabase:
    """The run's test database, created on first use (dropped at session end)."""
    global _pg_database
    with _pg_lock:
        if _pg_database is None:
            why = pg_reachable()
            if why is not None:
                service_missing(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {why}")
            db = PgDatabase()
            db.create()
            _pg_database = db
        return _pg_database


def drop_pg_database() -> None:
    global _pg_database
    with _pg_lock:
        if _pg_database is not None:
            _pg_database.drop()
            _pg_database = None


@pytest.fixture(scope="session")
def pg_db() -> Iterator[PgDatabase]:
    yield pg_database()
    drop_pg_database()


@pytest.fixture
def pg_url(pg_db: PgDatabase) -> str:
    """A PostgreSQL URL with a fresh, empty schema of its own."""
    return pg_db.schema_url()


# --- Redis -----------------------------------------------------------------------------
async def _redis_call(url: str, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return await fn(client)
    finally:
        await client.aclose()


def redis_keys(url: str, pattern: str = "*") -> list[str]:
    async def scan(client: Any) -> list[str]:
        return [k.decode() async for k in client.scan_iter(match=pattern, count=1000)]

    return run_sync(_redis_call(url, scan))


def redis_delete_prefix(url: str, prefix: str) -> None:
    async def delete(client: Any) -> None:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)

    with contextlib.suppress(Exception):
        run_sync(_redis_call(url, delete))


def redis_reachable(url: str = REDIS_URL) -> str | None:
    async def ping(client: Any) -> Any:
        return await client.ping()

    try:
        run_sync(_redis_call(url, ping))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class RedisNamespace:
    url: str
    prefix: str

    def keys(self) -> list[str]:
        return redis_keys(self.url, f"{self.prefix}*")


@pytest.fixture
def redis_ns() -> Iterator[RedisNamespace]:
    """The machine's Redis with a key prefix of this test's own (deleted afterwards)."""
    why = redis_reachable()
    if why is not None:
        service_missing(f"Redis not reachable at {REDIS_URL}: {why}")
    ns = RedisNamespace(REDIS_URL, f"byok-test-{uuid.uuid4().hex[:12]}")
    yield ns
    redis_delete_prefix(ns.url, ns.prefix)


# --- private instances (for fault tests) -----------------------------------------------
def _wait_port(port: int, timeout: float, *, open_: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            is_open = sock.connect_ex(("127.0.0.1", port)) == 0
        if is_open == open_:
            return True
        time.sleep(0.02)
    return False


class PrivateRedis:
    """A throwaway redis-server on a free port (keeps nothing on disk)."""

    def __init__(self, unix_socket: Path | None = None) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.socket = unix_socket
        self.url = f"unix://{unix_socket}" if unix_socket else f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        if self.binary is None:
            service_missing("redis-server is not installed")
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", tempfile.gettempdir(),
             *(["--unixsocket", str(self.socket)] if self.socket else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not _wait_port(self.port, 10):
            self.stop()
            raise RuntimeError("private redis-server did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        _wait_port(self.port, 5, open_=False)


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, trust auth, in a temporary
    directory; `stop()` is a real server shutdown (`pg_ctl stop -m fast`)."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="byok-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = list(args)
        if self._as_root:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)

    def init(self) -> PrivatePostgres:
        if self.bin is None:
            service_missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        return self

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the API tests on PostgreSQL ------------------------------------------------------
def pg_relay_env(build: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
    """Wrap the harness's relay_env(mocks, data_dir, **overrides): with
    BYOK_TEST_BACKEND=postgres, a relay gets a PostgreSQL schema named after its data
    directory (so restarting on the same data_dir finds the same data) unless the test
    set DATABASE_URL / DB_PATH itself."""
    if BACKEND != "postgres":
        return build

    def env(mocks: Any, data_dir: Path, **overrides: str | None) -> dict[str, str]:
        result = build(mocks, data_dir, **overrides)
        if "DATABASE_URL" not in overrides and "DB_PATH" not in overrides:
            schema = "r_" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
            result["DATABASE_URL"] = pg_database().schema_url(schema)
            result.setdefault("DB_POOL_SIZE", "4")
        return result

    return env


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the run's PostgreSQL test database (if one was made)."""
    drop_pg_database()


def relay_db_rows(relay: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one SQL statement (``?`` placeholders) on a harness relay's database, SQLite or
    PostgreSQL alike, and return the rows: for tests that look inside the database and
    should run under BYOK_TEST_BACKEND=postgres too."""
    url: str = relay.env.get("DATABASE_URL", "")
    if not url.startswith(("postgresql://", "postgres://")):
        import sqlite3

        assert relay.db_path is not None
        with contextlib.closing(sqlite3.connect(relay.db_path, timeout=10)) as conn, conn:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]

    from byok_relay.storage.postgres import to_pg

    async def query() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(to_pg(sql), *params)]
        finally:
            await conn.close()

    return run_sync(query())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only: looks inside the SQLite file itself; skipped when "
        "BYOK_TEST_BACKEND=postgres (prefer relay_db_rows, which works on both)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "postgres":
        return
    skip = pytest.mark.skip(reason="inspects the SQLite file (BYOK_TEST_BACKEND=postgres)")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)
