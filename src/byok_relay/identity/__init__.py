"""Bring your own identity (SPEC §10, docs/identity.md): the app's own signed-in users.

`issuers` reads JWT_ISSUERS_FILE, `keys` holds each issuer's verification keys (JWKS URL,
JWKS file or shared secret), `verifier` turns a JWT into a verified (issuer, subject).
`auth.Authenticator` maps that pair to a relay user, created on first use.
"""

from byok_relay.identity.issuers import IdentityConfigError, Issuer, load_issuers
from byok_relay.identity.verifier import Identity, IdentityVerifier, looks_like_jwt

__all__ = [
    "Identity",
    "IdentityConfigError",
    "IdentityVerifier",
    "Issuer",
    "load_issuers",
    "looks_like_jwt",
]
