"""Spend counting for budgets (SPEC §9): owner budgets per window, scoped-token budgets
over a token's life. Exact under concurrency, no database write per request.

How it counts. A counter is a small hash of fields (`requests`, `tokens`, and per
provider `p:<name>:requests` / `p:<name>:tokens`) under a key per (user, window) or per
scoped token. Admission *reserves* one request atomically: every cap is checked and, if
none is reached, the request fields are incremented in the same step, so 20 concurrent
requests against a cap of 10 let exactly 10 through. Tokens are added when the answer
has been read (`settle`): a tokens cap refuses the next request once reached, and the
requests in flight when it is crossed finish (the overshoot is bounded by them).

Where counters live. With REDIS_URL: in Redis, one Lua script per reservation, so every
instance counts the same numbers. Without: in this process's memory. Either way a
counter that does not exist yet (a new window, a Redis restart, a relay restart, a
budget just changed) is *seeded* once from the request log, which is written every
second (`usage.py`): a restart loses at most the last second of counting. If Redis
fails, counting falls back to this process (logged) until it returns. Several workers
without Redis each count their own traffic on top of the seeded log (docs/spend-control.md
says what that means).
"""

from __future__ import annotations

import abc
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from byok_relay.auth import Principal, ScopedGrant
from byok_relay.budgets import Budget, Caps, window_bounds
from byok_relay.bus import InvalidationBus
from byok_relay.cache import InvalidatingCache
from byok_relay.errors import ApiError
from byok_relay.logs import log_event
from byok_relay.scopes import Scope
from byok_relay.storage import Storage, UsageTotals

RETRY_SHARED_S = 2.0
_KEEP_AFTER_END_MS = 3_600_000  # counters outlive their window a little (clock skew)
_WARN_EVERY_S = 30.0
_PLAN_MEMO_MAX = 100_000
_OK = -1
_MISSING = -100  # _MISSING - i: counter key i does not exist yet


@dataclass(frozen=True, slots=True)
class Plan:
    """What one counter key checks and counts for a request, worked out once per budget
    and provider (or per scoped token), not per request."""

    checks: tuple[tuple[str, int], ...]  # (field, cap): refuse once field >= cap
    messages: tuple[str, ...]  # the refusal for each check
    incr: tuple[str, ...]  # fields a request adds 1 to
    tokens: tuple[str, ...]  # fields its answer's tokens are added to
    window: str | None  # an owner budget's window (Retry-After); None: a lifetime budget


@dataclass(slots=True)
class Reservation:
    """What one admitted request counted: released if it never went upstream, settled
    with its token counts when its answer has been read."""

    keys: list[str]
    plans: list[Plan]
    done: bool = False


# --- counter stores ---------------------------------------------------------------------
class Counters(abc.ABC):
    @abc.abstractmethod
    async def reserve(self, keys: list[str], plans: list[Plan]) -> int:
        """_OK; the index of the check that refused, counting every plan's checks in
        order; or _MISSING - i when key i does not exist yet."""

    @abc.abstractmethod
    async def seed(self, key: str, values: dict[str, int], expires_at_ms: int) -> None:
        """Create `key` with `values` unless it exists (another seeder won)."""

    @abc.abstractmethod
    async def add(self, keys: list[str], fields: list[tuple[str, ...]], amount: int) -> None:
        """Add `amount` to `fields[i]` of each key i that exists (a vanished key is seeded
        again later)."""

    @abc.abstractmethod
    async def reset(self, key: str) -> None: ...


class LocalCounters(Counters):
    def __init__(self) -> None:
        self._data: dict[str, tuple[int, dict[str, int]]] = {}

    def _get(self, key: str) -> dict[str, int] | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= time.time() * 1000:
            del self._data[key]
            return None
        return hit[1]

    async def reserve(self, keys: list[str], plans: list[Plan]) -> int:
        # No await between the checks and the increments: atomic within this process.
        hashes = []
        for i, key in enumerate(keys):
            h = self._get(key)
            if h is None:
                return _MISSING - i
            hashes.append(h)
        n = 0
        for h, plan in zip(hashes, plans, strict=True):
            for f, cap in plan.checks:
                if h.get(f, 0) >= cap:
                    return n
                n += 1
        for h, plan in zip(hashes, plans, strict=True):
            for f in plan.incr:
                h[f] = h.get(f, 0) + 1
        return _OK

    async def seed(self, key: str, values: dict[str, int], expires_at_ms: int) -> None:
        if self._get(key) is None:
            if len(self._data) > 100_000:
                self._purge()
            self._data[key] = (expires_at_ms, dict(values))

    async def add(self, keys: list[str], fields: list[tuple[str, ...]], amount: int) -> None:
        for key, names in zip(keys, fields, strict=True):
            h = self._get(key)
            if h is not None:
                for f in names:
                    h[f] = h.get(f, 0) + amount

    async def reset(self, key: str) -> None:
        self._data.pop(key, None)

    def _purge(self) -> None:
        now = time.time() * 1000
        for key in [k for k, (exp, _) in self._data.items() if exp <= now]:
            del self._data[key]


_RESERVE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -100 - (i - 1) end
end
local n = tonumber(ARGV[1]); local p = 2
for i = 1, n do
  local v = tonumber(redis.call('HGET', KEYS[tonumber(ARGV[p])], ARGV[p + 1]) or '0')
  if v >= tonumber(ARGV[p + 2]) then return i - 1 end
  p = p + 3
end
local m = tonumber(ARGV[p]); p = p + 1
for i = 1, m do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[p])], ARGV[p + 1], 1); p = p + 2
end
return -1
"""
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""
_ADD = """
local p = 1
while p <= #ARGV do
  local key = KEYS[tonumber(ARGV[p])]
  if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, ARGV[p + 1], ARGV[p + 2]) end
  p = p + 3
end
return 0
"""


class RedisCounters(Counters):
    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = f"{prefix}:spend:"
        self._reserve = self._redis.register_script(_RESERVE)
        self._seed = self._redis.register_script(_SEED)
        self._add = self._redis.register_script(_ADD)

    def _keys(self, keys: list[str]) -> list[str]:
        return [self._prefix + k for k in keys]

    async def reserve(self, keys: list[str], plans: list[Plan]) -> int:
        checks: list[Any] = []
        incr: list[Any] = []
        for i, plan in enumerate(plans, 1):
            for f, cap in plan.checks:
                checks += [i, f, cap]
            for f in plan.incr:
                incr += [i, f]
        args = [len(checks) // 3, *checks, len(incr) // 2, *incr]
        return int(await self._reserve(keys=self._keys(keys), args=args))

    async def seed(self, key: str, values: dict[str, int], expires_at_ms: int) -> None:
        flat: list[Any] = [expires_at_ms]
        for f, v in (values or {"requests": 0}).items():
            flat += [f, v]
        await self._seed(keys=self._keys([key]), args=flat)

    async def add(self, keys: list[str], fields: list[tuple[str, ...]], amount: int) -> None:
        args: list[Any] = []
        for i, names in enumerate(fields, 1):
            for f in names:
                args += [i, f, amount]
        if args:
            await self._add(keys=self._keys(keys), args=args)

    async def reset(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)

    async def close(self) -> None:
        await self._redis.aclose()


class SharedCounters(Counters):
    """Redis, or this process's memory while Redis is down (retried every few seconds)."""

    def __init__(self, shared: RedisCounters) -> None:
        self.shared = shared
        self.local = LocalCounters()
        self._down_until = 0.0
        self._last_warning = 0.0

    async def _call(self, method: str, *args: Any) -> Any:
        if time.monotonic() >= self._down_until:
            try:
                result = await getattr(self.shared, method)(*args)
                if self._down_until:
                    self._down_until = 0.0
                    log_event("budget counter store reachable again; counting shared")
                return result
            except Exception as exc:
                self._down_until = time.monotonic() + RETRY_SHARED_S
                now = time.monotonic()
                if now - self._last_warning > _WARN_EVERY_S:
                    self._last_warning = now
                    log_event(
                        "budget counter store unavailable; counting per process",
                        logging.WARNING,
                        error_type=type(exc).__name__,
                    )
        return await getattr(self.local, method)(*args)

    async def reserve(self, keys: list[str], plans: list[Plan]) -> int:
        return int(await self._call("reserve", keys, plans))

    async def seed(self, key: str, values: dict[str, int], expires_at_ms: int) -> None:
        await self._call("seed", key, values, expires_at_ms)

    async def add(self, keys: list[str], fields: list[tuple[str, ...]], amount: int) -> None:
        await self._call("add", keys, fields, amount)

    async def reset(self, key: str) -> None:
        await self._call("reset", key)
        await self.local.reset(key)

    async def close(self) -> None:
        await self.shared.close()


def open_counters(redis_url: str | None, prefix: str) -> Counters:
    return SharedCounters(RedisCounters(redis_url, prefix)) if redis_url else LocalCounters()


# --- the service ------------------------------------------------------------------------
def _seed_values(totals: dict[str, UsageTotals]) -> dict[str, int]:
    values = {"requests": 0, "tokens": 0}
    for provider, t in totals.items():
        values["requests"] += t.requests
        values["tokens"] += t.input_tokens + t.output_tokens
        values[f"p:{provider}:requests"] = t.requests
        values[f"p:{provider}:tokens"] = t.input_tokens + t.output_tokens
    return values


def budget_exceeded(message: str, retry_after_ms: int | None) -> ApiError:
    headers = {}
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_ms / 1000)))
    return ApiError(429, message, extra={"code": "budget_exceeded"}, headers=headers)


def owner_plan(budget: Budget, provider: str) -> Plan:
    """The checks an owner budget makes for a request to `provider`."""
    per = f"per {budget.window} (PUT /budget to change it)"
    checks: list[tuple[str, int]] = []
    messages: list[str] = []
    caps = budget.providers.get(provider) or Caps()
    for field, cap, what in (
        ("requests", budget.total.requests, "requests"),
        ("tokens", budget.total.tokens, "tokens"),
        (f"p:{provider}:requests", caps.requests, f"{provider} requests"),
        (f"p:{provider}:tokens", caps.tokens, f"{provider} tokens"),
    ):
        if cap is not None:
            checks.append((field, cap))
            messages.append(f"Budget exceeded: {cap} {what} {per}.")
    return Plan(
        tuple(checks), tuple(messages),
        incr=("requests", f"p:{provider}:requests"),
        tokens=("tokens", f"p:{provider}:tokens"),
        window=budget.window,
    )  # fmt: skip


def token_plan(scope: Scope) -> Plan:
    """The checks a scoped token's lifetime budget makes."""
    spent, again = "This scoped token's budget is spent", "ask the app for a new token."
    checks: list[tuple[str, int]] = []
    messages: list[str] = []
    for field, cap in (("requests", scope.budget_requests), ("tokens", scope.budget_tokens)):
        if cap is not None:
            checks.append((field, cap))
            messages.append(f"{spent} ({cap} {field}): {again}")
    return Plan(tuple(checks), tuple(messages), ("requests",), ("tokens",), None)


class OwnerRules:
    """A user's budget as cached: the budget (or None) and its plan per provider, worked
    out on first use."""

    __slots__ = ("_plans", "budget")

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget
        self._plans: dict[str, Plan] = {}

    def plan(self, provider: str) -> Plan:
        plan = self._plans.get(provider)
        if plan is None:
            assert self.budget is not None
            plan = self._plans[provider] = owner_plan(self.budget, provider)
        return plan


class SpendControl:
    def __init__(
        self, storage: Storage, counters: Counters, cache_ttl_s: float, bus: InvalidationBus
    ) -> None:
        self._storage = storage
        self.counters = counters
        self._bus = bus
        # "No budget" is cached too (OwnerRules(None)).
        self.budgets: InvalidatingCache[str, OwnerRules] = InvalidatingCache("budgets", cache_ttl_s)
        # A scoped token's scope never changes: its plan is kept by token id.
        self._token_plans: dict[str, Plan] = {}

    # --- owner budgets -------------------------------------------------------------
    async def rules(self, user_id: str) -> OwnerRules:
        rules = await self.budgets.load(user_id, lambda: self._read_rules(user_id))
        assert rules is not None  # "no budget" is OwnerRules(None)
        return rules

    async def _read_rules(self, user_id: str) -> OwnerRules:
        stored = await self._storage.get_budget(user_id)
        return OwnerRules(Budget.from_json(stored) if stored else None)

    async def budget(self, user_id: str) -> Budget | None:
        return (await self.rules(user_id)).budget

    async def set_budget(self, user_id: str, budget: Budget) -> None:
        await self._storage.put_budget(user_id, budget.to_json(), _now())
        # Counted again from the request log under the new rules.
        await self.counters.reset(self._window_key(user_id, budget.window, _now()))
        self._bus.invalidate("budget", user_id)

    async def delete_budget(self, user_id: str) -> bool:
        deleted = await self._storage.delete_budget(user_id)
        self._bus.invalidate("budget", user_id)
        return deleted

    def drop(self, user_id: str) -> None:
        self.budgets.drop(user_id)

    @staticmethod
    def _window_key(user_id: str, window: str, now: int) -> str:
        return f"b:{user_id}:{window}:{window_bounds(window, now)[0]}"

    def _token_plan(self, scoped: ScopedGrant) -> Plan:
        plan = self._token_plans.get(scoped.id)
        if plan is None:
            if len(self._token_plans) >= _PLAN_MEMO_MAX:
                self._token_plans.clear()
            plan = self._token_plans[scoped.id] = token_plan(scoped.scope)
        return plan

    # --- the hot path ----------------------------------------------------------------
    async def reserve(self, principal: Principal, provider: str) -> Reservation | None:
        """Count this request against every budget that applies, or refuse it (429)."""
        scoped = principal.scoped
        rules = await self.rules(principal.user_id)
        budget = rules.budget
        with_token = scoped is not None and scoped.scope.has_budget
        if budget is None and not with_token:
            return None
        now = _now()
        keys: list[str] = []
        plans: list[Plan] = []
        seeds: list[tuple[str, int]] = []  # what each key is seeded from, and its expiry
        window_end = 0
        if budget is not None:
            start, window_end = window_bounds(budget.window, now)
            keys.append(f"b:{principal.user_id}:{budget.window}:{start}")
            plans.append(rules.plan(provider))
            seeds.append(("window", window_end + _KEEP_AFTER_END_MS))
        if with_token:
            assert scoped is not None
            keys.append(f"s:{scoped.id}")
            plans.append(self._token_plan(scoped))
            seeds.append(("token", (principal.expires_at or now) + _KEEP_AFTER_END_MS))
        for _ in range(len(keys) + 1):
            result = await self.counters.reserve(keys, plans)
            if result == _OK:
                return Reservation(keys, plans)
            if result >= 0:
                for plan in plans:
                    if result < len(plan.messages):
                        retry = window_end - now if plan.window is not None else None
                        raise budget_exceeded(plan.messages[result], retry)
                    result -= len(plan.messages)
                raise AssertionError("a counter store refused with an unknown check")
            missing = _MISSING - result
            kind, expires = seeds[missing]
            await self.counters.seed(keys[missing], await self._seed(principal, kind), expires)
        raise ApiError(503, "Budget counters are unavailable; try again shortly.")

    async def _seed(self, principal: Principal, kind: str) -> dict[str, int]:
        if kind == "token":
            assert principal.scoped is not None
            t = (await self._storage.usage_by_token(principal.user_id)).get(principal.scoped.id)
            t = t or UsageTotals()
            return {"requests": t.requests, "tokens": t.input_tokens + t.output_tokens}
        budget = await self.budget(principal.user_id)
        if budget is None:  # removed meanwhile: the next request finds no budget
            return {"requests": 0}
        start, _ = window_bounds(budget.window, _now())
        return _seed_values(await self._storage.usage_since(principal.user_id, start))

    async def release(self, reservation: Reservation) -> None:
        """The request never went upstream: it does not count."""
        if not reservation.done:
            reservation.done = True
            await self.counters.add(reservation.keys, [p.incr for p in reservation.plans], -1)

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        if not reservation.done:
            reservation.done = True
            if tokens:
                await self.counters.add(
                    reservation.keys, [p.tokens for p in reservation.plans], tokens
                )

    # --- reading ---------------------------------------------------------------------
    async def window_usage(self, user_id: str, window: str) -> dict[str, Any]:
        """The current window's usage from the request log (GET /budget)."""
        now = _now()
        start, end = window_bounds(window, now)
        per = await self._storage.usage_since(user_id, start)
        return {
            "window_start": start,
            "window_end": end,
            "requests": sum(t.requests for t in per.values()),
            "input_tokens": sum(t.input_tokens for t in per.values()),
            "output_tokens": sum(t.output_tokens for t in per.values()),
            "providers": {
                name: {
                    "requests": t.requests,
                    "input_tokens": t.input_tokens,
                    "output_tokens": t.output_tokens,
                }
                for name, t in sorted(per.items())
            },
        }

    async def close(self) -> None:
        closer = getattr(self.counters, "close", None)
        if closer is not None:
            await closer()


def _now() -> int:
    return int(time.time() * 1000)
