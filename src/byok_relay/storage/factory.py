"""Pick the storage engine from DATABASE_URL."""

from __future__ import annotations

from byok_relay.storage.base import Storage


def open_storage(url: str, *, pool_size: int = 10) -> Storage:
    """`sqlite:///…` → SqliteStorage; `postgresql://…` / `postgres://…` → PostgresStorage.

    For PostgreSQL, extra query parameters become server settings of every pooled
    connection, e.g. `postgresql://relay@db/relay?search_path=byok` keeps the relay's
    tables in the `byok` schema.
    """
    if url.startswith("sqlite:///"):
        from byok_relay.storage.sqlite import SqliteStorage

        return SqliteStorage(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from byok_relay.storage.postgres import PostgresStorage
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "PostgreSQL support needs the postgres extra: pip install 'byok-relay[postgres]'"
            ) from exc
        return PostgresStorage(url, pool_size=pool_size)
    raise ValueError(f"unsupported DATABASE_URL scheme: {url.split(':', 1)[0]}")
