"""Several relay instances sharing PostgreSQL and Redis behave as one relay.

Two real relay processes (A and B) on one PostgreSQL schema and one Redis key prefix:
- rate limits are counted once across both;
- a revoke, rotate, user delete, key delete or key replace on A is honoured by B within
  1 second, with CACHE_TTL_S=30 so that the invalidation bus (not the cache TTL) is
  what makes it so; a control run without Redis shows B would otherwise stay stale;
- nothing in Redis (keys or bus messages) contains a token or a provider key.

Measured delays are printed (run with -s to see them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from backends import (
    REDIS_URL,
    PgDatabase,
    RedisNamespace,
    redis_delete_prefix,
    redis_reachable,
    run_sync,
    service_missing,
)
from providers.mock import MockProviders
from providers.relay import (
    CHAT,
    FAKE_KEY,
    Relay,
    User,
    register_user,
    relay_env,
    start_relay_process,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CHAT_PATH = "/relay/openai/v1/chat/completions"
DEADLINE_S = 1.0


@dataclass
class Pair:
    a: Relay
    b: Relay
    ca: httpx.Client
    cb: httpx.Client
    redis: RedisNamespace | None


def _start_pair(
    mocks: MockProviders,
    tmp: pytest.TempPathFactory,
    db_url: str,
    ns: RedisNamespace | None,
    **env: str,
) -> Pair:
    """Two relays on one database (and Redis namespace), started in parallel."""
    shared: dict[str, str] = {"DATABASE_URL": db_url, "CACHE_TTL_S": "30", "DB_POOL_SIZE": "4"}
    if ns is not None:
        shared |= {"REDIS_URL": ns.url, "REDIS_KEY_PREFIX": ns.prefix}
    shared |= env
    dirs = [tmp.mktemp("instance"), tmp.mktemp("instance")]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_relay_process, relay_env(mocks, d, **shared), d) for d in dirs]
        relays: list[Relay] = []
        errors: list[BaseException] = []
        for future in futures:
            try:
                relays.append(future.result())
            except BaseException as exc:
                errors.append(exc)
    if errors:
        for relay in relays:
            relay.kill()
        raise errors[0]
    a, b = relays
    if ns is not None:
        _wait_subscribed(a)
        _wait_subscribed(b)
    return Pair(a, b, a.client(timeout=10), b.client(timeout=10), ns)


def _stop_pair(pair: Pair) -> None:
    pair.ca.close()
    pair.cb.close()
    for relay in (pair.a, pair.b):
        try:
            relay.stop(timeout=10)
        except Exception:
            relay.kill()


@pytest.fixture(scope="module")
def pair(
    mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory, pg_db: PgDatabase
) -> Iterator[Pair]:
    """A and B with Redis and CACHE_TTL_S=30, shared by the invalidation tests (each test
    uses users of its own)."""
    why = redis_reachable()
    if why is not None:
        service_missing(f"Redis not reachable at {REDIS_URL}: {why}")
    ns = RedisNamespace(REDIS_URL, f"byok-test-{uuid.uuid4().hex[:12]}")
    started = _start_pair(mocks, tmp_path_factory, pg_db.schema_url(), ns)
    yield started
    _stop_pair(started)
    redis_delete_prefix(ns.url, ns.prefix)


@pytest.fixture
def make_pair(
    mocks: MockProviders,
    tmp_path_factory: pytest.TempPathFactory,
    pg_db: PgDatabase,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Pair]]:
    """A pair with settings of the test's own."""
    made: list[Pair] = []

    def make(with_redis: bool = True, **env: str) -> Pair:
        ns = request.getfixturevalue("redis_ns") if with_redis else None
        made.append(_start_pair(mocks, tmp_path_factory, pg_db.schema_url(), ns, **env))
        return made[-1]

    yield make
    for p in made:
        _stop_pair(p)


def _wait_subscribed(relay: Relay, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while "cache invalidation bus subscribed" not in relay.log_text():
        assert time.monotonic() < deadline, relay.log_tail()
        time.sleep(0.02)


def _chat(client: httpx.Client, user: User) -> httpx.Response:
    return client.post(CHAT_PATH, json=CHAT, headers=user.headers)


def _until(check: Callable[[], bool], limit: float = 5.0) -> float:
    """Seconds until check() is true (polled every few ms); fails after `limit`."""
    started = time.perf_counter()
    while not check():
        elapsed = time.perf_counter() - started
        assert elapsed < limit, f"not seen within {limit} s"
        time.sleep(0.005)
    return time.perf_counter() - started


def _report(what: str, seconds: float) -> None:
    print(f"\n[multi-instance] {what}: seen on instance B after {seconds * 1000:.1f} ms")


def _user_on(relay: Relay, key: str = FAKE_KEY) -> User:
    user = register_user(relay)
    user.store_key("openai", key)
    return user


# --- rate limits ---------------------------------------------------------------------------
def test_rate_limit_counted_once_across_instances(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(RATE_LIMIT_RELAY="5/minute")
    user = _user_on(pair.a)
    statuses = [_chat(c, user).status_code for c in (pair.ca, pair.cb) * 3]
    assert statuses == [200] * 5 + [429], statuses
    again = _chat(pair.ca, user)
    assert again.status_code == 429
    assert int(again.headers["Retry-After"]) > 0
    assert again.headers["RateLimit-Limit"] == "5"
    assert "error" in again.json()


def test_redis_holds_no_tokens_or_keys(pair: Pair, mocks: MockProviders) -> None:
    """Limiter keys and bus messages carry HMAC hashes and ids, never a token or key."""
    assert pair.redis is not None
    secret_key = "sk-never-in-redis-0123456789"
    user = _user_on(pair.a, secret_key)
    messages: list[bytes] = []
    listening = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        import redis

        client = redis.Redis.from_url(pair.redis.url)  # type: ignore[union-attr]
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{pair.redis.prefix}:invalidate")  # type: ignore[union-attr]
        listening.set()
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg:
                messages.append(msg["data"])
        pubsub.close()
        client.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(5)
    for client in (pair.ca, pair.cb):
        assert _chat(client, user).status_code == 200
    user.store_key("openai", secret_key + "X")  # key replaced → announced
    rotated = pair.ca.post("/tokens/rotate", headers=user.headers)
    assert rotated.status_code == 200
    new_token = rotated.json()["token"]
    assert (
        pair.cb.request("DELETE", "/users", headers={"x-relay-token": new_token}).status_code == 200
    )
    _until(lambda: len(messages) >= 3)
    stop.set()
    thread.join(5)

    keys = pair.redis.keys()
    assert keys, "the limiter wrote nothing under the test prefix"
    tokens = (user.token, new_token)
    secrets = (*tokens, *(t.removeprefix("byok_rt_") for t in tokens), secret_key)
    for item in [*keys, *(m.decode() for m in messages)]:
        for secret in secrets:
            assert secret not in item, f"{item!r} contains a secret"
    # And the values too: the limiter stores counters only.
    values = run_sync(_dump_values(pair.redis))
    for value in values:
        for secret in secrets:
            assert secret.encode() not in value


async def _dump_values(ns: RedisNamespace) -> list[bytes]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(ns.url)
    try:
        out = []
        async for key in client.scan_iter(match=f"{ns.prefix}*"):
            kind = await client.type(key)
            if kind == b"string":
                out.append(await client.get(key) or b"")
            elif kind == b"hash":  # budget counters: field names and counts
                for field, value in (await client.hgetall(key)).items():
                    out += [field, value]
        return out
    finally:
        await client.aclose()


# --- invalidation ----------------------------------------------------------------------------
def test_revoke_on_a_is_honoured_by_b_within_a_second(pair: Pair) -> None:
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200  # B caches token and key (TTL 30 s)
    assert pair.ca.post("/tokens/revoke", headers=user.headers).status_code == 200
    delay = _until(lambda: _chat(pair.cb, user).status_code == 401)
    _report("token revoke on A", delay)
    assert delay < DEADLINE_S


def test_rotate_on_a_is_honoured_by_b_within_a_second(pair: Pair) -> None:
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200
    rotated = pair.ca.post("/tokens/rotate", headers=user.headers)
    assert rotated.status_code == 200
    delay = _until(lambda: _chat(pair.cb, user).status_code == 401)
    _report("token rotate on A (old token)", delay)
    assert delay < DEADLINE_S
    fresh = User(relay=pair.b, token=rotated.json()["token"], app_id=user.app_id)
    assert _chat(pair.cb, fresh).status_code == 200


def test_user_delete_on_a_is_honoured_by_b_within_a_second(
    pair: Pair,
) -> None:
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200
    assert pair.ca.request("DELETE", "/users", headers=user.headers).status_code == 200
    delay = _until(lambda: _chat(pair.cb, user).status_code == 401)
    _report("user delete on A", delay)
    assert delay < DEADLINE_S


def test_key_delete_on_a_is_honoured_by_b_within_a_second(
    pair: Pair,
) -> None:
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200  # B caches the opened key
    assert pair.ca.delete("/keys/openai", headers=user.headers).json()["deleted"] is True

    def no_key() -> bool:
        r = _chat(pair.cb, user)
        return r.status_code == 400 and "POST /keys/openai" in r.json()["error"]

    delay = _until(no_key)
    _report("key delete on A", delay)
    assert delay < DEADLINE_S


def test_key_replace_on_a_is_used_by_b_within_a_second(pair: Pair, mocks: MockProviders) -> None:
    user = _user_on(pair.a, "sk-old-key-0123456789")
    assert _chat(pair.cb, user).status_code == 200
    user.store_key("openai", "sk-new-key-0123456789")

    def new_key_sent() -> bool:
        assert _chat(pair.cb, user).status_code == 200
        sent: Any = mocks.openai.last_request.headers.get("authorization")
        return bool(sent == "Bearer sk-new-key-0123456789")

    delay = _until(new_key_sent)
    _report("key replace on A", delay)
    assert delay < DEADLINE_S


@pytest.mark.postgres
def test_control_without_bus_b_stays_stale_for_its_ttl(make_pair: Callable[..., Pair]) -> None:
    """Same setup without REDIS_URL: B keeps serving the revoked token from its 30 s
    cache. This is what proves the bus, not the TTL, made the tests above pass."""
    pair = make_pair(with_redis=False)
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200
    assert pair.ca.post("/tokens/revoke", headers=user.headers).status_code == 200
    assert _chat(pair.ca, user).status_code == 401  # A itself forgot at once
    time.sleep(1.2)
    assert _chat(pair.cb, user).status_code == 200  # B: stale, as its TTL allows


# --- spend control (SPEC §9) -----------------------------------------------------------------
def _mint(client: httpx.Client, user: User, **body: Any) -> dict[str, Any]:
    r = client.post("/tokens", json=body, headers=user.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _chat_as(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(CHAT_PATH, json=CHAT, headers={"x-relay-token": token})


def test_scoped_revoke_on_a_is_honoured_by_b_within_a_second(pair: Pair) -> None:
    user = _user_on(pair.a)
    one, two = _mint(pair.ca, user), _mint(pair.ca, user)
    for minted in (one, two):
        assert _chat_as(pair.cb, minted["token"]).status_code == 200  # cached on B (30 s)
    assert pair.ca.delete(f"/tokens/{one['id']}", headers=user.headers).json()["deleted"]
    delay = _until(lambda: _chat_as(pair.cb, one["token"]).status_code == 401)
    _report("scoped token revoke on A", delay)
    assert delay < DEADLINE_S
    assert _chat_as(pair.cb, two["token"]).status_code == 200
    # The parent's revoke takes its remaining children with it, on B too.
    assert pair.ca.post("/tokens/revoke", headers=user.headers).status_code == 200
    delay = _until(lambda: _chat_as(pair.cb, two["token"]).status_code == 401)
    _report("parent revoke on A (scoped child)", delay)
    assert delay < DEADLINE_S


def _burst(pair: Pair, token: str, n: int = 20) -> list[int]:
    """n requests at once, alternating between A and B."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        r = _chat_as(pair.ca if i % 2 else pair.cb, token)
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_scoped_budget_is_exact_across_instances(pair: Pair, mocks: MockProviders) -> None:
    user = _user_on(pair.a)
    token = _mint(pair.ca, user, budget={"requests": 10})["token"]
    statuses = _burst(pair, token)
    print(f"\n[multi-instance] scoped budget 10, 20 concurrent on A+B: {sorted(statuses)}")
    assert sorted(statuses) == [200] * 10 + [429] * 10
    assert len(mocks.openai.requests) == 10


def test_owner_budget_is_counted_once_across_instances(pair: Pair, mocks: MockProviders) -> None:
    user = _user_on(pair.a)
    assert _chat(pair.cb, user).status_code == 200  # B caches "no budget" (TTL 30 s)
    time.sleep(1.3)  # B writes its request log about once a second: then it counts
    put = pair.ca.put("/budget", json={"window": "day", "requests": 11}, headers=user.headers)
    assert put.status_code == 200, put.text
    # B must hear of the new budget through the bus, and the earlier request counts.
    statuses = _burst(pair, user.token)
    print(f"\n[multi-instance] owner budget 11 (1 used), 20 concurrent: {sorted(statuses)}")
    assert sorted(statuses) == [200] * 10 + [429] * 10
    refused = _chat(pair.cb, user)
    assert refused.json()["code"] == "budget_exceeded" and int(refused.headers["Retry-After"]) > 0
