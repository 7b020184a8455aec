"""The invalidation bus and the caches it drives, in process (no Redis needed): message
handling, what may be announced, the TTL fallback, and the race between a cache fill and
an invalidation. The cross-process behaviour is in test_multi_instance.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from byok_relay.auth import Authenticator
from byok_relay.bus import FALLBACK_TTL_S, InvalidationBus
from byok_relay.crypto import KeyCipher, TokenHasher, new_token
from byok_relay.custody import KeyCustody
from byok_relay.errors import ApiError
from byok_relay.storage.base import StoredKey, TokenRecord
from byok_relay.usage import UsageRecorder
from byok_relay.vault import Vault

SECRET = "bus-test-secret-".ljust(40, "x")

pytestmark = pytest.mark.asyncio(loop_scope="session")


class FakeStorage:
    """Just what Authenticator and Vault read; `gate` holds a read open."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenRecord] = {}
        self.keys: dict[tuple[str, str], StoredKey] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def lookup_token(self, token_hash: str) -> TokenRecord | None:
        self.reads += 1
        found = self.tokens.get(token_hash)
        if self.gate is not None:
            await self.gate.wait()
        return found

    async def delete_key(self, user_id: str, provider: str) -> bool:
        return self.keys.pop((user_id, provider), None) is not None

    async def get_key(self, user_id: str, provider: str) -> StoredKey | None:
        self.reads += 1
        found = self.keys.get((user_id, provider))
        if self.gate is not None:
            await self.gate.wait()
        return found


def _headers(token: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"x-relay-token": token}))


def _setup(ttl: float = 30.0) -> tuple[FakeStorage, Authenticator, Vault, str, str]:
    storage = FakeStorage()
    hasher = TokenHasher(SECRET)
    cipher = KeyCipher(SECRET)
    auth = Authenticator(storage, hasher, ttl)  # type: ignore[arg-type]
    custody = KeyCustody(cipher, storage, None, "local", ttl)  # type: ignore[arg-type]
    vault = Vault(storage, custody, ttl)  # type: ignore[arg-type]
    token = new_token()
    token_hash = hasher.hash(token)
    storage.tokens[token_hash] = TokenRecord(token_hash, "u1", "app", None, None)
    sealed = cipher.seal("sk-bus-test-0123456789", "u1", "openai")
    storage.keys[("u1", "openai")] = StoredKey(sealed.version, sealed.blob, None)
    return storage, auth, vault, token, token_hash


def _bus(
    auth: Authenticator, vault: Vault, usage: Any = None, url: str | None = "redis://127.0.0.1:1/0"
) -> InvalidationBus:
    """A bus wired as services.py wires it (handlers and caches registered by name)."""
    bus = InvalidationBus(url, "test:invalidate")
    for cache in (auth.tokens, auth.scoped, vault.keys):
        bus.register_cache(cache)
    bus.register("token", 1, auth.drop_token)
    bus.register("user", 1, auth.drop_user)
    bus.register("user", 1, vault.drop_user)
    if usage is not None:
        bus.register("user", 1, usage.forget_user)
    bus.register("key", 2, vault.drop)
    vault._bus = bus
    return bus


async def test_messages_drop_the_right_entries() -> None:
    storage, auth, vault, token, token_hash = _setup()
    bus = _bus(auth, vault)
    bus._on_connected()  # as if subscribed: full TTL
    await auth.authenticate(_headers(token))
    assert await vault.get("u1", "openai") is not None
    reads = storage.reads
    await auth.authenticate(_headers(token))
    await vault.get("u1", "openai")
    assert storage.reads == reads  # both served from cache

    bus.apply(b"other-origin key u1 openai")
    await vault.get("u1", "openai")
    assert storage.reads == reads + 1  # key re-read, token still cached
    await auth.authenticate(_headers(token))
    assert storage.reads == reads + 1

    storage.tokens[token_hash] = TokenRecord(token_hash, "u1", "app", None, 123)
    bus.apply(f"other-origin token {token_hash}")
    with pytest.raises(ApiError) as info:
        await auth.authenticate(_headers(token))
    assert info.value.status == 401


async def test_user_message_clears_both_caches_and_pending_usage() -> None:
    storage, auth, vault, token, _ = _setup()
    usage = UsageRecorder(storage, 90)  # type: ignore[arg-type]
    forgotten: list[str] = []
    usage.forget_user = forgotten.append  # type: ignore[method-assign]
    bus = _bus(auth, vault, usage)
    await auth.authenticate(_headers(token))
    await vault.get("u1", "openai")
    reads = storage.reads
    bus.apply(b"x user u1\nx key u2 openai\n")  # two lines, one message
    await auth.authenticate(_headers(token))
    await vault.get("u1", "openai")
    assert storage.reads == reads + 2
    assert forgotten == ["u1"]
    assert bus.received == 2


async def test_own_and_malformed_messages_are_ignored() -> None:
    storage, auth, vault, token, token_hash = _setup()
    bus = _bus(auth, vault)
    await auth.authenticate(_headers(token))
    reads = storage.reads
    for message in (
        f"{bus.origin} token {token_hash}",  # our own: already applied locally
        "x token",
        "x token a b",
        "x frobnicate u1",
        "",
        b"\xff\xfe",
    ):
        bus.apply(message)
    await auth.authenticate(_headers(token))
    assert storage.reads == reads
    assert bus.received == 0


async def test_announce_carries_only_ids_and_hashes() -> None:
    _, auth, vault, _, token_hash = _setup()
    bus = _bus(auth, vault)
    bus._queue = asyncio.Queue()
    bus.invalidate("token", token_hash)
    await vault.delete("u1", "openai")
    bus.invalidate("user", "u1")
    bus.announce("token", "has space")  # refused: never a free-form value
    bus.announce("key", "only-one-arg")  # refused: wrong shape
    lines = [bus._queue.get_nowait() for _ in range(bus._queue.qsize())]
    assert lines == [
        f"{bus.origin} token {token_hash}",
        f"{bus.origin} key u1 openai",
        f"{bus.origin} user u1",
    ]


async def test_ttl_is_capped_while_the_bus_is_deaf() -> None:
    _, auth, vault, _, _ = _setup(ttl=30.0)
    bus = _bus(auth, vault)
    caches = (auth.tokens, auth.scoped, vault.keys)
    assert {c.ttl for c in caches} == {FALLBACK_TTL_S}  # not subscribed yet
    bus._on_connected()
    assert {c.ttl for c in caches} == {30.0}
    bus._on_disconnected(ConnectionError("gone"))
    assert {c.ttl for c in caches} == {FALLBACK_TTL_S}


async def test_no_bus_keeps_configured_ttl() -> None:
    _, auth, vault, _, token_hash = _setup(ttl=5.0)
    bus = _bus(auth, vault, url=None)
    assert auth.tokens.ttl == vault.keys.ttl == 5.0
    bus.invalidate("token", token_hash)  # applied here; nobody to announce to
    assert bus._queue is None


async def test_invalidation_during_a_read_is_not_undone_by_the_fill() -> None:
    """A read that started before an invalidation must not cache its (stale) result."""
    storage, auth, vault, token, token_hash = _setup()
    storage.gate = asyncio.Event()
    lookup = asyncio.ensure_future(auth.authenticate(_headers(token)))
    key_read = asyncio.ensure_future(vault.get("u1", "openai"))
    await asyncio.sleep(0.01)  # both reads are in flight, holding pre-revoke rows
    storage.tokens[token_hash] = TokenRecord(token_hash, "u1", "app", None, 999)
    del storage.keys[("u1", "openai")]
    auth.drop_token(token_hash)
    vault.drop("u1", "openai")
    storage.gate.set()
    await lookup  # this request raced the revoke and may still pass ...
    await key_read
    storage.gate = None
    with pytest.raises(ApiError):  # ... but the next one sees the revocation
        await auth.authenticate(_headers(token))
    assert await vault.get("u1", "openai") is None
