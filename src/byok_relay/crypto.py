"""Key encryption (AES-256-GCM with associated data), key derivation and token HMACs.

Every secret used for a purpose is derived with HKDF-SHA256 from the operator's
ENCRYPTION_SECRET under its own `info` label, so no bytes serve two purposes. A stored
ciphertext records the *version* of the data key that sealed it: a short public
fingerprint of the secret, which lets ENCRYPTION_SECRET_PREVIOUS keep old rows readable
until `byok-relay reencrypt` rewrites them.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_PREFIX = "byok_rt_"
SCOPED_TOKEN_PREFIX = "byok_st_"  # scoped tokens (SPEC §9): same shape, their own prefix
_TOKEN_BYTES = 32  # 256 bits of randomness
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43  # base64url of 32 bytes, unpadded
_NONCE_BYTES = 12  # 96-bit GCM nonce, fresh per encryption
_TAG_BYTES = 16
_SALT = b"byok-relay/v1"
# The exact shape new_token() produces: prefix + unpadded base64url, ASCII only.
_TOKEN_SHAPE = re.compile(r"byok_[rs]t_[A-Za-z0-9_-]{43}")


class DecryptionError(Exception):
    """A stored key could not be decrypted (wrong secret, tampered or moved row)."""


def _derive(secret: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=label).derive(
        secret.encode("utf-8")
    )


def _associated_data(user_id: str, provider: str) -> bytes:
    # Binds a ciphertext to its owner and provider: a row copied elsewhere fails to open.
    return b"byok-relay:key:" + user_id.encode() + b"\x00" + provider.encode()


@dataclass(frozen=True, slots=True)
class SealedKey:
    version: str
    blob: bytes  # nonce || ciphertext+tag


class KeyCipher:
    """Seals provider keys under the current data key; opens under current or previous."""

    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        self._keys: dict[str, AESGCM] = {}
        self.current_version = self._add(secret)
        for old in previous or []:
            self._add(old)

    def _add(self, secret: str) -> str:
        version = _derive(secret, b"key-version-id")[:4].hex()
        self._keys.setdefault(version, AESGCM(_derive(secret, b"key-encryption")))
        return version

    @property
    def versions(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: str, user_id: str, provider: str) -> SealedKey:
        return seal_under(self._keys[self.current_version], self.current_version, plaintext,
                          user_id, provider)  # fmt: skip

    def open(self, sealed: SealedKey, user_id: str, provider: str) -> str:
        aead = self._keys.get(sealed.version) if isinstance(sealed.version, str) else None
        if aead is None:
            raise DecryptionError(
                f"key version {str(sealed.version)[:16]!r} is unknown: its secret is neither "
                "ENCRYPTION_SECRET nor in ENCRYPTION_SECRET_PREVIOUS"
            )
        return open_under(aead, sealed, user_id, provider)


def seal_under(
    aead: AESGCM, version: str, plaintext: str, user_id: str, provider: str
) -> SealedKey:
    """A provider key sealed under a data key (local, or unwrapped by the HSM)."""
    nonce = os.urandom(_NONCE_BYTES)
    ct = aead.encrypt(nonce, plaintext.encode("utf-8"), _associated_data(user_id, provider))
    return SealedKey(version, nonce + ct)


def open_under(aead: AESGCM, sealed: SealedKey, user_id: str, provider: str) -> str:
    blob = sealed.blob
    if not isinstance(blob, bytes) or len(blob) < _NONCE_BYTES + _TAG_BYTES:
        # A truncated or mistyped row (a restore gone wrong, a hand edit).
        raise DecryptionError("stored ciphertext is malformed (truncated or not binary)")
    nonce, ct = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
    try:
        return aead.decrypt(nonce, ct, _associated_data(user_id, provider)).decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise DecryptionError("stored key failed authentication") from None


class TokenHasher:
    """Relay tokens are stored only as HMAC-SHA256 under a dedicated key."""

    def __init__(
        self,
        encryption_secret: str,
        hmac_secret: str | None = None,
        previous_secrets: list[str] | None = None,
    ) -> None:
        self._key = (
            hmac_secret.encode("utf-8")
            if hmac_secret
            else _derive(encryption_secret, b"token-hmac")
        )
        # Without TOKEN_HMAC_SECRET the key follows ENCRYPTION_SECRET: tokens hashed under
        # an earlier secret must still be recognised (and re-hashed) after a rotation.
        self._previous_keys = (
            [] if hmac_secret else [_derive(p, b"token-hmac") for p in previous_secrets or []]
        )

    def previous_hashes(self, token: str) -> list[str]:
        data = token.encode("utf-8")
        return [hmac.digest(k, data, "sha256").hex() for k in self._previous_keys]

    def hash(self, token: str) -> str:
        # hmac.digest: OpenSSL's one-shot HMAC, no HMAC object per request.
        return hmac.digest(self._key, token.encode("utf-8"), "sha256").hex()


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    """A fresh relay (or scoped) token: recognisable prefix + 256 random bits (base64url)."""
    return prefix + secrets.token_urlsafe(_TOKEN_BYTES)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before any lookup: refuses garbage without touching storage.

    ASCII only: a header carrying non-UTF-8 bytes (decoded with surrogate escapes) must be
    an invalid token (401), never reach the hasher. Relay and scoped tokens alike."""
    return len(value) == TOKEN_LENGTH and _TOKEN_SHAPE.fullmatch(value) is not None


def constant_time_equals(a: str, b: str) -> bool:
    # surrogatepass: header values may carry undecodable bytes as lone surrogates; they
    # must compare unequal, not raise.
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def key_hint(key: str) -> str:
    return key[-4:]
