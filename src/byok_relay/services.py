"""Everything a process builds once at start and shares between requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import web

from byok_relay.accounts import Accounts
from byok_relay.admission import Admission
from byok_relay.auth import Authenticator
from byok_relay.bus import InvalidationBus
from byok_relay.config import Settings
from byok_relay.crypto import TokenHasher
from byok_relay.custody import KeyCustody, build_custody
from byok_relay.identity import IdentityVerifier
from byok_relay.logs import log_event
from byok_relay.metrics import RelayMetrics
from byok_relay.providers import ProviderRegistry
from byok_relay.ratelimit import ClientAddress, RateLimiter
from byok_relay.relay import Relay
from byok_relay.spend import SpendControl, open_counters
from byok_relay.storage import Storage, StorageUnavailable, open_storage
from byok_relay.upstream import Upstream
from byok_relay.usage import UsageRecorder
from byok_relay.vault import Vault


@dataclass
class Services:
    settings: Settings
    storage: Storage
    custody: KeyCustody
    hasher: TokenHasher
    registry: ProviderRegistry
    auth: Authenticator
    accounts: Accounts
    vault: Vault
    spend: SpendControl
    limiter: RateLimiter
    usage: UsageRecorder
    upstream: Upstream
    relay: Relay
    client_address: ClientAddress
    metrics: RelayMetrics
    bus: InvalidationBus
    identity: IdentityVerifier | None
    _storage_retry: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    def build(cls, settings: Settings, registry: ProviderRegistry) -> Services:
        secret = settings.ENCRYPTION_SECRET.get_secret_value()
        storage = open_storage(settings.database_url, pool_size=settings.DB_POOL_SIZE)
        custody = build_custody(settings, storage)
        hmac_secret = settings.TOKEN_HMAC_SECRET
        hasher = TokenHasher(
            secret,
            hmac_secret.get_secret_value() if hmac_secret else None,
            settings.previous_secrets,
        )
        ttl = settings.CACHE_TTL_S
        # With REDIS_URL, revocations and key changes reach every instance's cache at once.
        bus = InvalidationBus(settings.REDIS_URL, f"{settings.REDIS_KEY_PREFIX}:invalidate")
        upstream = Upstream(settings)
        identity = None
        if settings.jwt_issuers:
            # JWKS URLs travel on the guarded session: the SSRF checks of custom upstreams.
            identity = IdentityVerifier.build(
                settings.jwt_issuers, lambda: upstream.guarded, settings.JWKS_TIMEOUT_S
            )
        auth = Authenticator(storage, hasher, ttl, identity)
        vault = Vault(storage, custody, ttl, bus)
        limiter = RateLimiter(settings)
        usage = UsageRecorder(
            storage,
            settings.REQUEST_LOG_RETENTION_DAYS,
            settings.REQUEST_LOG_ROLLUP_RETENTION_DAYS,
        )
        spend = SpendControl(
            storage, open_counters(settings.REDIS_URL, settings.REDIS_KEY_PREFIX), ttl, bus
        )
        accounts = Accounts(
            storage,
            hasher,
            bus,
            usage,
            settings.TOKEN_EXPIRY_DAYS,
            settings.SCOPED_TOKEN_MAX_TTL_S,
        )
        _register_invalidations(bus, auth, vault, spend, usage)
        client_address = ClientAddress(settings.TRUSTED_PROXIES, settings.RATE_LIMIT_IPV6_PREFIX)
        admission = Admission.build(limiter, client_address, auth, spend)
        relay = Relay(settings, registry, admission, vault, spend, usage, upstream, client_address)
        metrics = RelayMetrics()
        metrics.watch_request_log(usage)
        metrics.watch_caches(
            [
                auth.tokens,
                auth.scoped,
                auth.identities,
                vault.keys,
                spend.budgets,
                custody.data_keys,
            ]
        )
        return cls(
            settings=settings,
            storage=storage,
            custody=custody,
            hasher=hasher,
            registry=registry,
            auth=auth,
            accounts=accounts,
            vault=vault,
            spend=spend,
            limiter=limiter,
            usage=usage,
            upstream=upstream,
            relay=relay,
            client_address=client_address,
            metrics=metrics,
            bus=bus,
            identity=identity,
        )

    async def start(self) -> None:
        if self.custody.hsm is not None:
            # HsmConfigError / HsmUnavailable: a start-up error, one line. The round trip
            # also refuses a token that cannot do AES-GCM before the first key needs it.
            await self.custody.hsm.connect()
            await self.custody.hsm.round_trip()
        await self.upstream.start()
        try:
            await self._open_storage()
        except StorageUnavailable as exc:
            if self.storage.dialect == "sqlite":
                # A file that cannot be opened is a configuration error: stop, closing
                # the upstream sessions first (no "Unclosed client session" at exit).
                await self.upstream.close()
                raise
            # A networked database may come back: serve (503 on the routes that need it)
            # and keep trying, instead of exiting.
            log_event(
                "database unavailable at start; answering 503 until it returns",
                logging.WARNING,
                reason=str(exc),
            )
            self._storage_retry = asyncio.get_running_loop().create_task(self._retry_storage())
        self.usage.start()
        await self.bus.start()
        if self.identity is not None:
            self.identity.start()  # fetch the JWKS now, not on the first signed-in request

    async def _open_storage(self) -> None:
        await self.storage.connect()
        await self.storage.migrate()

    async def _retry_storage(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.storage.close()
                # Migrate on a connection of its own first: the relay's storage answers
                # requests as soon as it connects, and must not before the schema is whole.
                migrator = open_storage(self.settings.database_url, pool_size=1)
                try:
                    await migrator.connect()
                    await migrator.migrate()
                finally:
                    await migrator.close()
                await self.storage.connect()
            except StorageUnavailable as exc:
                delay = min(delay * 2, 15.0)
                log_event("database still unavailable", logging.WARNING, reason=str(exc))
                continue
            # No await between connecting and this line: the log says "connected" before
            # the first request the database serves.
            log_event("database connected")
            return

    async def stop(self) -> None:
        if self._storage_retry is not None:
            self._storage_retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._storage_retry
        await self.bus.stop()
        if self.identity is not None:
            await self.identity.close()
        await self.usage.stop()
        await self.upstream.close()
        await self.spend.close()
        await self.storage.close()
        if self.custody.hsm is not None:
            await self.custody.hsm.close()


def _register_invalidations(
    bus: InvalidationBus,
    auth: Authenticator,
    vault: Vault,
    spend: SpendControl,
    usage: UsageRecorder,
) -> None:
    """Every invalidation kind and what it drops (the bus carries only these ids):
    `token <hash>`     a relay or scoped token revoked or rotated (a relay token's
                       scoped tokens with it);
    `user <user_id>`   the user erased: every cache entry and pending log row of theirs;
    `key <user_id> <provider>`  a provider key stored, replaced or deleted;
    `budget <user_id>` the owner budget set or removed."""
    for cache in (auth.tokens, auth.scoped, auth.identities, vault.keys, spend.budgets):
        bus.register_cache(cache)
    bus.register("token", 1, auth.drop_token)
    bus.register("user", 1, auth.drop_user)
    bus.register("user", 1, vault.drop_user)
    bus.register("user", 1, spend.drop)
    # Rows of an erased user still queued on any instance must not be written later.
    bus.register("user", 1, usage.forget_user)
    bus.register("key", 2, vault.drop)
    bus.register("budget", 1, spend.drop)


SERVICES = web.AppKey("services", Services)
