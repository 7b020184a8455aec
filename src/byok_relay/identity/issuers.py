"""JWT_ISSUERS_FILE: the identity providers whose signed-in users the relay trusts.

SPEC §10, docs/identity.md. One `[[issuer]]` table per provider, read once at start; a
malformed file stops the start with one line naming the table and the problem. The
algorithms are pinned per issuer and their family follows the key source: a JWKS
(`jwks_url`, `jwks_file`) allows only asymmetric algorithms and a shared secret
(`hs256_secret_env`) only HMAC, so a token can never make the relay use a public key as
an HMAC secret (the "HS/RS key confusion" attack).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from byok_relay.netguard import ForbiddenUpstream, is_loopback_host, parse_base_url

#: JOSE algorithm → the JWK key type that can verify it.
ASYMMETRIC_ALGORITHMS = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
HMAC_ALGORITHMS = {"HS256": "oct", "HS384": "oct", "HS512": "oct"}
KEY_TYPE_OF = {**ASYMMETRIC_ALGORITHMS, **HMAC_ALGORITHMS}
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: A shared secret shorter than this is guessable offline from one token.
MIN_SHARED_SECRET_BYTES = 32
APP_ID_MAX = 128

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]


class IdentityConfigError(ValueError):
    """JWT_ISSUERS_FILE is malformed; the message names the table and the problem."""


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted identity provider, checked and ready for the hot path."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    app_id: str
    user_claim: str
    leeway_s: int
    jwks_url: str | None = None
    jwks_file: Path | None = None
    shared_secret: bytes | None = field(default=None, repr=False)


class _IssuerTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    issuer: _Text
    audience: _Text | list[_Text]
    jwks_url: _Text | None = None
    jwks_file: _Text | None = None
    hs256_secret_env: _Text | None = None
    algorithms: list[_Text] | None = None
    app_id: _Text | None = None
    user_claim: _Text = "sub"
    leeway_s: int = Field(30, ge=0, le=300)


def load_issuers(path: Path, env: Mapping[str, str], *, allow_private: bool) -> tuple[Issuer, ...]:
    """Read and check the file; raise IdentityConfigError naming the first problem."""
    where = f"JWT_ISSUERS_FILE ({path})"
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityConfigError(f"{where}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise IdentityConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"issuer"})
    if unknown:
        raise IdentityConfigError(
            f"{where}: unknown top-level key {unknown[0]!r}; "
            "write one [[issuer]] table per identity provider"
        )
    tables = data.get("issuer")
    if not isinstance(tables, list) or not tables:
        raise IdentityConfigError(f"{where}: no [[issuer]] table")
    issuers: list[Issuer] = []
    for n, table in enumerate(tables, 1):
        name = table.get("issuer") if isinstance(table, dict) else None
        label = f"{where}: [[issuer]] #{n}" + (f" ({name})" if isinstance(name, str) else "")
        try:
            issuer = _check(_IssuerTable.model_validate(table), env, allow_private, path.parent)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise IdentityConfigError(f"{label}: {loc}: {err['msg']}") from None
        except IdentityConfigError as exc:
            raise IdentityConfigError(f"{label}: {exc}") from None
        if any(i.issuer == issuer.issuer for i in issuers):
            raise IdentityConfigError(f"{label}: the same issuer appears twice")
        issuers.append(issuer)
    return tuple(issuers)


def _check(t: _IssuerTable, env: Mapping[str, str], allow_private: bool, base: Path) -> Issuer:
    sources = [s for s in (t.jwks_url, t.jwks_file, t.hs256_secret_env) if s is not None]
    if len(sources) != 1:
        raise IdentityConfigError(
            "give exactly one key source: jwks_url, jwks_file or hs256_secret_env"
        )
    shared = t.hs256_secret_env is not None
    algorithms = tuple(t.algorithms or (("HS256",) if shared else DEFAULT_ALGORITHMS))
    family = HMAC_ALGORITHMS if shared else ASYMMETRIC_ALGORITHMS
    for alg in algorithms:
        if alg.lower() == "none":
            raise IdentityConfigError('algorithms: "none" is never accepted')
        if alg not in KEY_TYPE_OF:
            raise IdentityConfigError(f"algorithms: unknown algorithm {alg!r}")
        if alg not in family:
            kind = "hs256_secret_env (a shared secret)" if shared else "a JWKS"
            raise IdentityConfigError(
                f"algorithms: {alg} cannot be used with {kind}; use {', '.join(sorted(family))}"
            )
    audiences = (t.audience,) if isinstance(t.audience, str) else tuple(t.audience)
    if not audiences:
        raise IdentityConfigError("audience: give at least one")
    app_id = t.app_id or t.issuer
    if len(app_id) > APP_ID_MAX:
        raise IdentityConfigError(f"app_id: at most {APP_ID_MAX} characters (set app_id)")
    secret = None
    jwks_file = None
    if t.hs256_secret_env is not None:
        value = env.get(t.hs256_secret_env, "")
        if not value:
            raise IdentityConfigError(f"hs256_secret_env: {t.hs256_secret_env} is not set")
        secret = value.encode()
        if len(secret) < MIN_SHARED_SECRET_BYTES:
            raise IdentityConfigError(
                f"hs256_secret_env: {t.hs256_secret_env} is shorter than "
                f"{MIN_SHARED_SECRET_BYTES} bytes (guessable from one token)"
            )
    elif t.jwks_file is not None:
        jwks_file = Path(t.jwks_file)
        if not jwks_file.is_absolute():
            jwks_file = base / jwks_file  # relative to the issuers file, not the cwd
        if not jwks_file.is_file():
            raise IdentityConfigError(f"jwks_file: {jwks_file} does not exist")
    url = _jwks_url(t.jwks_url, allow_private) if t.jwks_url is not None else None
    return Issuer(
        issuer=t.issuer,
        audiences=audiences,
        algorithms=frozenset(algorithms),
        app_id=app_id,
        user_claim=t.user_claim,
        leeway_s=t.leeway_s,
        jwks_url=url,
        jwks_file=jwks_file,
        shared_secret=secret,
    )


def _jwks_url(raw: str, allow_private: bool) -> str:
    """https, checked like a client-supplied upstream (no private address); http only to
    a loopback host and only with ALLOW_PRIVATE_UPSTREAMS=true (a local test IdP)."""
    try:
        checked = parse_base_url(raw, allow_private=allow_private)
    except ForbiddenUpstream as exc:
        hint = " (http and private hosts need ALLOW_PRIVATE_UPSTREAMS=true)"
        reason = str(exc).replace("Upstream base URL ", "the URL ").replace("Upstream ", "")
        raise IdentityConfigError(f"jwks_url: {reason}{'' if allow_private else hint}") from None
    if checked.scheme == "http" and not is_loopback_host(checked.host):
        raise IdentityConfigError("jwks_url: must use https (http only to a loopback host)")
    return checked.origin + checked.path_prefix


def describe(issuer: Issuer) -> dict[str, Any]:
    """What doctor and the start log show of an issuer (never the secret)."""
    source = issuer.jwks_url or (str(issuer.jwks_file) if issuer.jwks_file else "shared secret")
    return {"issuer": issuer.issuer, "keys": source, "algorithms": sorted(issuer.algorithms)}
