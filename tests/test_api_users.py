"""Users and relay tokens over real HTTP: register, APP_SECRET, registration limit,
missing/garbage/revoked/rotated/expired tokens, credential precedence, DELETE /users.

Everything runs against the real relay subprocess and its real SQLite file.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from backends import relay_db_rows
from conftest import Register, StartRelay
from providers.mock import MockProviders
from providers.relay import CHAT, TEST_ENCRYPTION_SECRET, Relay, User, error_of, http_client

from byok_relay.crypto import TokenHasher

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

DAY_MS = 86_400_000
TOKEN_RE = re.compile(r"byok_rt_[A-Za-z0-9_-]{43,}")


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class _Db:
    """The relay's database, SQLite or PostgreSQL alike (BYOK_TEST_BACKEND=postgres)."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def __enter__(self) -> _Db:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> _Rows:
        return _Rows(relay_db_rows(self._relay, sql, *params))


def db(relay: Relay) -> _Db:
    return _Db(relay)


def user_id_of(relay: Relay, token: str) -> str:
    """The user behind a token, read from the SQLite file (only the HMAC is stored)."""
    token_hash = TokenHasher(TEST_ENCRYPTION_SECRET).hash(token)
    with db(relay) as conn:
        row = conn.execute("SELECT user_id FROM tokens WHERE token_hash = ?", (token_hash,))
        found = row.fetchone()
    assert found is not None, "the token's HMAC is not in the tokens table"
    return str(found[0])


def get_keys(relay: Relay, headers: dict[str, str]) -> httpx.Response:
    return HTTP.get(f"{relay.url}/keys", headers=headers, timeout=10)


# --- POST /users ----------------------------------------------------------------------


def test_register_returns_token_and_expiry(relay: Relay, http: httpx.Client) -> None:
    before = int(time.time() * 1000)
    tokens = set()
    for _ in range(3):
        r = http.post(f"{relay.url}/users", json={"app_id": "users-test"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert set(body) == {"token", "expires_at"}, body
        token = body["token"]
        # recognisable prefix + base64url of >= 32 random bytes (43 chars unpadded)
        assert TOKEN_RE.fullmatch(token), token
        assert len(token) - len("byok_rt_") >= 43
        expires_at = body["expires_at"]
        assert isinstance(expires_at, int)
        after = int(time.time() * 1000)
        assert before + 90 * DAY_MS <= expires_at <= after + 90 * DAY_MS, expires_at
        tokens.add(token)
    assert len(tokens) == 3, "tokens must be fresh for every registration"


def test_register_token_is_usable(relay: Relay, http: httpx.Client) -> None:
    token = http.post(f"{relay.url}/users", json={"app_id": "users-test"}).json()["token"]
    r = http.get(f"{relay.url}/keys", headers={"x-relay-token": token})
    assert r.status_code == 200, r.text
    assert r.json() == {"providers": [], "keys": []}


def test_token_expiry_zero_means_never(start_relay: StartRelay) -> None:
    server = start_relay(TOKEN_EXPIRY_DAYS="0")
    r = HTTP.post(f"{server.url}/users", json={"app_id": "never"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] is None
    token = r.json()["token"]
    with db(server) as conn:
        row = conn.execute(
            "SELECT expires_at FROM tokens WHERE token_hash = ?",
            (TokenHasher(TEST_ENCRYPTION_SECRET).hash(token),),
        ).fetchone()
    assert row == (None,)
    assert get_keys(server, {"x-relay-token": token}).status_code == 200
    # rotation keeps "never"
    rotated = HTTP.post(f"{server.url}/tokens/rotate", headers={"x-relay-token": token})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["expires_at"] is None


def test_app_secret_guards_registration(start_relay: StartRelay) -> None:
    secret = "app-secret-for-tests-0123456789"
    server = start_relay(APP_SECRET=secret)
    url = f"{server.url}/users"
    body = {"app_id": "guarded"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": f"Bearer {secret}x"},
        {"Authorization": f"Bearer {secret[:-1]}"},
        {"Authorization": f"Basic {secret}"},
        {"Authorization": secret},
        {"x-relay-token": secret},
    ):
        message = error_of(HTTP.post(url, json=body, headers=headers, timeout=10), 401)
        assert secret not in message
    ok = HTTP.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert ok.status_code == 200, ok.text
    # the auth scheme is case-insensitive, as for relay tokens
    lower = HTTP.post(url, json=body, headers={"Authorization": f"bearer {secret}"}, timeout=10)
    assert lower.status_code == 200, lower.text
    assert TOKEN_RE.fullmatch(ok.json()["token"])
    # the other routes do not need the app secret
    assert get_keys(server, {"x-relay-token": ok.json()["token"]}).status_code == 200
    # and no user was created by the refused attempts
    with db(server) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (2,)


def test_registration_rate_limit(start_relay: StartRelay) -> None:
    server = start_relay(RATE_LIMIT_REGISTER="2/hour")
    url = f"{server.url}/users"
    for _ in range(2):
        r = HTTP.post(url, json={"app_id": "limited"}, timeout=10)
        assert r.status_code == 200, r.text
    third = HTTP.post(url, json={"app_id": "limited"}, timeout=10)
    message = error_of(third, 429)
    # the refusal says which limit it is and which setting changes it
    assert "Too many registrations from this address (2 per hour)" in message
    assert "RATE_LIMIT_REGISTER" in message
    h = third.headers
    retry_after = int(h["Retry-After"])
    assert 0 < retry_after <= 3600
    assert h["RateLimit-Limit"] == "2"
    assert h["RateLimit-Remaining"] == "0"
    assert 0 < int(h["RateLimit-Reset"]) <= 3600
    # refused registrations create no user; other routes are not affected by this limit
    with db(server) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (2,)
    assert HTTP.get(f"{server.url}/version", timeout=10).status_code == 200


def test_loopback_relay_does_not_lock_its_developer_out(start_relay: StartRelay) -> None:
    """Trying the relay locally (walk-through, demo clicks, client.js) registers more
    than the production default of 10 an hour: unset on loopback, the limit is relaxed."""
    server = start_relay(RATE_LIMIT_REGISTER=None)
    for i in range(12):
        r = HTTP.post(f"{server.url}/users", json={"app_id": "trying-it"}, timeout=10)
        assert r.status_code == 200, (i, r.text)
    assert (
        "RATE_LIMIT_REGISTER is unset and the relay listens on loopback only" in server.log_text()
    )


def test_register_limit_default_outside_loopback() -> None:
    from byok_relay.config import LOOPBACK_REGISTER_LIMIT, Settings

    secret = {"ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET}
    assert Settings(HOST="0.0.0.0", **secret).register_limit == "10/hour"  # type: ignore[arg-type]
    assert Settings(HOST="::1", **secret).register_limit == LOOPBACK_REGISTER_LIMIT  # type: ignore[arg-type]
    assert Settings(HOST="localhost", **secret).register_limit == LOOPBACK_REGISTER_LIMIT  # type: ignore[arg-type]
    # set explicitly, it is what it says, on loopback too
    explicit = Settings(HOST="127.0.0.1", RATE_LIMIT_REGISTER="3/hour", **secret)  # type: ignore[arg-type]
    assert explicit.register_limit == "3/hour"


# --- tokens -----------------------------------------------------------------------------


def test_missing_token_is_401_naming_the_header(relay: Relay) -> None:
    for method, path in (
        ("GET", "/keys"),
        ("POST", "/keys/openai"),
        ("DELETE", "/keys/openai"),
        ("POST", "/tokens/revoke"),
        ("POST", "/tokens/rotate"),
        ("DELETE", "/users"),
    ):
        r = HTTP.request(method, f"{relay.url}{path}", json={"key": "sk-abcdefghijk"})
        assert "x-relay-token" in error_of(r, 401), (method, path)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-relay-token": "garbage"},
        {"x-relay-token": "byok_rt_" + "A" * 43},  # right shape, unknown
        {"x-relay-token": "byok_rt_" + "A" * 500},
        {"Authorization": "Bearer byok_rt_" + "B" * 43},
        {"x-api-key": "sk-not-a-relay-token"},
        {"x-goog-api-key": "AIza-not-a-relay-token"},
        {"Authorization": "Bearer"},
    ],
)
def test_unknown_token_is_401(relay: Relay, headers: dict[str, str]) -> None:
    error_of(get_keys(relay, headers), 401)


def test_revoked_token(relay: Relay, register: Register) -> None:
    user = register()
    user.store_key("openai", "sk-revoke-test-0001")
    assert get_keys(relay, user.headers).status_code == 200  # cached now
    r = HTTP.post(f"{relay.url}/tokens/revoke", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    # dead at once (no cache grace on this process), on every route
    assert "revoked" in error_of(get_keys(relay, user.headers), 401).lower()
    relay_r = HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=user.headers
    )
    assert "revoked" in error_of(relay_r, 401).lower()
    again = HTTP.post(f"{relay.url}/tokens/revoke", headers=user.headers)
    error_of(again, 401)
    error_of(HTTP.post(f"{relay.url}/tokens/rotate", headers=user.headers), 401)


def test_rotate_token_keeps_keys(relay: Relay, register: Register, mocks: MockProviders) -> None:
    user = register()
    key = "sk-rotate-token-test-0002"
    user.store_key("openai", key)
    user.store_key("anthropic", "sk-ant-rotate-token-0003")
    before = get_keys(relay, user.headers).json()
    r = HTTP.post(f"{relay.url}/tokens/rotate", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "expires_at"}
    new = body["token"]
    assert TOKEN_RE.fullmatch(new) and new != user.token
    assert abs(body["expires_at"] - (int(time.time() * 1000) + 90 * DAY_MS)) < 60_000
    new_headers = {"x-relay-token": new}
    after = get_keys(relay, new_headers)
    assert after.status_code == 200, after.text
    assert after.json() == before
    assert after.json()["providers"] == ["anthropic", "openai"]
    assert "revoked" in error_of(get_keys(relay, user.headers), 401).lower()
    # the new token relays with the same stored key
    relayed = HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=new_headers
    )
    assert relayed.status_code == 200, relayed.text
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {key}"
    # both tokens belong to one user row
    assert user_id_of(relay, new) == user_id_of(relay, user.token)


def test_expired_token(relay: Relay, register: Register) -> None:
    user = register()
    assert get_keys(relay, user.headers).status_code == 200
    token_hash = TokenHasher(TEST_ENCRYPTION_SECRET).hash(user.token)
    past = int(time.time() * 1000) - 1000
    with db(relay) as conn:
        rows = conn.execute(
            "UPDATE tokens SET expires_at = ? WHERE token_hash = ? RETURNING token_hash",
            (past, token_hash),
        ).fetchall()
    assert len(rows) == 1
    time.sleep(float(relay.env.get("CACHE_TTL_S", "1")) + 0.3)
    assert "expired" in error_of(get_keys(relay, user.headers), 401).lower()
    relayed = HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=user.headers
    )
    assert "expired" in error_of(relayed, 401).lower()


def test_credential_precedence_on_management_routes(relay: Relay, register: Register) -> None:
    users = [register() for _ in range(4)]
    providers = ["openai", "anthropic", "google", "groq"]
    for u, p in zip(users, providers, strict=True):
        u.store_key(p, f"sk-precedence-{p}-0004")
    a, b, c, d = (u.token for u in users)

    def owner(headers: dict[str, str]) -> Any:
        r = get_keys(relay, headers)
        assert r.status_code == 200, (headers.keys(), r.text)
        return r.json()["providers"]

    both = {"x-relay-token": a, "Authorization": f"Bearer {b}", "x-api-key": c}
    assert owner({**both, "x-goog-api-key": d}) == ["openai"]
    assert owner({"Authorization": f"Bearer {b}", "x-api-key": c, "x-goog-api-key": d}) == [
        "anthropic"
    ]
    assert owner({"x-api-key": c, "x-goog-api-key": d}) == ["google"]
    assert owner({"x-goog-api-key": d}) == ["groq"]
    assert owner({"Authorization": f"Bearer {b}"}) == ["anthropic"]
    assert owner({"x-api-key": c}) == ["google"]
    # the winner is the one used even when it is bad: no fall-through to a good one
    error_of(get_keys(relay, {"x-relay-token": "garbage", "Authorization": f"Bearer {b}"}), 401)
    error_of(get_keys(relay, {"Authorization": "Bearer garbage", "x-api-key": c}), 401)
    error_of(get_keys(relay, {"x-api-key": "garbage", "x-goog-api-key": d}), 401)
    # writes act on the winner too
    r = HTTP.delete(
        f"{relay.url}/keys/openai", headers={"x-relay-token": a, "Authorization": f"Bearer {b}"}
    )
    assert r.json() == {"ok": True, "deleted": True}
    assert owner({"x-relay-token": a}) == []


# --- DELETE /users ------------------------------------------------------------------------


def test_delete_user_erases_everything(
    relay: Relay, register: Register, mocks: MockProviders
) -> None:
    user = register()
    other = register()
    for u in (user, other):
        u.store_key("openai", "sk-delete-user-test-0005")
        u.store_key("anthropic", "sk-ant-delete-user-0006")
        r = HTTP.post(f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=u.headers)
        assert r.status_code == 200, r.text
    uid, other_uid = user_id_of(relay, user.token), user_id_of(relay, other.token)
    rotated = HTTP.post(f"{relay.url}/tokens/rotate", headers=user.headers).json()["token"]
    headers = {"x-relay-token": rotated}

    def counts(user_id: str) -> tuple[int, ...]:
        with db(relay) as conn:
            return tuple(
                conn.execute(
                    f"SELECT count(*) FROM {table} WHERE {col} = ?", (user_id,)
                ).fetchone()[0]
                for table, col in (
                    ("users", "id"),
                    ("tokens", "user_id"),
                    ("api_keys", "user_id"),
                    ("request_log", "user_id"),
                )
            )

    deadline = time.monotonic() + 5
    while counts(uid)[3] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counts(uid) == (1, 2, 2, 1), "request log row not written within 5 s"
    # one more request whose log row is still pending in memory when the user is deleted
    HTTP.post(f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=headers)

    r = HTTP.delete(f"{relay.url}/users", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    error_of(get_keys(relay, headers), 401)
    relayed = HTTP.post(f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
    error_of(relayed, 401)
    error_of(HTTP.delete(f"{relay.url}/users", headers=headers), 401)
    assert counts(uid) == (0, 0, 0, 0)
    time.sleep(1.5)  # past the background flush: nothing of the user comes back
    assert counts(uid) == (0, 0, 0, 0)
    # the other user is untouched
    assert counts(other_uid)[:3] == (1, 1, 2)
    assert get_keys(relay, other.headers).json()["providers"] == ["anthropic", "openai"]


def test_user_fixture_helper(user: User, relay: Relay) -> None:
    """The `user` fixture's keys are visible through GET /keys (harness sanity)."""
    assert get_keys(relay, user.headers).json()["providers"] == ["anthropic", "google", "openai"]


def test_delete_user_during_a_stream_leaves_no_log_rows(relay: Relay, register: Register) -> None:
    user = register()
    user.store_key("openai", "sk-delete-during-stream-0007")
    uid = user_id_of(relay, user.token)
    body = {**CHAT, "model": "mock-slow", "stream": True}
    url = f"{relay.url}/relay/openai/v1/chat/completions"
    with HTTP.stream("POST", url, json=body, headers=user.headers) as streaming:
        assert streaming.status_code == 200
        chunks = streaming.iter_bytes()
        next(chunks)  # the stream is under way
        r = HTTP.request("DELETE", f"{relay.url}/users", headers=user.headers)
        assert r.status_code == 200, r.text
        for _ in chunks:
            pass
    time.sleep(1.5)  # past the background flush
    with db(relay) as conn:
        rows = conn.execute("SELECT count(*) FROM request_log WHERE user_id = ?", (uid,))
        assert rows.fetchone() == (0,)
