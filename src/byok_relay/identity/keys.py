"""Where an issuer's verification keys come from: a JWKS URL, a JWKS file, a shared secret.

SPEC §10, docs/identity.md. A JWKS URL is fetched through the relay's guarded session
(the SSRF-safe, pinned client of custom upstreams: no private address, no redirect),
within JWKS_TIMEOUT_S, and kept for the answer's `Cache-Control: max-age` (default
600 s). A stale set is still used while a fresh one is fetched in the background, and
kept when the endpoint is down, so tokens signed with a cached key keep working. An
unknown `kid` causes at most one refetch per REFETCH_INTERVAL_S, however many tokens
carry one: the identity provider's key rotation needs no restart, and a burst of forged
`kid`s cannot turn the relay into a flood of requests to the provider.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from byok_relay import __version__
from byok_relay.errors import ApiError
from byok_relay.identity.issuers import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, Issuer
from byok_relay.logs import log_event
from byok_relay.netguard import forbidden_cause

REFETCH_INTERVAL_S = 30.0
#: After a failed first fetch (no keys at all yet), a retry comes sooner.
COLD_RETRY_S = 5.0
DEFAULT_MAX_AGE_S = 600.0
MAX_AGE_BOUNDS_S = (30.0, 86_400.0)
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,9})", re.IGNORECASE)


class JwksError(Exception):
    """A JWKS could not be fetched or read; the message says why (never a secret)."""


class KeySource(Protocol):
    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key that verifies `alg` under `kid`, None when there is none.
        Raise ApiError(503) when the keys cannot be had at all right now."""

    async def load(self) -> list[str]:
        """Read or fetch the keys now; the `kid`s found (doctor). Raise JwksError."""


class KeySet:
    """A parsed JWKS: signature keys by `kid`, each usable only with algorithms that fit
    its key type (and its own `alg`, when it names one). Symmetric (`oct`) keys in a
    JWKS are ignored: a published key set never holds a secret."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._prepared: dict[tuple[str | None, str], PyJWK] = {}
        for jwk in keys:
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            kid = jwk.get("kid")
            if kid is not None and not isinstance(kid, str):
                continue
            self._keys.setdefault(kid, jwk)

    @classmethod
    def parse(cls, body: bytes) -> KeySet:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksError("is not JSON") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise JwksError('is not a JWKS (a JSON object with a "keys" list)')
        if len(keys) > MAX_KEYS:
            raise JwksError(f"has more than {MAX_KEYS} keys")
        found = cls(keys)
        if not found._keys:
            raise JwksError("holds no signature key (RSA, EC or OKP)")
        return found

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> list[str]:
        return sorted(k or "(no kid)" for k in self._keys)

    def find(self, kid: str | None, alg: str) -> PyJWK | None:
        hit = self._prepared.get((kid, alg))
        if hit is not None:
            return hit
        jwk = self._keys.get(kid)
        if jwk is None and kid is None and len(self._keys) == 1:
            jwk = next(iter(self._keys.values()))  # a token without kid, a set of one
        if jwk is None or ASYMMETRIC_ALGORITHMS.get(alg) != jwk.get("kty"):
            return None
        if jwk.get("alg", alg) != alg:
            return None
        try:
            prepared = PyJWK(jwk, algorithm=alg)
        except PyJWKError:
            return None  # a malformed key (or a curve that does not fit alg)
        self._prepared[(kid, alg)] = prepared
        return prepared


class SharedSecret:
    """`hs256_secret_env`: one HMAC secret (Supabase-style); there is no `kid` to match."""

    def __init__(self, secret: bytes) -> None:
        k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
        self._by_alg = {
            alg: PyJWK({"kty": "oct", "k": k}, algorithm=alg) for alg in HMAC_ALGORITHMS
        }

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        return self._by_alg.get(alg)

    async def load(self) -> list[str]:
        return []


class JwksFile:
    """`jwks_file`: read at start; re-read (at most once per REFETCH_INTERVAL_S, when its
    modification time changed) when a token names a `kid` it does not hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._set: KeySet | None = None
        self._mtime = 0.0
        self._checked = 0.0

    async def load(self) -> list[str]:
        try:
            mtime = self.path.stat().st_mtime
            body = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            raise JwksError(f"cannot be read: {exc.strerror or exc}") from None
        self._set = KeySet.parse(body)
        self._mtime = mtime
        return self._set.kids

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        if self._set is None:
            await self._reload()
        found = self._set.find(kid, alg) if self._set is not None else None
        if found is None and time.monotonic() - self._checked >= REFETCH_INTERVAL_S:
            self._checked = time.monotonic()
            with contextlib.suppress(OSError):
                if self.path.stat().st_mtime != self._mtime:
                    await self._reload()
                    found = self._set.find(kid, alg) if self._set is not None else None
        return found

    async def _reload(self) -> None:
        try:
            await self.load()
        except JwksError as exc:
            log_event(
                "jwks_file unreadable; keeping the keys read before",
                logging.WARNING,
                path=str(self.path),
                reason=str(exc),
            )


class RemoteJwks:
    """`jwks_url`: fetched through the guarded session, cached, refetched as above."""

    def __init__(
        self,
        issuer: str,
        url: str,
        session: Callable[[], aiohttp.ClientSession | None],
        timeout_s: float,
    ) -> None:
        self.issuer = issuer
        self.url = url
        self._session = session
        self._timeout_s = timeout_s
        self._set: KeySet | None = None
        self._fresh_until = 0.0
        self._last_attempt = -REFETCH_INTERVAL_S
        self._last_kid_refetch = -REFETCH_INTERVAL_S
        self._fetch: asyncio.Task[None] | None = None
        #: Why the last fetch failed (None after a success): doctor and 503s say it.
        self.last_error: str | None = None

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        now = time.monotonic()
        if self._set is None:
            if now - self._last_attempt >= COLD_RETRY_S or self._fetch is not None:
                await self._refetch()
            if self._set is None:
                raise ApiError(
                    503,
                    f'The identity provider\'s keys for issuer "{self.issuer}" could not be '
                    f"fetched ({self.last_error or 'no answer yet'}); try again shortly.",
                )
        elif now >= self._fresh_until and now - self._last_attempt >= REFETCH_INTERVAL_S:
            self._start_fetch()  # stale: answer from the cached set, refresh meanwhile
        found = self._set.find(kid, alg)
        if found is None:
            # A kid we have not seen: maybe the issuer rotated its keys. Join a fetch in
            # flight, or start one if no unknown kid caused one in the last interval.
            if self._fetch is None and now - self._last_kid_refetch < REFETCH_INTERVAL_S:
                return None
            if self._fetch is None:
                self._last_kid_refetch = now
            await self._refetch()
            found = self._set.find(kid, alg)
        return found

    async def load(self) -> list[str]:
        self._last_attempt = -REFETCH_INTERVAL_S
        await self._refetch()
        if self._set is None or self.last_error is not None:
            raise JwksError(self.last_error or "no answer")
        return self._set.kids

    def start(self) -> None:
        """Fetch in the background (at start, so the first request finds the keys)."""
        self._start_fetch()

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._fetch is None:
            self._last_attempt = time.monotonic()
            self._fetch = asyncio.get_running_loop().create_task(self._run_fetch())
        return self._fetch

    async def _refetch(self) -> None:
        """Join the fetch in flight (or start one) and wait for it: every caller waits at
        most JWKS_TIMEOUT_S, and a burst shares one request."""
        await asyncio.shield(self._start_fetch())

    async def _run_fetch(self) -> None:
        try:
            body, max_age = await asyncio.wait_for(self._get(), self._timeout_s)
            fresh = KeySet.parse(body)
        except (JwksError, TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.last_error = _reason(exc, self._timeout_s)
            log_event(
                "JWKS fetch failed; keeping the keys cached before",
                logging.WARNING,
                issuer=self.issuer,
                reason=self.last_error,
            )
            return
        finally:
            self._fetch = None
        self._set = fresh
        self._fresh_until = time.monotonic() + max_age
        self.last_error = None

    async def _get(self) -> tuple[bytes, float]:
        session = self._session()
        if session is None:
            raise JwksError("the relay is not started")
        headers = {"accept": "application/json", "user-agent": f"byok-relay/{__version__}"}
        async with session.get(self.url, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksError(f"the JWKS endpoint answered HTTP {response.status}")
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise JwksError("the JWKS endpoint sent a compressed body (not asked for)")
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES // 1024} KB")
            return bytes(body), _max_age(response.headers.get("cache-control"))


def _max_age(cache_control: str | None) -> float:
    m = _MAX_AGE.search(cache_control or "")
    if m is None:
        return DEFAULT_MAX_AGE_S
    low, high = MAX_AGE_BOUNDS_S
    return min(max(float(m.group(1)), low), high)


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, JwksError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within JWKS_TIMEOUT_S={timeout_s:g} s"
    forbidden = forbidden_cause(exc)
    if forbidden is not None:
        return f"refused: {forbidden}"
    return f"cannot connect: {type(exc).__name__}"


def key_source(
    issuer: Issuer, session: Callable[[], aiohttp.ClientSession | None], timeout_s: float
) -> KeySource:
    if issuer.shared_secret is not None:
        return SharedSecret(issuer.shared_secret)
    if issuer.jwks_file is not None:
        return JwksFile(issuer.jwks_file)
    assert issuer.jwks_url is not None
    return RemoteJwks(issuer.issuer, issuer.jwks_url, session, timeout_s)
