"""Relay-token lifecycle over real HTTP: rotate, revoke, expiry (SPEC §2, §5).

Each check runs against the real relay subprocess; expiry is forced by editing the real
SQLite file, the way an operator (or time) would change the row.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest
from conftest import Register
from providers.mock import MockProviders
from providers.relay import CHAT, FAKE_KEY, Relay, User, error_of, http_client

from byok_relay.crypto import TokenHasher

HTTP = http_client()
CACHE_TTL_S = 1.0  # the test relay's default CACHE_TTL_S


def token_hash(relay: Relay, token: str) -> str:
    hmac_secret = relay.env.get("TOKEN_HMAC_SECRET")
    return TokenHasher(relay.env["ENCRYPTION_SECRET"], hmac_secret).hash(token)


def db(relay: Relay) -> sqlite3.Connection:
    assert relay.db_path is not None
    conn = sqlite3.connect(relay.db_path, timeout=10)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def chat(relay: Relay, token: str, header: str = "x-relay-token") -> httpx.Response:
    value = f"Bearer {token}" if header == "authorization" else token
    return HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers={header: value}
    )


def list_keys(relay: Relay, token: str) -> httpx.Response:
    return HTTP.get(f"{relay.url}/keys", headers={"x-relay-token": token})


@pytest.fixture
def owner(register: Register) -> User:
    user = register()
    user.store_key("openai", "sk-test-TOKENLIFE-0001")
    user.store_key("anthropic", "sk-ant-TOKENLIFE-0002")
    return user


# --- rotate -----------------------------------------------------------------------------


def test_rotate_new_token_works_with_same_keys_old_dies_at_once(
    relay: Relay, owner: User, mocks: MockProviders
) -> None:
    # Warm the token cache with the old token: rotation must still kill it at once.
    assert chat(relay, owner.token).status_code == 200
    before = list_keys(relay, owner.token).json()

    r = HTTP.post(f"{relay.url}/tokens/rotate", headers=owner.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    new = body["token"]
    assert new != owner.token and new.startswith("byok_rt_")
    assert isinstance(body["expires_at"], int) and body["expires_at"] > time.time() * 1000

    # Old token: dead immediately (no CACHE_TTL_S grace), on every credential header.
    for header in ("x-relay-token", "authorization", "x-api-key"):
        message = error_of(chat(relay, owner.token, header), 401)
        assert "revoked or replaced" in message and "newer token" in message, message
    message = error_of(list_keys(relay, owner.token), 401)
    assert "POST /users" in message, message  # says what to do

    # New token: same user, same keys, the same provider key reaches the provider.
    assert list_keys(relay, new).json() == before
    mocks.openai.clear()
    assert chat(relay, new).status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == "Bearer sk-test-TOKENLIFE-0001"

    # A replaced token cannot rotate again (no second live successor).
    error_of(HTTP.post(f"{relay.url}/tokens/rotate", headers=owner.headers), 401)
    assert chat(relay, new).status_code == 200


def test_rotation_chain_only_latest_token_lives(relay: Relay, owner: User) -> None:
    tokens = [owner.token]
    for _ in range(3):
        r = HTTP.post(f"{relay.url}/tokens/rotate", headers={"x-relay-token": tokens[-1]})
        assert r.status_code == 200, r.text
        tokens.append(r.json()["token"])
    assert len(set(tokens)) == 4
    for dead in tokens[:-1]:
        error_of(list_keys(relay, dead), 401)
    assert list_keys(relay, tokens[-1]).status_code == 200


def test_concurrent_rotations_yield_exactly_one_successor(relay: Relay, owner: User) -> None:
    results: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def rotate() -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            barrier.wait()
            response = client.post(f"{relay.url}/tokens/rotate", headers=owner.headers)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=rotate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [401] * 5, [(r.status_code, r.text) for r in results]
    winner = next(r for r in results if r.status_code == 200).json()["token"]
    assert list_keys(relay, winner).status_code == 200
    error_of(list_keys(relay, owner.token), 401)
    # Exactly one live token for the user in the database.
    with db(relay) as conn:
        (user_id,) = conn.execute(
            "SELECT user_id FROM tokens WHERE token_hash = ?", (token_hash(relay, winner),)
        ).fetchone()
        live = conn.execute(
            "SELECT COUNT(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL", (user_id,)
        ).fetchone()[0]
    assert live == 1


# --- revoke -------------------------------------------------------------------------------


def test_revoke_kills_token_at_once(relay: Relay, owner: User, mocks: MockProviders) -> None:
    assert chat(relay, owner.token).status_code == 200  # cached now
    r = HTTP.post(f"{relay.url}/tokens/revoke", headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    mocks.openai.clear()
    for header in ("x-relay-token", "authorization"):
        message = error_of(chat(relay, owner.token, header), 401)
        assert "revoked" in message and "POST /users" in message, message
    assert mocks.openai.requests == []  # nothing reached the provider
    error_of(list_keys(relay, owner.token), 401)
    error_of(HTTP.post(f"{relay.url}/tokens/rotate", headers=owner.headers), 401)
    error_of(HTTP.post(f"{relay.url}/tokens/revoke", headers=owner.headers), 401)
    # The row is kept (revoked, not deleted): a revoked token is told apart from garbage.
    with db(relay) as conn:
        row = conn.execute(
            "SELECT revoked_at FROM tokens WHERE token_hash = ?", (token_hash(relay, owner.token),)
        ).fetchone()
    assert row is not None and row[0] is not None


def test_revoking_one_user_leaves_others_alone(relay: Relay, register: Register) -> None:
    a, b = register(), register()
    for u in (a, b):
        u.store_key("openai", FAKE_KEY)
    assert HTTP.post(f"{relay.url}/tokens/revoke", headers=a.headers).status_code == 200
    error_of(chat(relay, a.token), 401)
    assert chat(relay, b.token).status_code == 200


# --- expiry ---------------------------------------------------------------------------------


def test_expired_token_is_refused_after_cache_ttl(relay: Relay, owner: User) -> None:
    assert chat(relay, owner.token).status_code == 200
    with db(relay) as conn:
        n = conn.execute(
            "UPDATE tokens SET expires_at = ? WHERE token_hash = ?",
            (int(time.time() * 1000) - 1000, token_hash(relay, owner.token)),
        ).rowcount
    assert n == 1
    time.sleep(CACHE_TTL_S + 0.3)  # the relay re-reads the row after CACHE_TTL_S
    for response in (chat(relay, owner.token), list_keys(relay, owner.token)):
        message = error_of(response, 401)
        assert "expired" in message and "POST /users" in message, message
    error_of(HTTP.post(f"{relay.url}/tokens/rotate", headers=owner.headers), 401)


def test_expiry_in_the_future_still_works(relay: Relay, owner: User) -> None:
    with db(relay) as conn:
        conn.execute(
            "UPDATE tokens SET expires_at = ? WHERE token_hash = ?",
            (int(time.time() * 1000) + 60_000, token_hash(relay, owner.token)),
        )
    time.sleep(CACHE_TTL_S + 0.3)
    assert chat(relay, owner.token).status_code == 200
    # A rotated token gets a fresh TOKEN_EXPIRY_DAYS (default 90) lifetime.
    r = HTTP.post(f"{relay.url}/tokens/rotate", headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["expires_at"] > time.time() * 1000 + 89 * 86_400_000
