"""`byok-relay reencrypt`: rewrite every stored key under the current ENCRYPTION_SECRET.

Batches of keys are decrypted with whichever configured secret sealed them and sealed
again under the current one; each batch is swapped in one transaction, and only where
the row is unchanged since it was read. So the command can run while relays serve
traffic, can be killed at any moment without losing a key (an interrupted batch rolls
back), and a second run simply finishes the job (rows already current are skipped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from byok_relay.config import Settings
from byok_relay.crypto import DecryptionError, KeyCipher, SealedKey
from byok_relay.logs import log_event
from byok_relay.storage import Storage, open_storage
from byok_relay.storage.base import SealedRow


@dataclass(frozen=True)
class ReencryptResult:
    rewritten: int
    unreadable: int
    remaining: int


async def reencrypt(storage: Storage, cipher: KeyCipher, batch_size: int = 200) -> ReencryptResult:
    current = cipher.current_version
    after = ("", "")
    rewritten = unreadable = 0
    while True:
        batch = await storage.keys_not_at_version(current, after, batch_size)
        if not batch:
            break
        after = (batch[-1].user_id, batch[-1].provider)
        swaps: list[tuple[SealedRow, str, bytes]] = []
        for row in batch:
            try:
                plaintext = cipher.open(
                    SealedKey(row.key_version, row.ciphertext), row.user_id, row.provider
                )
            except DecryptionError:
                # Sealed by a secret we were not given: leave it, report it.
                unreadable += 1
                continue
            sealed = cipher.seal(plaintext, row.user_id, row.provider)
            swaps.append((row, sealed.version, sealed.blob))
        if swaps:
            rewritten += await storage.replace_sealed_keys(swaps)
        log_event("reencrypt progress", rewritten=rewritten, unreadable=unreadable)
    remaining = await storage.count_keys_not_at_version(current)
    if unreadable:
        log_event(
            "some keys could not be decrypted: add the secret that sealed them to "
            "ENCRYPTION_SECRET_PREVIOUS and run reencrypt again",
            logging.WARNING,
            unreadable=unreadable,
        )
    return ReencryptResult(rewritten, unreadable, remaining)


async def reencrypt_all(settings: Settings, batch_size: int = 200) -> ReencryptResult:
    storage = open_storage(settings.database_url, pool_size=2)
    await storage.connect()
    try:
        await storage.migrate()
        cipher = KeyCipher(settings.ENCRYPTION_SECRET.get_secret_value(), settings.previous_secrets)
        return await reencrypt(storage, cipher, batch_size)
    finally:
        await storage.close()
