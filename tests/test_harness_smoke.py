"""Smoke test of the harness itself: the relay starts as a subprocess, answers /health,
registers a user; the factory fixture starts and stops independent relays; every built-in
provider's base URL override reaches its mock."""

from __future__ import annotations

import signal

import httpx
import pytest
from providers.mock import AUDIO_BYTES, REPLY_TEXT, MockProviders
from providers.relay import (
    FAKE_KEY,
    PROVIDER_MOCKS,
    TEST_ENCRYPTION_SECRET,
    Register,
    Relay,
    StartRelay,
    User,
)


def test_default_relay_health_and_register(relay: Relay, http: httpx.Client) -> None:
    health = http.get(f"{relay.url}/health")
    assert health.status_code == 200

    response = http.post(f"{relay.url}/users", json={"app_id": "smoke-app"})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert isinstance(token, str) and len(token) >= 40


def test_user_fixture_has_keys(user: User, http: httpx.Client) -> None:
    listed = http.get(f"{user.relay.url}/keys", headers=user.headers)
    assert listed.status_code == 200, listed.text
    assert {"openai", "anthropic", "google"} <= set(listed.json()["providers"])


@pytest.mark.sqlite_only
def test_start_relay_factory(start_relay: StartRelay, register: Register) -> None:
    relay = start_relay(LOG_LEVEL="debug")
    assert relay.alive
    assert relay.env["ENCRYPTION_SECRET"] == TEST_ENCRYPTION_SECRET
    assert relay.env["DATABASE_URL"].startswith("sqlite:////")
    assert relay.env["LOG_LEVEL"] == "debug"
    assert register(relay, app_id="factory-app").token
    assert relay.db_path is not None and relay.db_path.exists()
    assert relay.stop(signal.SIGTERM, timeout=15) == 0
    assert not relay.alive
    assert relay.log_text()  # something was logged


# A path each provider allow-lists and its mock answers.
_PROVIDER_PATHS = {
    "openai": "/v1/chat/completions",
    "groq": "/openai/v1/chat/completions",
    "openrouter": "/api/v1/chat/completions",
    "mistral": "/v1/chat/completions",
    "deepseek": "/chat/completions",
    "xai": "/v1/chat/completions",
    "together": "/v1/chat/completions",
    "fireworks": "/inference/v1/chat/completions",
    "perplexity": "/chat/completions",
    "cohere": "/v2/chat",
    "cerebras": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "google": "/v1beta/models/gemini-2.0-flash:generateContent",
    "elevenlabs": "/v1/text-to-speech/voice-1",
    "deepgram": "/v1/listen",
    "huggingface": "/v1/chat/completions",
}


@pytest.mark.parametrize("provider", sorted(PROVIDER_MOCKS))
def test_every_provider_reaches_its_mock(
    provider: str, register: Register, mocks: MockProviders, http: httpx.Client
) -> None:
    user = register()
    user.store_key(provider)
    path = _PROVIDER_PATHS[provider]
    response = http.post(
        f"{user.relay.url}/relay/{provider}{path}",
        headers=user.headers,
        json={"model": "some-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    if provider == "elevenlabs":
        assert response.content == AUDIO_BYTES
    elif PROVIDER_MOCKS[provider] != "generic":
        assert REPLY_TEXT in response.text

    mock = mocks.by_flavor(PROVIDER_MOCKS[provider])
    upstream = mock.last_request
    assert upstream.path == path
    # the stored (fake) key reached the mock in some header, the relay token did not
    sent = " ".join(upstream.headers.values())
    assert FAKE_KEY in sent
    assert user.token not in sent
