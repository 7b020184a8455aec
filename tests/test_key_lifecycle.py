"""Provider-key lifecycle over real HTTP: verify, rotate (checked with the provider first),
GET /keys metadata and last-used tracking (SPEC §2).

The mocks reject any credential containing ``mock-401`` (401) or ``mock-429`` (429) on
every route, so a "bad" key is simply a key with that marker.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import pytest
from conftest import Register
from providers.mock import MockProviders
from providers.relay import CHAT, Relay, User, http_client

HTTP = http_client()
OLD_KEY = "sk-test-OLDKEY-00001111"
NEW_KEY = "sk-test-NEWKEY-00002222"
REJECTED_KEY = "sk-test-mock-401-REJECTED-3333"


def error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    return body


def relay_chat(user: User) -> httpx.Response:
    return HTTP.post(
        f"{user.relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=user.headers
    )


def rotate(user: User, provider: str, key: str) -> httpx.Response:
    return HTTP.post(
        f"{user.relay.url}/keys/{provider}/rotate", json={"key": key}, headers=user.headers
    )


def verify(user: User, provider: str) -> httpx.Response:
    return HTTP.post(f"{user.relay.url}/keys/{provider}/verify", headers=user.headers)


def keys_of(user: User) -> dict[str, dict[str, Any]]:
    r = HTTP.get(f"{user.relay.url}/keys", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["providers"] == [k["provider"] for k in body["keys"]]
    return {k["provider"]: k for k in body["keys"]}


def probes(mock: Any, path: str) -> list[Any]:
    return [r for r in mock.requests if r.method == "GET" and r.path == path]


@pytest.fixture
def owner(register: Register) -> User:
    user = register()
    user.store_key("openai", OLD_KEY)
    return user


# --- rotate ---------------------------------------------------------------------------


def test_rotate_rejected_key_is_422_and_old_key_keeps_working(
    owner: User, mocks: MockProviders
) -> None:
    before = keys_of(owner)["openai"]
    mocks.openai.clear()
    body = error_body(rotate(owner, "openai", REJECTED_KEY), 422)
    assert body["ok"] is False and body["rotated"] is False and body["status"] == 401
    assert body["provider"] == "openai"
    assert "rejected" in body["error"] and "old key is kept" in body["error"]
    # The provider was asked, with the candidate key, on its cheap verify path.
    (probe,) = probes(mocks.openai, "/v1/models")
    assert probe.headers["authorization"] == f"Bearer {REJECTED_KEY}"
    # The candidate never leaks back in the error.
    assert REJECTED_KEY not in str(body)

    mocks.openai.clear()
    assert relay_chat(owner).status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {OLD_KEY}"
    after = keys_of(owner)["openai"]
    assert after["hint"] == OLD_KEY[-4:] and after["updated_at"] == before["updated_at"]


def test_rotate_accepted_key_replaces_it(owner: User, mocks: MockProviders) -> None:
    before = keys_of(owner)["openai"]
    time.sleep(0.01)  # distinct millisecond timestamps
    mocks.openai.clear()
    r = rotate(owner, "openai", NEW_KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "provider": "openai", "rotated": True}
    (probe,) = probes(mocks.openai, "/v1/models")
    assert probe.headers["authorization"] == f"Bearer {NEW_KEY}"

    mocks.openai.clear()
    assert relay_chat(owner).status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {NEW_KEY}"
    after = keys_of(owner)["openai"]
    assert after["hint"] == NEW_KEY[-4:]
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


def test_rotate_provider_error_is_502_and_old_key_kept(owner: User, mocks: MockProviders) -> None:
    # 429 from the provider: cannot tell whether the key is good -> 502, nothing replaced.
    body = error_body(rotate(owner, "openai", "sk-test-mock-429-CANTTELL"), 502)
    assert body["rotated"] is False and body["status"] == 429
    mocks.openai.clear()
    assert relay_chat(owner).status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {OLD_KEY}"


def test_rotate_without_stored_key(register: Register, mocks: MockProviders) -> None:
    user = register()
    # Rejected: 422 and still no key.
    error_body(rotate(user, "anthropic", REJECTED_KEY), 422)
    assert "anthropic" not in keys_of(user)
    # Accepted: stored (rotated=false: there was nothing to replace, as the reference).
    mocks.anthropic.clear()
    r = rotate(user, "anthropic", "sk-ant-FIRSTKEY-4444")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "provider": "anthropic", "rotated": False}
    (probe,) = probes(mocks.anthropic, "/v1/models")
    assert probe.headers["x-api-key"] == "sk-ant-FIRSTKEY-4444"
    assert keys_of(user)["anthropic"]["hint"] == "4444"
    mocks.anthropic.clear()
    r = HTTP.post(
        f"{user.relay.url}/relay/anthropic/v1/messages",
        json={"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": []},
        headers=user.headers,
    )
    assert r.status_code == 200, r.text
    assert mocks.anthropic.last_request.headers["x-api-key"] == "sk-ant-FIRSTKEY-4444"


def test_rotate_google_probe_sends_key_in_header_not_url(
    register: Register, mocks: MockProviders
) -> None:
    user = register()
    mocks.gemini.clear()
    r = rotate(user, "google", "AIza-test-GOOGLEKEY-5555")
    assert r.status_code == 200, r.text
    (probe,) = probes(mocks.gemini, "/v1beta/models")
    assert probe.headers["x-goog-api-key"] == "AIza-test-GOOGLEKEY-5555"
    assert "GOOGLEKEY" not in probe.raw_query


@pytest.mark.parametrize(
    ("provider", "body", "status"),
    [
        ("openai", {"key": "short"}, 400),
        ("openai", {"key": "sk-test with space-000"}, 400),
        ("openai", {"key": 12345678901}, 400),
        ("openai", {}, 400),
        ("no-such-provider", {"key": NEW_KEY}, 400),
    ],
)
def test_rotate_invalid_input(owner: User, provider: str, body: Any, status: int) -> None:
    r = HTTP.post(f"{owner.relay.url}/keys/{provider}/rotate", json=body, headers=owner.headers)
    error_body(r, status)
    assert keys_of(owner)["openai"]["hint"] == OLD_KEY[-4:]


def test_rotate_and_verify_need_a_token(relay: Relay) -> None:
    error_body(HTTP.post(f"{relay.url}/keys/openai/rotate", json={"key": NEW_KEY}), 401)
    error_body(HTTP.post(f"{relay.url}/keys/openai/verify"), 401)


# --- verify ---------------------------------------------------------------------------


def test_verify_good_and_bad_stored_key(owner: User, mocks: MockProviders) -> None:
    mocks.openai.clear()
    r = verify(owner, "openai")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "status": 200}
    (probe,) = probes(mocks.openai, "/v1/models")
    assert probe.headers["authorization"] == f"Bearer {OLD_KEY}"

    owner.store_key("openai", REJECTED_KEY)  # a plain store is not checked
    r = verify(owner, "openai")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": False, "status": 401}


def test_verify_without_key_or_provider(register: Register) -> None:
    user = register()
    message = error_body(verify(user, "openai"), 400)["error"]
    assert "POST /keys/openai" in message
    body = error_body(verify(user, "nope"), 400)
    assert "openai" in body["error"]  # lists the supported providers


# --- GET /keys metadata ----------------------------------------------------------------


def test_list_keys_metadata_and_last_used(owner: User, relay: Relay) -> None:
    t0 = int(time.time() * 1000)
    owner.store_key("anthropic", "sk-ant-LISTED-9876")
    keys = keys_of(owner)
    assert list(keys) == ["anthropic", "openai"]
    entry = keys["anthropic"]
    assert entry["hint"] == "9876"  # last four characters only
    assert entry["created_at"] == entry["updated_at"]
    assert t0 - 5 <= entry["created_at"] <= int(time.time() * 1000) + 5
    assert entry["last_used_at"] is None
    assert keys["openai"]["last_used_at"] is None
    raw = HTTP.get(f"{relay.url}/keys", headers=owner.headers).text
    assert "LISTED" not in raw and OLD_KEY not in raw  # values never returned

    used_at = int(time.time() * 1000)
    assert relay_chat(owner).status_code == 200
    # Written off the hot path (batched, about once a second).
    deadline = time.monotonic() + 3.0
    while True:
        last = keys_of(owner)["openai"]["last_used_at"]
        if last is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert last is not None, "last_used_at not set within 3 s of a relayed request"
    assert used_at - 5 <= last <= int(time.time() * 1000)
    assert keys_of(owner)["anthropic"]["last_used_at"] is None  # only the used provider
    # The SQLite row agrees.
    assert relay.db_path is not None
    with sqlite3.connect(relay.db_path, timeout=10) as conn:
        rows = conn.execute(
            "SELECT provider, last_used_at FROM api_keys WHERE hint IN ('1111', '9876')"
            " AND last_used_at = ?",
            (last,),
        ).fetchall()
    assert ("openai", last) in rows
