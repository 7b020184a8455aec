"""Key custody: which key seals a provider key, and how it is opened again (SPEC §11).

`KEY_CUSTODY=local`: provider keys are sealed under a data key derived from
ENCRYPTION_SECRET (`crypto.KeyCipher`), as before. `KEY_CUSTODY=pkcs11`: envelope
encryption. A random AES-256 data key seals provider keys; the data key is stored only
wrapped by the HSM's master key (table `data_keys`), and the stored key's version names
it (`p11:<id>`). Unwrapped, a data key stays in memory at most CACHE_TTL_S, so the hot
path asks the HSM about once per CACHE_TTL_S, not per request. The version says the
custody of each row, so a database half-way through `byok-relay reencrypt --to pkcs11`
(or `--to local`) reads correctly: local rows open with the secret, `p11:` rows through
the HSM.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from byok_relay.cache import InvalidatingCache
from byok_relay.crypto import DecryptionError, KeyCipher, SealedKey, open_under, seal_under
from byok_relay.custody.errors import CustodyUnavailable, HsmDataError, HsmUnavailable
from byok_relay.storage import DataKeyRecord, Storage

if TYPE_CHECKING:  # the binding is the optional `pkcs11` extra
    from byok_relay.custody.hsm import Hsm

HSM_VERSION_PREFIX = "p11:"
WRAP_MECHANISM = "AES-GCM"
CHECK_INTERVAL_S = 1.0


def _wrap_aad(data_key_id: str) -> bytes:
    # Binds a wrapped data key to its id: a wrapped key copied to another row fails.
    return b"byok-relay:data-key:" + data_key_id.encode()


class KeyCustody:
    def __init__(
        self,
        local: KeyCipher,
        storage: Storage,
        hsm: Hsm | None,
        target: str,
        cache_ttl_s: float,
    ) -> None:
        self.local = local
        self.hsm = hsm
        self.target = target
        self._storage = storage
        self.data_keys: InvalidatingCache[str, AESGCM] = InvalidatingCache("data-keys", cache_ttl_s)
        self._current_id: str | None = None
        self._current_lock = asyncio.Lock()
        self._checked: tuple[float, str] | None = None

    async def current_version(self) -> str:
        """The version new keys are sealed under (creates the HSM data key on first use)."""
        if self.target == "local":
            return self.local.current_version
        return HSM_VERSION_PREFIX + await self._current_data_key_id()

    async def seal(self, plaintext: str, user_id: str, provider: str) -> SealedKey:
        if self.target == "local":
            return self.local.seal(plaintext, user_id, provider)
        data_key_id = await self._current_data_key_id()
        aead = await self._data_key(data_key_id)
        return seal_under(aead, HSM_VERSION_PREFIX + data_key_id, plaintext, user_id, provider)

    async def open(self, sealed: SealedKey, user_id: str, provider: str) -> str:
        version = sealed.version
        if not isinstance(version, str) or not version.startswith(HSM_VERSION_PREFIX):
            return self.local.open(sealed, user_id, provider)
        aead = await self._data_key(version.removeprefix(HSM_VERSION_PREFIX))
        return open_under(aead, sealed, user_id, provider)

    # --- data keys ----------------------------------------------------------------------
    async def _data_key(self, data_key_id: str) -> AESGCM:
        # When the cached data key expires, every request in flight misses at once: the
        # cache has them share one unwrap instead of queueing dozens on the HSM's thread.
        aead = await self.data_keys.load(data_key_id, lambda: self._unwrap(data_key_id))
        assert aead is not None  # _unwrap returns a key or raises
        return aead

    async def _unwrap(self, data_key_id: str) -> AESGCM:
        hsm = self._require_hsm()
        record = await self._storage.get_data_key(data_key_id)
        if record is None:
            raise DecryptionError(f"data key {data_key_id[:16]!r} is missing from data_keys")
        try:
            raw = await hsm.decrypt(record.wrapped, _wrap_aad(record.id))
        except HsmDataError:
            raise DecryptionError(
                f"the HSM cannot unwrap data key {record.id!r}: it was wrapped by another "
                f"master key (label {record.key_label!r})"
            ) from None
        except HsmUnavailable as exc:
            raise CustodyUnavailable(str(exc)) from None
        return AESGCM(raw)

    async def _current_data_key_id(self) -> str:
        if self._current_id is not None:
            return self._current_id
        async with self._current_lock:
            if self._current_id is None:
                hsm = self._require_hsm()
                label = hsm.config.key_label
                found = await self._storage.latest_data_key("pkcs11", label)
                self._current_id = found.id if found else await self._new_data_key(hsm)
        return self._current_id

    async def _new_data_key(self, hsm: Hsm) -> str:
        data_key_id = uuid.uuid4().hex[:16]
        raw = os.urandom(32)
        try:
            wrapped = await hsm.encrypt(raw, _wrap_aad(data_key_id))
        except HsmUnavailable as exc:
            raise CustodyUnavailable(str(exc)) from None
        now = int(time.time() * 1000)
        label = hsm.config.key_label
        record = DataKeyRecord(data_key_id, "pkcs11", label, WRAP_MECHANISM, wrapped, now)
        await self._storage.put_data_key(record)
        return data_key_id

    def _require_hsm(self) -> Hsm:
        if self.hsm is None:
            raise DecryptionError(
                "this key is in HSM custody: set PKCS11_MODULE, PKCS11_TOKEN_LABEL, "
                "PKCS11_PIN and PKCS11_KEY_LABEL (docs/key-custody.md)"
            )
        return self.hsm

    async def check(self) -> str:
        """`ok`, or why the HSM does not answer (/health?deep=1). /health is public and
        unthrottled: one round trip per CHECK_INTERVAL_S at most, the answer reused
        meanwhile, so health probes cannot crowd the HSM's one thread."""
        if self.hsm is None:
            return "ok"
        now = time.monotonic()
        if self._checked is not None and now - self._checked[0] < CHECK_INTERVAL_S:
            return self._checked[1]
        try:
            await self.hsm.round_trip()
            answer = "ok"
        except (HsmUnavailable, HsmDataError) as exc:
            answer = f"unavailable ({exc})"
        self._checked = (time.monotonic(), answer)
        return answer
