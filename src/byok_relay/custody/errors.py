"""What key custody can go wrong with (SPEC §11), apart from the PKCS#11 binding itself,
so the relay imports them without `python-pkcs11` installed (the `pkcs11` extra)."""

from __future__ import annotations


class HsmConfigError(Exception):
    """The module, token, PIN or key is wrong: one line that says how to fix it."""


class HsmUnavailable(Exception):
    """The token does not answer right now (lost, reset, unplugged)."""


class HsmDataError(Exception):
    """The token refused a ciphertext (tampered or wrapped under another key)."""


class CustodyUnavailable(Exception):
    """A key is in HSM custody and the HSM does not answer now (503, retry later)."""
