"""The transport to providers: where a call goes, how the credential is placed, the
pooled sessions it travels on, and the one mapping of transport failures to relay errors.

`relay.py` decides *whether* and *what* to send (request policy); this module sends it.

`trusted` serves operator-configured upstreams (built-in or overridden base URLs).
`guarded` serves client-supplied base URLs: its resolver refuses forbidden addresses at
connect time, so the connection goes to exactly the address that was checked.
Both never follow redirects, never keep cookies and never decompress: bodies pass
through byte for byte, compressed or not.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlencode

import aiohttp

from byok_relay import __version__
from byok_relay.config import Settings
from byok_relay.errors import ApiError
from byok_relay.netguard import (
    BaseURL,
    ForbiddenUpstream,
    GuardedResolver,
    forbidden_cause,
    parse_base_url,
)
from byok_relay.providers import Provider
from byok_relay.providers.paths import encode_path

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

    # --- where a call goes and how it is authorised ----------------------------------
    def target(
        self, provider: Provider, path: str, raw_base: str | None
    ) -> tuple[aiohttp.ClientSession, str]:
        """The session and URL for `path`: operator upstreams on the trusted session,
        client-supplied ones (checked) on the guarded one."""
        assert self.trusted is not None and self.guarded is not None
        quoted = encode_path(path)
        if provider.base_url is not None:
            return self.trusted, provider.base_url + quoted
        if not raw_base:
            raise ApiError(
                400,
                f'Provider "{provider.name}" needs a base URL: store one with '
                f"POST /keys/{provider.name} {{key, base_url}} or send x-relay-base-url.",
            )
        return self.guarded, self.client_base(raw_base).join(quoted)

    @staticmethod
    def authorize(
        provider: Provider, secret: str, headers: dict[str, str], params: list[tuple[str, str]]
    ) -> str:
        """Provider headers and the user's credential, placed as the provider expects;
        returns the query string to append ("" or "?…")."""
        for name, value in provider.default_headers:
            headers.setdefault(name, value)
        for name, value in provider.fixed_headers:
            headers[name] = value
        if provider.auth_header:
            headers[provider.auth_header] = provider.auth_prefix + secret
        if provider.auth_query:
            params = [*params, (provider.auth_query, secret)]
        return "?" + urlencode(params) if params else ""

    # --- sending ---------------------------------------------------------------------
    async def send(
        self,
        session: aiohttp.ClientSession,
        provider: Provider,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> aiohttp.ClientResponse:
        """The provider's response (headers read), or the ApiError that says why not."""
        try:
            return await session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            )
        except Exception as exc:
            raise transport_error(exc, provider) from None

    async def probe(self, provider: Provider, secret: str, base_url: str | None) -> int:
        """GET the provider's verify_path with `secret`; its status says if the key works."""
        if provider.spec.verify_path is None:
            raise ApiError(
                400,
                f'Provider "{provider.name}" has no cheap endpoint to check a key with; '
                f"replace the key with POST /keys/{provider.name} instead.",
            )
        session, url = self.target(provider, provider.spec.verify_path, base_url)
        headers = {"user-agent": USER_AGENT}
        url += self.authorize(provider, secret, headers, [])
        response = await self.send(session, provider, "GET", url, None, headers)
        response.release()
        return response.status


def transport_error(exc: BaseException, provider: Provider) -> ApiError:
    """Every way a call to a provider can fail before its answer, as the relay says it."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        forbidden = forbidden_cause(exc)
        if forbidden is not None:
            return ApiError(400, str(forbidden))
    elif isinstance(exc, aiohttp.ServerTimeoutError) and not isinstance(
        exc, aiohttp.ConnectionTimeoutError
    ):
        # Connected, but no response headers within UPSTREAM_TIMEOUT_S.
        return ApiError(504, f'Provider "{provider.name}" did not answer in time.')
    elif not isinstance(exc, TimeoutError | aiohttp.ClientError):
        raise exc
    # No TCP connection at all is "unreachable" (502), not "slow to answer" (504).
    return ApiError(502, f'Could not reach provider "{provider.name}".')
