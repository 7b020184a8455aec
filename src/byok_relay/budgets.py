"""Owner budgets (SPEC §9): what a user allows their own keys to spend per UTC window.

A budget is data: a window (`hour`, `day`, `month`, UTC calendar periods), caps on
relayed requests and on input + output tokens, and the same caps per provider. It is
stored as JSON beside the user and cached like tokens (`cache.py`); the counting is in
`spend.py`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

WINDOWS = ("hour", "day", "month")


@dataclass(frozen=True, slots=True)
class Caps:
    requests: int | None = None
    tokens: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {
            k: v for k, v in (("requests", self.requests), ("tokens", self.tokens)) if v is not None
        }


@dataclass(frozen=True, slots=True)
class Budget:
    window: str
    total: Caps = Caps()
    providers: dict[str, Caps] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"window": self.window, **self.total.to_dict()}
        if self.providers:
            out["providers"] = {name: caps.to_dict() for name, caps in self.providers.items()}
        return out

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budget:
        return cls(
            window=d["window"],
            total=Caps(d.get("requests"), d.get("tokens")),
            providers={
                name: Caps(caps.get("requests"), caps.get("tokens"))
                for name, caps in (d.get("providers") or {}).items()
            },
        )

    @classmethod
    def from_json(cls, text: str) -> Budget:
        return cls.from_dict(orjson.loads(text))


_current: dict[str, tuple[int, int]] = {}  # the last period computed, per window


def window_bounds(window: str, now_ms: int) -> tuple[int, int]:
    """The UTC calendar period holding `now_ms`: (start, end) in ms since the epoch."""
    last = _current.get(window)
    if last is not None and last[0] <= now_ms < last[1]:
        return last  # the hot path asks about the same period again and again
    bounds = _compute_bounds(window, now_ms)
    _current[window] = bounds
    return bounds


def _compute_bounds(window: str, now_ms: int) -> tuple[int, int]:
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    if window == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        length = 3_600_000
    elif window == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        length = 86_400_000
    elif window == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        length = calendar.monthrange(now.year, now.month)[1] * 86_400_000
    else:
        raise ValueError(window)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + length
