"""`byok-relay reencrypt`: rewrite every stored key under the current ENCRYPTION_SECRET,
or move every key into (`--to pkcs11`) or out of (`--to local`) HSM custody (SPEC §11).

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
from byok_relay.crypto import DecryptionError, SealedKey
from byok_relay.custody import CustodyUnavailable, HsmUnavailable, KeyCustody, build_custody
from byok_relay.logs import log_event
from byok_relay.storage import Storage, open_storage
from byok_relay.storage.base import SealedRow


@dataclass(frozen=True)
class ReencryptResult:
    rewritten: int
    unreadable: int
    remaining: int
    #: Why the run stopped early (the HSM stopped answering), None when it ran through.
    stopped: str | None = None


async def reencrypt(
    storage: Storage, custody: KeyCustody, batch_size: int = 200
) -> ReencryptResult:
    current = await custody.current_version()
    after = ("", "")
    rewritten = unreadable = 0
    stopped: str | None = None
    while True:
        batch = await storage.keys_not_at_version(current, after, batch_size)
        if not batch:
            break
        after = (batch[-1].user_id, batch[-1].provider)
        swaps: list[tuple[SealedRow, str, bytes]] = []
        try:
            for row in batch:
                try:
                    plaintext = await custody.open(
                        SealedKey(row.key_version, row.ciphertext), row.user_id, row.provider
                    )
                except DecryptionError:
                    # Sealed by a secret we were not given: leave it, report it.
                    unreadable += 1
                    continue
                sealed = await custody.seal(plaintext, row.user_id, row.provider)
                swaps.append((row, sealed.version, sealed.blob))
        except CustodyUnavailable as exc:
            stopped = str(exc)  # keep what this batch did; a later run resumes
        if swaps:
            rewritten += await storage.replace_sealed_keys(swaps)
        log_event("reencrypt progress", rewritten=rewritten, unreadable=unreadable)
        if stopped is not None:
            log_event("the HSM stopped answering; run reencrypt again when it is back",
                      logging.WARNING, reason=stopped)  # fmt: skip
            break
    remaining = await storage.count_keys_not_at_version(current)
    if unreadable:
        log_event(
            "some keys could not be decrypted: add the secret that sealed them to "
            "ENCRYPTION_SECRET_PREVIOUS and run reencrypt again",
            logging.WARNING,
            unreadable=unreadable,
        )
    return ReencryptResult(rewritten, unreadable, remaining, stopped)


async def reencrypt_all(
    settings: Settings, batch_size: int = 200, to: str | None = None
) -> ReencryptResult:
    storage = open_storage(settings.database_url, pool_size=2)
    await storage.connect()
    custody = build_custody(settings, storage, target=to)
    try:
        await storage.migrate()
        if custody.hsm is not None:
            try:
                await custody.hsm.connect()
            except HsmUnavailable as exc:
                # Nothing moved: report the rows still outside the target custody.
                not_local = await storage.count_keys_not_at_version(custody.local.current_version)
                if custody.target == "pkcs11":
                    left = await storage.count_keys_not_at_version("") - not_local
                else:
                    left = not_local
                return ReencryptResult(0, 0, left, str(exc))
        return await reencrypt(storage, custody, batch_size)
    finally:
        if custody.hsm is not None:
            await custody.hsm.close()
        await storage.close()
