"""Stored provider keys over real HTTP: store, list (hint only), replace, delete,
last_used_at written off the hot path, and isolation between users."""

from __future__ import annotations

import time
from typing import Any

from conftest import Register
from providers.mock import MockProviders
from providers.relay import CHAT, Relay, error_of, http_client

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

CHAT_PATH = "/relay/openai/v1/chat/completions"


def keys_of(relay: Relay, headers: dict[str, str]) -> dict[str, Any]:
    r = HTTP.get(f"{relay.url}/keys", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def entry(listing: dict[str, Any], provider: str) -> dict[str, Any]:
    found = [k for k in listing["keys"] if k["provider"] == provider]
    assert len(found) == 1, listing
    return found[0]


def store(relay: Relay, headers: dict[str, str], provider: str, body: dict[str, Any]) -> Any:
    return HTTP.post(f"{relay.url}/keys/{provider}", json=body, headers=headers, timeout=10)


def test_store_and_list(relay: Relay, register: Register) -> None:
    user = register()
    assert keys_of(relay, user.headers) == {"providers": [], "keys": []}
    key = "sk-list-test-abcdefWXYZ"
    before = int(time.time() * 1000)
    r = store(relay, user.headers, "openai", {"key": key})
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "provider": "openai"}
    after = int(time.time() * 1000)
    r = store(relay, user.headers, "anthropic", {"key": "sk-ant-list-test-1234"})
    assert r.status_code == 200, r.text

    raw = HTTP.get(f"{relay.url}/keys", headers=user.headers).text
    listing = keys_of(relay, user.headers)
    assert sorted(listing["providers"]) == ["anthropic", "openai"]
    assert len(listing["keys"]) == 2
    e = entry(listing, "openai")
    assert e["hint"] == "WXYZ"
    assert entry(listing, "anthropic")["hint"] == "1234"
    assert before <= e["created_at"] <= after
    assert e["updated_at"] == e["created_at"]
    assert e["last_used_at"] is None
    assert {"provider", "hint", "created_at", "updated_at", "last_used_at"} <= set(e)
    # the value itself never comes back, not even most of it
    assert key not in raw and key[:-4] not in raw and key[4:] not in raw


def test_last_used_at_set_after_relay_request(
    relay: Relay, register: Register, mocks: MockProviders
) -> None:
    user = register()
    user.store_key("openai", "sk-last-used-test-0001")
    user.store_key("anthropic", "sk-ant-last-used-0002")
    assert entry(keys_of(relay, user.headers), "openai")["last_used_at"] is None
    sent = int(time.time() * 1000)
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=user.headers)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 2.5
    while True:
        e = entry(keys_of(relay, user.headers), "openai")
        if e["last_used_at"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert e["last_used_at"] is not None, "last_used_at not written within 2.5 s"
    assert sent - 1000 <= e["last_used_at"] <= int(time.time() * 1000)
    # only the key that was used
    assert entry(keys_of(relay, user.headers), "anthropic")["last_used_at"] is None


def test_replace_key(relay: Relay, register: Register, mocks: MockProviders) -> None:
    user = register()
    user.store_key("openai", "sk-replace-first-AAAA")
    first = entry(keys_of(relay, user.headers), "openai")
    time.sleep(0.02)
    r = store(relay, user.headers, "openai", {"key": "sk-replace-second-BBBB"})
    assert r.status_code == 200, r.text
    listing = keys_of(relay, user.headers)
    assert listing["providers"] == ["openai"]
    second = entry(listing, "openai")
    assert second["hint"] == "BBBB"
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    # the relay uses the new key at once (no stale cache on this process)
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=user.headers)
    assert r.status_code == 200, r.text
    assert mocks.openai.last_request.headers["authorization"] == "Bearer sk-replace-second-BBBB"


def test_delete_key(relay: Relay, register: Register, mocks: MockProviders) -> None:
    user = register()
    user.store_key("openai", "sk-delete-key-test-0003")
    user.store_key("anthropic", "sk-ant-delete-key-0004")
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=user.headers)
    assert r.status_code == 200, r.text  # the key is now cached in the relay
    r = HTTP.delete(f"{relay.url}/keys/openai", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "deleted": True}
    r = HTTP.delete(f"{relay.url}/keys/openai", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "deleted": False}
    assert keys_of(relay, user.headers)["providers"] == ["anthropic"]
    mocks.openai.clear()
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=user.headers)
    assert "POST /keys/openai first" in error_of(r, 400)
    unified = HTTP.post(
        f"{relay.url}/relay", json={**CHAT, "model": "openai/gpt-4o-mini"}, headers=user.headers
    )
    assert "POST /keys/openai first" in error_of(unified, 400)
    assert mocks.openai.requests == [], "nothing may reach the provider without a key"


def test_never_stored_key(relay: Relay, register: Register) -> None:
    user = register()
    r = HTTP.post(f"{relay.url}/relay/anthropic/v1/messages", json=CHAT, headers=user.headers)
    assert "POST /keys/anthropic first" in error_of(r, 400)
    r = HTTP.delete(f"{relay.url}/keys/anthropic", headers=user.headers)
    assert r.json() == {"ok": True, "deleted": False}


def test_unknown_provider_on_delete(relay: Relay, register: Register) -> None:
    user = register()
    r = HTTP.delete(f"{relay.url}/keys/not-a-provider", headers=user.headers)
    message = error_of(r, 400)
    assert "not-a-provider" in message and "openai" in message and "anthropic" in message


def test_users_are_isolated(relay: Relay, register: Register, mocks: MockProviders) -> None:
    a, b = register(), register()
    a.store_key("openai", "sk-user-a-key-AAAA")
    b.store_key("openai", "sk-user-b-key-BBBB")
    b.store_key("anthropic", "sk-ant-user-b-CCCC")
    la, lb = keys_of(relay, a.headers), keys_of(relay, b.headers)
    assert la["providers"] == ["openai"] and entry(la, "openai")["hint"] == "AAAA"
    assert lb["providers"] == ["anthropic", "openai"]
    assert entry(lb, "openai")["hint"] == "BBBB"
    # A relays with A's key; B's anthropic key is not A's to use
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=a.headers)
    assert r.status_code == 200, r.text
    assert mocks.openai.last_request.headers["authorization"] == "Bearer sk-user-a-key-AAAA"
    r = HTTP.post(f"{relay.url}/relay/anthropic/v1/messages", json=CHAT, headers=a.headers)
    assert "POST /keys/anthropic first" in error_of(r, 400)
    # A deleting "its" anthropic key does not touch B's
    r = HTTP.delete(f"{relay.url}/keys/anthropic", headers=a.headers)
    assert r.json() == {"ok": True, "deleted": False}
    assert keys_of(relay, b.headers) == lb
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", json=CHAT, headers=b.headers)
    assert r.status_code == 200, r.text
    assert mocks.openai.last_request.headers["authorization"] == "Bearer sk-user-b-key-BBBB"


def test_openai_compatible_base_url_listed(relay: Relay, register: Register) -> None:
    user = register()
    r = store(
        relay,
        user.headers,
        "openai-compatible",
        {"key": "sk-compat-test-0005", "base_url": "https://1.1.1.1/v1"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "provider": "openai-compatible"}
    e = entry(keys_of(relay, user.headers), "openai-compatible")
    assert e["hint"] == "0005"
    assert e.get("base_url", "https://1.1.1.1/v1") == "https://1.1.1.1/v1"
