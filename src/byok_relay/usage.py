"""Request-log rows and key last-used times, written in batches off the hot path.

The relay only appends to memory; a background task writes every FLUSH_INTERVAL_S. If
the database is down the rows wait (up to MAX_PENDING, oldest dropped first) and are
written when it returns.

Every ROLL_INTERVAL_S (and once more at stop, after the last flush) the rows written
since the last roll are folded into per-hour rollups (`request_log_hourly`), ROLL_BATCH
rows per transaction until none are left. Reads (GET /stats, budgets, scoped-token
usage) add the rollups to the raw rows not yet folded, so they are exact at all times
and a failed roll only delays folding (it is retried at the next interval). Raw rows
are purged after REQUEST_LOG_RETENTION_DAYS, never before they are folded; rollups
after REQUEST_LOG_ROLLUP_RETENTION_DAYS (0: kept).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from byok_relay.logs import log_event
from byok_relay.periodic import Periodic
from byok_relay.storage import RequestLogRow, Storage

FLUSH_INTERVAL_S = 1.0
MAX_PENDING = 100_000
ROLL_INTERVAL_S = 60.0
#: Rows folded per transaction: a big backlog (the first rolls after the upgrade) goes in
#: many short transactions, each holding back request-log writes only briefly.
ROLL_BATCH = 50_000
#: At stop, at most this long rolling: whatever is left is folded after the next start.
_STOP_ROLL_BUDGET_S = 5.0
_PURGE_EVERY_S = 3600.0
_DAY_MS = 86_400_000


class UsageRecorder:
    def __init__(
        self, storage: Storage, retention_days: int, rollup_retention_days: int = 0
    ) -> None:
        self._storage = storage
        self._retention_days = retention_days
        self._rollup_retention_days = rollup_retention_days
        self._rows: list[RequestLogRow] = []
        self._last_used: dict[tuple[str, str], int] = {}
        self._writer = Periodic(FLUSH_INTERVAL_S, self._tick)
        self._last_purge = 0.0
        self._last_roll = 0.0
        self._writing = 0  # rows of the write in progress
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
        self._writing = len(rows)
        try:
            await self._storage.record_usage(rows, last_used)
        except Exception as exc:
            # Put them back in front of anything recorded meanwhile, and try again later.
            waiting = rows + self._rows
            self.dropped += max(0, len(waiting) - MAX_PENDING)
            self._rows = waiting[-MAX_PENDING:]
            for k, v in last_used.items():
                self._last_used.setdefault(k, v)
            log_event(
                "request log write failed; will retry",
                logging.WARNING,
                error_type=type(exc).__name__,
                pending=len(self._rows),
            )
        finally:
            self._writing = 0

    @property
    def pending(self) -> int:
        """Rows not yet in the database: waiting, or in the write under way (/metrics)."""
        return len(self._rows) + self._writing

    async def roll(self, budget_s: float | None = None) -> int:
        """Fold every raw row not yet rolled up (or for up to `budget_s`); returns the
        rows folded. A failure is logged and left for the next roll: nothing is lost,
        the reads count unfolded rows from the raw table."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        folded = 0
        while True:
            try:
                n = await self._storage.roll_up_request_log(ROLL_BATCH)
            except Exception as exc:
                log_event(
                    "request log rollup failed; will retry",
                    logging.WARNING,
                    error_type=type(exc).__name__,
                )
                break
            folded += n
            if n < ROLL_BATCH or (deadline is not None and time.monotonic() > deadline):
                break
            # A backlog: let requests run, and keep writing their rows, between batches.
            await asyncio.sleep(0)
            await self.flush()
        if folded >= ROLL_BATCH:
            log_event("request log rolled up", rows=folded)
        return folded

    async def _purge(self) -> None:
        storage = self._storage
        await _purge("request log", self._retention_days, storage.purge_request_log)
        await _purge(
            "request log rollups",
            self._rollup_retention_days,
            storage.purge_request_log_rollups,
        )

    async def _tick(self) -> None:
        await self.flush()
        now = time.monotonic()
        if now - self._last_roll >= ROLL_INTERVAL_S:
            self._last_roll = now
            await self.roll()
        if now - self._last_purge > _PURGE_EVERY_S:
            self._last_purge = now
            await self._purge()  # after the roll: raw rows it just folded may go

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
        # A restart then finds its rows folded, whatever the raw retention is.
        await self.roll(_STOP_ROLL_BUDGET_S)


async def _purge(what: str, days: int, purge: Callable[[int], Awaitable[int]]) -> None:
    if days <= 0:
        return
    try:
        removed = await purge(_now() - days * _DAY_MS)
    except Exception as exc:
        log_event(f"{what} purge failed", logging.WARNING, error_type=type(exc).__name__)
        return
    if removed:
        log_event(f"{what} purged", removed=removed)


def _now() -> int:
    return int(time.time() * 1000)
