"""Everything a process builds once at start and shares between requests."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from byok_relay.auth import Authenticator
from byok_relay.bus import InvalidationBus
from byok_relay.config import Settings
from byok_relay.crypto import KeyCipher, TokenHasher
from byok_relay.metrics import RelayMetrics
from byok_relay.providers import ProviderRegistry
from byok_relay.ratelimit import ClientAddress, RateLimiter
from byok_relay.relay import Relay
from byok_relay.storage import Storage, open_storage
from byok_relay.upstream import Upstream
from byok_relay.usage import UsageRecorder
from byok_relay.vault import Vault


@dataclass
class Services:
    settings: Settings
    storage: Storage
    cipher: KeyCipher
    hasher: TokenHasher
    registry: ProviderRegistry
    auth: Authenticator
    vault: Vault
    limiter: RateLimiter
    usage: UsageRecorder
    upstream: Upstream
    relay: Relay
    client_address: ClientAddress
    metrics: RelayMetrics
    bus: InvalidationBus

    @classmethod
    def build(cls, settings: Settings, registry: ProviderRegistry) -> Services:
        secret = settings.ENCRYPTION_SECRET.get_secret_value()
        storage = open_storage(settings.database_url, pool_size=settings.DB_POOL_SIZE)
        cipher = KeyCipher(secret, settings.previous_secrets)
        hmac_secret = settings.TOKEN_HMAC_SECRET
        hasher = TokenHasher(secret, hmac_secret.get_secret_value() if hmac_secret else None)
        auth = Authenticator(storage, hasher, settings.CACHE_TTL_S)
        vault = Vault(storage, cipher, settings.CACHE_TTL_S)
        limiter = RateLimiter(settings)
        usage = UsageRecorder(storage, settings.REQUEST_LOG_RETENTION_DAYS)
        upstream = Upstream(settings)
        relay = Relay(settings, registry, auth, vault, limiter, usage, upstream)
        # With REDIS_URL, revocations and key changes reach every instance's cache at once.
        bus = InvalidationBus(
            settings.REDIS_URL, f"{settings.REDIS_KEY_PREFIX}:invalidate", auth, vault, usage
        )
        return cls(
            settings=settings,
            storage=storage,
            cipher=cipher,
            hasher=hasher,
            registry=registry,
            auth=auth,
            vault=vault,
            limiter=limiter,
            usage=usage,
            upstream=upstream,
            relay=relay,
            client_address=relay.client_address,
            metrics=RelayMetrics(),
            bus=bus,
        )

    async def start(self) -> None:
        await self.storage.connect()
        await self.storage.migrate()
        await self.upstream.start()
        self.usage.start()
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop()
        await self.usage.stop()
        await self.upstream.close()
        await self.storage.close()


SERVICES = web.AppKey("services", Services)
