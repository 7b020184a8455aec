"""Connections to providers: pooled aiohttp sessions, one per trust level.

`trusted` serves operator-configured upstreams (built-in or overridden base URLs).
`guarded` serves client-supplied base URLs: its resolver refuses forbidden addresses at
connect time, so the connection goes to exactly the address that was checked.
Both never follow redirects, never keep cookies and never decompress: bodies pass
through byte for byte, compressed or not.
"""

from __future__ import annotations

from functools import lru_cache

import aiohttp

from byok_relay import __version__
from byok_relay.config import Settings
from byok_relay.errors import ApiError
from byok_relay.netguard import BaseURL, ForbiddenUpstream, GuardedResolver, parse_base_url

USER_AGENT = f"byok-relay/{__version__}"


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self._allow_private = settings.ALLOW_PRIVATE_UPSTREAMS
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.UPSTREAM_CONNECT_TIMEOUT_S,
            # No response headers (or no body bytes) within this → 504 / stream error.
            sock_read=settings.UPSTREAM_TIMEOUT_S,
        )
        self.trusted: aiohttp.ClientSession | None = None
        self.guarded: aiohttp.ClientSession | None = None
        #: Resolves (and checks) client-supplied hosts, for the guarded session and for
        #: the check when a base_url is stored.
        self.resolver = GuardedResolver(
            allow_private=self._allow_private,
            nameservers=settings.dns_servers,
            timeout=settings.DNS_TIMEOUT_S,
        )
        self.client_base = lru_cache(maxsize=4096)(self._client_base)

    def _session(self, resolver: aiohttp.abc.AbstractResolver | None) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,  # no cap: every client stream needs its own upstream connection
            ttl_dns_cache=60,
            keepalive_timeout=30,
            resolver=resolver,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one user's cookies to another
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            trust_env=False,
            raise_for_status=False,
        )

    async def start(self) -> None:
        self.trusted = self._session(None)
        self.guarded = self._session(self.resolver)

    async def close(self) -> None:
        for session in (self.trusted, self.guarded):
            if session is not None:
                await session.close()
        await self.resolver.close()

    def _client_base(self, raw: str) -> BaseURL:
        """Check a client-supplied base URL (cached: the same string gives the same answer;
        the DNS part is checked again on every new connection by the guarded resolver)."""
        try:
            return parse_base_url(raw, allow_private=self._allow_private)
        except ForbiddenUpstream as exc:
            raise ApiError(400, str(exc)) from None
