"""Pick the storage engine from DATABASE_URL."""

from __future__ import annotations

from byok_relay.storage.base import Storage


def open_storage(url: str, *, pool_size: int = 10) -> Storage:
    if url.startswith("sqlite:///"):
        from byok_relay.storage.sqlite import SqliteStorage

        return SqliteStorage(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from byok_relay.storage.postgres import PostgresStorage  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "PostgreSQL support needs the postgres extra: pip install 'byok-relay[postgres]'"
            ) from exc
        return PostgresStorage(url, pool_size=pool_size)  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(f"unsupported DATABASE_URL scheme: {url.split(':', 1)[0]}")
