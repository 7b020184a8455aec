"""Storage: one interface (`Storage`), SQL kept in `sql.py`, one module per engine."""

from byok_relay.storage.base import (
    DataKeyRecord,
    KeyInfo,
    RequestLogRow,
    ScopedTokenRecord,
    Storage,
    StorageUnavailable,
    StoredKey,
    TokenRecord,
    UsageTotals,
)
from byok_relay.storage.factory import open_storage

__all__ = [
    "DataKeyRecord",
    "KeyInfo",
    "RequestLogRow",
    "ScopedTokenRecord",
    "Storage",
    "StorageUnavailable",
    "StoredKey",
    "TokenRecord",
    "UsageTotals",
    "open_storage",
]
