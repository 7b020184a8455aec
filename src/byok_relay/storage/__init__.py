"""Storage: one interface (`Storage`), SQL kept in `sql.py`, one module per engine."""

from byok_relay.storage.base import (
    KeyInfo,
    RequestLogRow,
    Storage,
    StorageUnavailable,
    StoredKey,
    TokenRecord,
)
from byok_relay.storage.factory import open_storage

__all__ = [
    "KeyInfo",
    "RequestLogRow",
    "Storage",
    "StorageUnavailable",
    "StoredKey",
    "TokenRecord",
    "open_storage",
]
