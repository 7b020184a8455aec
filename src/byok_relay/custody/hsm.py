"""The PKCS#11 token that holds the master key (SPEC §11, docs/key-custody.md).

The master key is a non-extractable AES-256 key in the token; the relay only ever asks
the token to encrypt or decrypt a data key with it (AES-GCM), so the master key never
leaves the HSM. Every call into the PKCS#11 library runs on one dedicated thread with
one session: the library blocks, and the event loop must not. One thread, because
python-pkcs11 initialises the module without OS locking, and concurrent sessions then
fail (SoftHSM2 answered CKR_GENERAL_ERROR to 4 threads decrypting at once); with data keys
cached (envelope.py) the HSM is asked about once per CACHE_TTL_S, so one is enough.
When the token stops answering, calls fail with `HsmUnavailable` and the next call
(at most one attempt per RECONNECT_INTERVAL_S) re-initialises the library and logs in
again, so the relay recovers without a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism

from byok_relay.custody.errors import HsmConfigError, HsmDataError, HsmUnavailable

T = TypeVar("T")
RECONNECT_INTERVAL_S = 1.0
_IV_BYTES = 12
#: The token's answers that say "your data is wrong", not "the token is gone".
_DATA_ERRORS = (
    pkcs11.exceptions.EncryptedDataInvalid,
    pkcs11.exceptions.EncryptedDataLenRange,
    pkcs11.exceptions.DataInvalid,
    pkcs11.exceptions.DataLenRange,
)


@dataclass(frozen=True)
class HsmSettings:
    module: Path
    token_label: str
    pin: str = field(repr=False)
    key_label: str


class Hsm:
    def __init__(self, config: HsmSettings) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pkcs11")
        self._lib: Any = None
        self._token: Any = None
        self._login: Any = None  # the one session, logged in
        self._key: Any = None  # the master key's handle in that session
        self._last_attempt = 0.0
        #: Why the token is unavailable (None while it answers): /health?deep=1 shows it.
        self.problem: str | None = None

    # --- lifecycle ----------------------------------------------------------------------
    async def connect(self) -> None:
        """Load the module, find the token, log in, find the key: HsmConfigError if any of
        that fails for a reason the operator must fix, HsmUnavailable if the token does
        not answer."""
        await self._run(self._connect_or_unavailable)

    def _connect_or_unavailable(self) -> None:
        try:
            self._connect()
        except pkcs11.exceptions.PKCS11Error as exc:
            raise HsmUnavailable(
                f"PKCS11_TOKEN_LABEL: the token {self.config.token_label!r} does not answer "
                f"({type(exc).__name__})"
            ) from None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._disconnect)
        self._pool.shutdown(wait=True)

    async def create_key(self) -> bool:
        """Create the master key when absent (`byok-relay init --pkcs11`); True if created."""
        return await self._run(self._create_key)

    # --- the two operations -------------------------------------------------------------
    async def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """iv || ciphertext+tag, by the token's master key (AES-GCM)."""
        iv = os.urandom(_IV_BYTES)
        ct = await self._call(lambda key: key.encrypt(data, mechanism=Mechanism.AES_GCM,
                                                      mechanism_param=_gcm(iv, aad)))  # fmt: skip
        return iv + bytes(ct)

    async def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        iv, ct = blob[:_IV_BYTES], blob[_IV_BYTES:]
        pt = await self._call(lambda key: key.decrypt(ct, mechanism=Mechanism.AES_GCM,
                                                      mechanism_param=_gcm(iv, aad)))  # fmt: skip
        return bytes(pt)

    async def round_trip(self) -> None:
        """Encrypt and decrypt a probe (doctor, /health?deep=1)."""
        probe = os.urandom(16)
        if await self.decrypt(await self.encrypt(probe, b"probe"), b"probe") != probe:
            raise HsmUnavailable("the token's round trip returned other bytes")

    # --- plumbing -----------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _call(self, op: Callable[[Any], Any]) -> Any:
        return await self._run(lambda: self._with_key(op))

    def _with_key(self, op: Callable[[Any], Any]) -> Any:
        key = self._session_key()
        try:
            return op(key)
        except _DATA_ERRORS as exc:
            raise HsmDataError(type(exc).__name__) from None
        except pkcs11.exceptions.PKCS11Error as exc:
            self._lost(exc)
            raise HsmUnavailable(self.problem or type(exc).__name__) from None

    def _session_key(self) -> Any:
        """The master key's handle, reconnecting after a loss (on the HSM thread only)."""
        if self._key is None:  # never connected, or lost
            now = time.monotonic()
            if now - self._last_attempt < RECONNECT_INTERVAL_S:
                raise HsmUnavailable(self.problem or "the token is unavailable")
            self._last_attempt = now
            try:
                self._disconnect()
                self._connect()
            except (HsmConfigError, HsmUnavailable, pkcs11.exceptions.PKCS11Error) as exc:
                self.problem = _describe(exc)
                raise HsmUnavailable(self.problem) from None
        return self._key

    def _lost(self, exc: BaseException) -> None:
        if self._key is not None:  # just lost: the next attempt waits an interval
            self._key = None
            self._last_attempt = time.monotonic()
        self.problem = _describe(exc)

    def _connect(self) -> None:
        c = self.config
        try:
            if self._lib is None:
                self._lib = pkcs11.lib(str(c.module))
            else:
                self._lib.reinitialize()
        except pkcs11.exceptions.PKCS11Error as exc:
            if "OS exception while loading" in str(exc):  # not a loadable library at all
                raise HsmConfigError(f"PKCS11_MODULE: cannot load {c.module}: {exc}") from None
            # Loaded, but C_Initialize failed: the HSM (or its configuration) is not there.
            raise HsmUnavailable(
                f"the HSM does not answer: {c.module} failed to initialise ({_describe(exc)})"
            ) from None
        try:
            self._token = self._lib.get_token(token_label=c.token_label)
        except pkcs11.exceptions.NoSuchToken:
            raise HsmConfigError(
                f"PKCS11_TOKEN_LABEL: no token labelled {c.token_label!r} in {c.module}"
            ) from None
        try:
            self._login = self._token.open(user_pin=c.pin, rw=True)
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinInvalid,
                pkcs11.exceptions.PinLenRange):  # fmt: skip
            raise HsmConfigError(
                f"PKCS11_PIN: the token {c.token_label!r} refused the PIN"
            ) from None
        except pkcs11.exceptions.PinLocked:
            raise HsmConfigError(f"PKCS11_PIN: the token {c.token_label!r} is locked") from None
        try:
            self._key = self._login.get_key(label=c.key_label, key_type=KeyType.AES)
        except pkcs11.exceptions.NoSuchKey:
            raise HsmConfigError(
                f"PKCS11_KEY_LABEL: no AES key labelled {c.key_label!r} on the token; "
                "create it with `byok-relay init --pkcs11`"
            ) from None
        self.problem = None

    def _disconnect(self) -> None:
        self._key = None
        login, self._login = self._login, None
        if login is not None:
            try:
                login.close()
            except pkcs11.exceptions.PKCS11Error:
                pass  # the token is gone already

    def _create_key(self) -> bool:
        try:
            self._connect()
            return False
        except HsmConfigError as exc:
            if not str(exc).startswith("PKCS11_KEY_LABEL") or self._login is None:
                raise
        self._login.generate_key(
            KeyType.AES, 256, label=self.config.key_label, store=True,
            template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True,
                      Attribute.PRIVATE: True, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                      Attribute.WRAP: False, Attribute.UNWRAP: False},
        )  # fmt: skip
        self._connect()
        return True


def _gcm(iv: bytes, aad: bytes) -> Any:
    return pkcs11.GCMParams(iv, aad, 128)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HsmConfigError | HsmUnavailable):
        return str(exc)
    detail = str(exc).strip()
    return f"the token does not answer ({type(exc).__name__}{': ' + detail if detail else ''})"
