"""Rate limits: counted in this process, or shared through Redis (the `limits` library).

In-process counting is `LocalWindows`, a dict of fixed windows with the semantics of
`limits`' memory storage. Through `limits` a hit cost a key string, a lock and expiry
bookkeeping, two hits per relayed request (about 4 % of the relay's CPU in the profile
in bench/README.md); here it is one dict lookup. `limits` still parses the settings and
counts in Redis, where its Lua scripts are the right tool.

Limiter keys never hold a token: the relay limit is keyed by the user id (every token of
a user shares one bucket, so a rotated or new scoped token is no fresh allowance), so
whoever reads Redis cannot harvest working tokens. If Redis fails, counting falls back
to this process (with a logged warning) rather than refusing traffic; Redis is tried again
after RETRY_SHARED_S, so a dead Redis costs requests no connect timeouts meanwhile.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from functools import lru_cache

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter

from byok_relay.config import Settings
from byok_relay.errors import ApiError
from byok_relay.logs import log_event

_MESSAGES = {
    "global": "Too many requests from this address",
    # Keyed by user: every relay token and scoped token of theirs shares it.
    "relay": "AI request rate limit exceeded for this user's relay tokens",
    "register": "Too many registrations from this address",
}
# Named in every 429, so whoever runs the relay knows which setting to change.
_SETTINGS = {
    "global": "RATE_LIMIT_GLOBAL",
    "relay": "RATE_LIMIT_RELAY",
    "register": "RATE_LIMIT_REGISTER",
}
_WARN_EVERY_S = 30.0
RETRY_SHARED_S = 2.0


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.items: dict[str, RateLimitItem] = {
            "global": settings.rate("RATE_LIMIT_GLOBAL"),
            "relay": settings.rate("RATE_LIMIT_RELAY"),
            "register": parse(settings.register_limit),
        }
        self._local = LocalWindows()
        self._shared: FixedWindowRateLimiter | None = None
        if settings.REDIS_URL:
            storage: Storage = _redis_storage(settings.REDIS_URL, settings.REDIS_KEY_PREFIX)
            self._shared = FixedWindowRateLimiter(storage)
        self._last_warning = 0.0
        self._shared_down_until = 0.0  # monotonic; while in the future, count locally

    @property
    def backend(self) -> str:
        """Where limits are counted now (reported by GET /health?deep=1)."""
        if self._shared is None:
            return "memory"
        if self._shared_down_until:
            return "memory (redis unavailable, counting per process)"
        return "redis"

    async def check(self, kind: str, key: str) -> None:
        """Count one hit; raise a 429 ApiError when the limit is exceeded."""
        item = self.items[kind]
        shared = self._shared
        if shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                allowed = await shared.hit(item, kind, key)
            except Exception as exc:  # Redis down or misbehaving: count locally instead.
                self._shared_down_until = time.monotonic() + RETRY_SHARED_S
                self._warn_fallback(exc)
            else:
                if self._shared_down_until:
                    self._shared_down_until = 0.0
                    self._last_warning = 0.0  # a later outage warns again at once
                    log_event("rate-limit store reachable again; counting shared")
                if not allowed:
                    raise self._refusal(kind, item, await self._shared_reset_in(item, kind, key))
                return
        if not self._local.hit(item, kind, key):
            raise self._refusal(kind, item, self._local.reset_in(kind, key))

    async def _shared_reset_in(self, item: RateLimitItem, kind: str, key: str) -> int:
        assert self._shared is not None
        try:
            stats = await self._shared.get_window_stats(item, kind, key)
            return max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            return item.get_expiry()

    @staticmethod
    def _refusal(kind: str, item: RateLimitItem, reset_in: int) -> ApiError:
        return ApiError(
            429,
            f"{_MESSAGES[kind]} ({item.amount} per {_window(item)}); retry in {reset_in} s. "
            f"The relay's operator sets this limit with {_SETTINGS[kind]}.",
            headers={
                "Retry-After": str(reset_in),
                "RateLimit-Limit": str(item.amount),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset_in),
            },
        )

    def _warn_fallback(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > _WARN_EVERY_S:
            self._last_warning = now
            log_event(
                "rate-limit store unavailable; counting per process until it returns",
                logging.WARNING,
                error_type=type(exc).__name__,
            )


class LocalWindows:
    """Fixed windows counted in this process: a window opens at its first hit and lasts
    the limit's period (as in `limits`' FixedWindowRateLimiter on its memory storage).
    Expired windows are swept at most once every SWEEP_EVERY_S, when a new one opens."""

    SWEEP_EVERY_S = 60.0

    def __init__(self) -> None:
        #: (kind, key) → [monotonic end of the window, hits in it]
        self._windows: dict[tuple[str, str], list[float]] = {}
        self._next_sweep = 0.0

    def hit(self, item: RateLimitItem, kind: str, key: str) -> bool:
        now = time.monotonic()
        window = self._windows.get((kind, key))
        if window is None or window[0] <= now:
            if now >= self._next_sweep:
                self._sweep(now)
            self._windows[(kind, key)] = [now + item.get_expiry(), 1]
            return item.amount >= 1
        window[1] += 1
        return window[1] <= item.amount

    def reset_in(self, kind: str, key: str) -> int:
        """Whole seconds until the window of (kind, key) closes (at least 1)."""
        window = self._windows.get((kind, key))
        left = window[0] - time.monotonic() if window is not None else 0.0
        return max(1, math.ceil(left))

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_EVERY_S
        for key in [k for k, (end, _) in self._windows.items() if end <= now]:
            del self._windows[key]


def _window(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name.lower()
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def _limits_url(url: str) -> str:
    """REDIS_URL in the `limits` library's spelling (async+redis://, async+redis+unix://)."""
    if url.startswith("async+"):
        return url
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


def _redis_storage(url: str, key_prefix: str = "byok-relay") -> Storage:
    from limits.aio.storage import RedisStorage

    return RedisStorage(
        _limits_url(url),
        implementation="redispy",
        key_prefix=f"{key_prefix}:limits",
        wrap_exceptions=True,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )


class ClientAddress:
    """Who the client is: the peer, unless TRUSTED_PROXIES says X-Forwarded-For is real.

    `bucket` is what per-address limits count: an IPv6 client by its network of
    RATE_LIMIT_IPV6_PREFIX bits (one subscriber usually holds a whole /64, so counting
    single addresses would hand it 2^64 allowances), an IPv4 client by its address."""

    def __init__(self, trusted_proxies: str, ipv6_prefix: int = 64) -> None:
        self._ipv6_prefix = ipv6_prefix
        self.bucket_of = lru_cache(maxsize=65536)(self._bucket_of)
        spec = trusted_proxies.strip()
        self._hops = int(spec) if spec.isdigit() else 0
        self._networks = (
            [ipaddress.ip_network(c.strip(), strict=False) for c in spec.split(",") if c.strip()]
            if spec and not spec.isdigit()
            else []
        )

    def bucket(self, request: web.Request) -> str:
        addr = self(request)
        return addr if ":" not in addr else self.bucket_of(addr)

    def _bucket_of(self, addr: str) -> str:
        if ":" not in addr:
            return addr
        try:
            ip = ipaddress.IPv6Address(addr.partition("%")[0])
        except ValueError:
            return addr
        if ip.ipv4_mapped is not None:  # a dual-stack socket's IPv4 peer
            return str(ip.ipv4_mapped)
        network = ipaddress.IPv6Network((ip, self._ipv6_prefix), strict=False)
        return str(network)

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def forwarded(self, request: web.Request, name: str) -> str | None:
        """The value our own proxy gave header `name` (X-Forwarded-Proto / -Host), or None
        when TRUSTED_PROXIES says no proxy sets it: a hop count takes the value that many
        entries from the right (as the proxies appended it); CIDRs, the last value, only
        from a peer inside them."""
        if not self._hops and not self._networks:
            return None
        values = [v.strip() for line in request.headers.getall(name, ()) for v in line.split(",")]
        values = [v for v in values if v]
        if not values:
            return None
        if self._hops:
            return values[-self._hops] if len(values) >= self._hops else None
        return values[-1] if self._trusted(request.remote or "") else None

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or "unknown"
        if not self._hops and not self._networks:
            return peer
        # Every X-Forwarded-For line, in order: they form one list (RFC 9110 5.3). Reading
        # only the first would let a client-sent line win over the one a proxy added.
        forwarded = ",".join(request.headers.getall("x-forwarded-for", ()))
        if not forwarded:
            return peer
        chain = [a.strip() for a in forwarded.split(",") if a.strip()] + [peer]
        if self._hops:
            # The last `hops` entries were appended by our own proxies; the one before
            # them is the client. A client-sent header only adds entries further left.
            return chain[max(0, len(chain) - 1 - self._hops)]
        for addr in reversed(chain):
            if not self._trusted(addr):
                return addr
        return chain[0]
