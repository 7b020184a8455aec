"""Key custody (SPEC §11, docs/key-custody.md): local master secret or an HSM's key.

`hsm` talks to the PKCS#11 token; `envelope` seals and opens provider keys under data
keys that are local (derived from ENCRYPTION_SECRET) or wrapped by the HSM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from byok_relay.config import ConfigError, Settings, hsm_pin
from byok_relay.crypto import KeyCipher
from byok_relay.custody.envelope import HSM_VERSION_PREFIX, KeyCustody
from byok_relay.custody.errors import CustodyUnavailable, HsmConfigError, HsmUnavailable
from byok_relay.storage import Storage

if TYPE_CHECKING:
    from byok_relay.custody.hsm import Hsm

__all__ = [
    "HSM_VERSION_PREFIX",
    "CustodyUnavailable",
    "HsmConfigError",
    "HsmUnavailable",
    "KeyCustody",
    "build_custody",
    "hsm_from_settings",
]


def hsm_from_settings(settings: Settings) -> Hsm | None:
    """The HSM when one is configured (PKCS11_MODULE): needed in pkcs11 custody, and in
    local custody to read keys still in HSM custody (after `reencrypt --to local`)."""
    if settings.PKCS11_MODULE is None or settings.PKCS11_TOKEN_LABEL is None:
        return None
    try:
        from byok_relay.custody.hsm import Hsm, HsmSettings
    except ImportError:
        raise ConfigError(
            "PKCS11_MODULE: the PKCS#11 binding is not installed: pip install 'byok-relay[pkcs11]'"
        ) from None
    return Hsm(
        HsmSettings(
            module=settings.PKCS11_MODULE,
            token_label=settings.PKCS11_TOKEN_LABEL,
            pin=hsm_pin(settings),
            key_label=settings.PKCS11_KEY_LABEL,
        )
    )


def build_custody(settings: Settings, storage: Storage, target: str | None = None) -> KeyCustody:
    local = KeyCipher(settings.ENCRYPTION_SECRET.get_secret_value(), settings.previous_secrets)
    return KeyCustody(
        local, storage, hsm_from_settings(settings), target or settings.KEY_CUSTODY,
        settings.CACHE_TTL_S,
    )  # fmt: skip
