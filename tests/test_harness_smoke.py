"""Smoke test of the harness itself: the relay starts as a subprocess, answers /health,
registers a user; the factory fixture starts and stops independent relays."""

from __future__ import annotations

import signal

import httpx
from conftest import Register, StartRelay
from providers.relay import TEST_ENCRYPTION_SECRET, Relay, User


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
