"""Request-log rows and key last-used times, written in batches off the hot path.

The relay only appends to memory; a background task writes every FLUSH_INTERVAL_S. If
the database is down the rows wait (up to MAX_PENDING, oldest dropped first) and are
written when it returns. Old rows are purged after REQUEST_LOG_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from byok_relay.logs import log_event
from byok_relay.periodic import Periodic
from byok_relay.storage import RequestLogRow, Storage

FLUSH_INTERVAL_S = 1.0
MAX_PENDING = 100_000
_PURGE_EVERY_S = 3600.0
_DAY_MS = 86_400_000


class UsageRecorder:
    def __init__(self, storage: Storage, retention_days: int) -> None:
        self._storage = storage
        self._retention_days = retention_days
        self._rows: list[RequestLogRow] = []
        self._last_used: dict[tuple[str, str], int] = {}
        self._writer = Periodic(FLUSH_INTERVAL_S, self._tick)
        self._last_purge = 0.0
        self.dropped = 0

    def record(self, row: RequestLogRow) -> None:
        rows = self._rows
        rows.append(row)
        if len(rows) > MAX_PENDING:
            del rows[0]
            self.dropped += 1
        self._last_used[(row.user_id, row.provider)] = row.created_at

    def forget_user(self, user_id: str) -> None:
        """DELETE /users: pending rows of that user must not be written afterwards."""
        self._rows = [r for r in self._rows if r.user_id != user_id]
        for key in [k for k in self._last_used if k[0] == user_id]:
            del self._last_used[key]

    async def flush(self) -> None:
        if not self._rows and not self._last_used:
            return
        rows, last_used = self._rows, self._last_used
        self._rows, self._last_used = [], {}
        try:
            await self._storage.record_usage(rows, last_used)
        except Exception as exc:
            # Put them back in front of anything recorded meanwhile, and try again later.
            self._rows = (rows + self._rows)[-MAX_PENDING:]
            for k, v in last_used.items():
                self._last_used.setdefault(k, v)
            log_event(
                "request log write failed; will retry",
                logging.WARNING,
                error_type=type(exc).__name__,
                pending=len(self._rows),
            )

    async def _purge(self) -> None:
        if self._retention_days <= 0:
            return
        before = int(time.time() * 1000) - self._retention_days * _DAY_MS
        try:
            removed = await self._storage.purge_request_log(before)
        except Exception as exc:
            log_event("request log purge failed", logging.WARNING, error_type=type(exc).__name__)
            return
        if removed:
            log_event("request log purged", removed=removed)

    async def _tick(self) -> None:
        await self.flush()
        now = time.monotonic()
        if now - self._last_purge > _PURGE_EVERY_S:
            self._last_purge = now
            await self._purge()

    # --- reading (GET /stats) --------------------------------------------------------
    async def user_stats(self, user_id: str) -> dict[str, Any]:
        """The reference relay's per-user fields plus token totals; this process's newest
        requests count at once (flushed first)."""
        await self.flush()
        stats = await self._storage.usage_stats("user_id", user_id, _now())
        stats.pop("user_count", None)
        return stats

    async def app_stats(self, app_id: str) -> dict[str, Any]:
        await self.flush()
        return await self._storage.usage_stats("app_id", app_id, _now())

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()
        await self.flush()


def _now() -> int:
    return int(time.time() * 1000)
