"""A signed-in user's JWT → the verified (issuer, subject), or a 401 that says why.

SPEC §10, docs/identity.md. PyJWT does the verification (signature, `exp` required,
`nbf`, `iat`, `iss`, `aud`); this module decides which key and which algorithm it may
use: the issuer comes from the token's `iss` and must be configured, `alg` must be one
the issuer is pinned to, the key is the issuer's key with that `kid` and a fitting key
type, and a token that names its own key (`jku`, `x5u`, `jwk`, `x5c`) is refused.
A verified token is remembered by its SHA-256 until it expires, so a browser sending
the same token on every request pays for one signature check; the token itself is never
stored or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import jwt
import orjson

from byok_relay.cache import InvalidatingCache
from byok_relay.errors import ApiError
from byok_relay.identity.issuers import Issuer
from byok_relay.identity.keys import KeySource, RemoteJwks, key_source

#: A JWT longer than this is refused unread (real ID tokens are 1-2 KB).
MAX_JWT_LENGTH = 8192
#: Headers by which a token points at its own key; the relay uses only configured keys.
SELF_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")
VERIFIED_CACHE_S = 3600.0
VERIFIED_CACHE_ENTRIES = 100_000
_JWS_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified sign-in: who (issuer, subject) and until when (ms since the epoch)."""

    issuer: Issuer
    subject: str
    expires_at: int


def looks_like_jwt(value: str) -> bool:
    """Three base64url parts: the compact JWS form (relay tokens have no dots)."""
    return len(value) <= MAX_JWT_LENGTH and _JWS_SHAPE.fullmatch(value) is not None


def _refuse(reason: str) -> ApiError:
    return ApiError(401, f"Invalid sign-in token (JWT): {reason}", extra={"code": "jwt_invalid"})


def _shown(value: object) -> str:
    """A token-supplied value, safe to echo in an error: short and printable."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text[:120])
    return text + ("…" if len(str(value)) > 120 else "")


def _json_part(part: str) -> object:
    try:
        return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        raise _refuse("not a well-formed JWT (base64url JSON header and claims)") from None


class IdentityVerifier:
    def __init__(self, issuers: Sequence[Issuer], sources: dict[str, KeySource]) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.sources = sources
        self._verified: InvalidatingCache[bytes, Identity] = InvalidatingCache(
            "verified-jwts", VERIFIED_CACHE_S, VERIFIED_CACHE_ENTRIES
        )

    @classmethod
    def build(
        cls,
        issuers: Sequence[Issuer],
        session: Callable[[], aiohttp.ClientSession | None],
        timeout_s: float,
    ) -> IdentityVerifier:
        return cls(issuers, {i.issuer: key_source(i, session, timeout_s) for i in issuers})

    def start(self) -> None:
        for source in self.sources.values():
            if isinstance(source, RemoteJwks):
                source.start()

    async def close(self) -> None:
        for source in self.sources.values():
            if isinstance(source, RemoteJwks):
                await source.close()

    async def verify(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()
        now_s = time.time()
        hit = self._verified.get(digest)
        if hit is not None and hit.expires_at / 1000 + hit.issuer.leeway_s > now_s:
            return hit
        identity = await self._verify(token)
        self._verified.put_if_current(digest, identity, self._verified.epoch)
        return identity

    async def _verify(self, token: str) -> Identity:
        header_part, claims_part, _ = token.split(".")
        header = _json_part(header_part)
        claims = _json_part(claims_part)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _refuse("not a well-formed JWT (header and claims must be JSON objects)")
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _refuse("it has no iss claim, so the relay cannot tell who issued it.")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise _refuse(
                f'unknown issuer "{_shown(iss)}": the relay trusts only the issuers '
                "in its JWT_ISSUERS_FILE."
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise _refuse(
                f'signed with alg "{_shown(alg)}", which issuer "{_shown(iss)}" is '
                f"not set up for (accepted: {', '.join(sorted(issuer.algorithms))})."
            )
        for name in SELF_KEY_HEADERS:
            if name in header:
                raise _refuse(
                    f'it names its own key (the "{name}" header); the relay verifies '
                    "only with the keys configured for the issuer."
                )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise _refuse("its kid header is not a short string.")
        key = await self.sources[iss].key(kid, alg)
        if key is None:
            raise _refuse(
                f'signed with a key the issuer does not publish (kid "{_shown(kid)}"'
                f" for {alg}); if the identity provider just rotated its keys, retry "
                "in 30 seconds."
            )
        try:
            verified = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=iss,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse(
                "it has expired: get a fresh token from the identity provider "
                "(the browser client's getToken) and retry."
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(
                f"it has no {exc.claim} claim; the relay accepts only tokens that "
                "expire and name their audience."
            ) from None
        except jwt.InvalidAudienceError:
            raise _refuse(
                f'wrong audience: tokens of issuer "{_shown(iss)}" must be for '
                f"{' or '.join(issuer.audiences)}."
            ) from None
        except jwt.ImmatureSignatureError:
            raise _refuse("it is not valid yet (nbf or iat in the future).") from None
        except jwt.InvalidSignatureError:
            raise _refuse("bad signature.") from None
        except jwt.InvalidTokenError as exc:
            raise _refuse(f"{_shown(str(exc))}.") from None
        subject = verified.get(issuer.user_claim)
        if not isinstance(subject, str) or not subject or len(subject) > 512:
            raise _refuse(
                f'it has no "{issuer.user_claim}" claim (a string) naming the user '
                "(user_claim in JWT_ISSUERS_FILE)."
            )
        exp = verified["exp"]
        if not isinstance(exp, int | float):
            raise _refuse("its exp claim is not a number.")
        return Identity(issuer, subject, int(exp * 1000))
