"""The management API and the hot path end to end on a relay backed by the real PostgreSQL.

The whole API suite also runs on PostgreSQL with ``BYOK_TEST_BACKEND=postgres`` (see
tests/backends.py); this module is the always-on PostgreSQL pass: one user's life from
registration to erasure, checked over HTTP and inside the database.
"""

from __future__ import annotations

import time

import pytest
from backends import relay_db_rows
from providers.mock import MockProviders
from providers.relay import CHAT, StartRelay, User, register_user

pytestmark = pytest.mark.postgres

CHAT_PATH = "/relay/openai/v1/chat/completions"


def test_user_lifecycle_on_postgres(
    start_relay: StartRelay, pg_url: str, mocks: MockProviders
) -> None:
    relay = start_relay(DATABASE_URL=pg_url, DB_POOL_SIZE="3")
    user = register_user(relay, "pg-app")
    keys = {"openai": "sk-pg-openai-0123456789", "anthropic": "sk-ant-pg-0123456789"}
    for provider, key in keys.items():
        user.store_key(provider, key)
    with relay.client() as client:
        listed = client.get("/keys", headers=user.headers).json()
        assert sorted(listed["providers"]) == ["anthropic", "openai"]
        assert {k["hint"] for k in listed["keys"]} == {"6789"}

        r = client.post(CHAT_PATH, json=CHAT, headers=user.headers)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == f"Bearer {keys['openai']}"
        streamed = client.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=user.headers)
        assert streamed.status_code == 200 and "data: [DONE]" in streamed.text

        # Request-log rows and last_used_at land in PostgreSQL off the hot path.
        deadline = time.monotonic() + 10
        while True:
            stats = client.get("/stats", headers=user.headers).json()
            if stats["total"] >= 2:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert stats["providers"]["openai"]["total"] == 2
        used = client.get("/keys", headers=user.headers).json()["keys"]
        assert any(k["provider"] == "openai" and k["last_used_at"] for k in used)

        # Only ciphertext and the token's HMAC are in the database.
        rows = relay_db_rows(relay, "SELECT provider, ciphertext FROM api_keys")
        assert len(rows) == 2
        for _provider, blob in rows:
            for key in keys.values():
                assert key.encode() not in bytes(blob)
        hashes = [h for (h,) in relay_db_rows(relay, "SELECT token_hash FROM tokens")]
        assert user.token not in hashes and len(hashes) == 1

        # Rotate: same user and keys, old token dead.
        rotated = client.post("/tokens/rotate", headers=user.headers)
        assert rotated.status_code == 200
        fresh = User(relay=relay, token=rotated.json()["token"], app_id=user.app_id)
        assert client.get("/keys", headers=user.headers).status_code == 401
        assert len(client.get("/keys", headers=fresh.headers).json()["providers"]) == 2

        # Delete one key; then erase the user: nothing of theirs is left.
        deleted = client.delete("/keys/anthropic", headers=fresh.headers)
        assert deleted.json() == {"ok": True, "deleted": True}
        assert client.request("DELETE", "/users", headers=fresh.headers).status_code == 200
        assert client.get("/keys", headers=fresh.headers).status_code == 401
        for table in ("users", "tokens", "api_keys", "request_log"):
            assert relay_db_rows(relay, f"SELECT COUNT(*) FROM {table}") == [(0,)], table


def test_revoke_on_postgres(start_relay: StartRelay, pg_url: str) -> None:
    relay = start_relay(DATABASE_URL=pg_url, DB_POOL_SIZE="3")
    user = register_user(relay)
    with relay.client() as client:
        assert client.post("/tokens/revoke", headers=user.headers).status_code == 200
        r = client.get("/keys", headers=user.headers)
        assert r.status_code == 401 and "revoked" in r.json()["error"]
    (revoked_at,) = relay_db_rows(relay, "SELECT revoked_at FROM tokens")[0]
    assert revoked_at is not None
