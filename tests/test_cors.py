"""SPEC §5 CORS over real HTTP: the preflights the official JavaScript SDKs send pass,
ALLOWED_ORIGINS restricts origins, and browsers may read the rate-limit and request-id
headers of relayed answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from providers.mock import MockProviders
from providers.relay import CHAT, Relay, User, register_user, start_relay_process
from providers.relay import relay_env as build_relay_env

APP = "https://app.example.com"
OTHER = "https://evil.example.net"

# What the official JS SDKs ask for in their preflight (openai-node / anthropic-sdk-typescript
# send x-stainless-*, anthropic adds anthropic-*; @google/genai sends x-goog-*).
OPENAI_JS = [
    "authorization",
    "content-type",
    "x-stainless-os",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-arch",
    "x-stainless-retry-count",
    "x-stainless-timeout",
]
ANTHROPIC_JS = [
    *OPENAI_JS[1:],
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
]
GENAI_JS = ["content-type", "x-goog-api-key", "x-goog-api-client"]
RELAY_JS = ["content-type", "x-relay-token", "x-relay-base-url", "x-request-id"]

PREFLIGHTS = {
    "openai": ("/relay/openai/v1/chat/completions", "POST", OPENAI_JS),
    "openai-models": ("/relay/openai/v1/models", "GET", OPENAI_JS),
    "anthropic": ("/relay/anthropic/v1/messages", "POST", ANTHROPIC_JS),
    "genai": (
        "/relay/google/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        "POST",
        GENAI_JS,
    ),
    "unified": ("/relay", "POST", RELAY_JS),
    "keys": ("/keys/openai", "POST", RELAY_JS),
    "delete-key": ("/keys/openai", "DELETE", RELAY_JS),
}
EXPOSED = [
    "retry-after",
    "x-request-id",
    "request-id",
    "x-relay-request-id",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
]


def _csv(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def _preflight(
    relay: Relay, path: str, method: str, headers: list[str], origin: str
) -> httpx.Response:
    with relay.client() as client:
        return client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                # browsers send them lower-cased and comma-separated (no spaces)
                "Access-Control-Request-Headers": ",".join(headers),
            },
        )


def _allows(response: httpx.Response, method: str, headers: list[str]) -> None:
    assert response.status_code in (200, 204), response.text
    allowed = _csv(response.headers.get("access-control-allow-headers"))
    assert "*" in allowed or set(headers) <= allowed, set(headers) - allowed
    methods = _csv(response.headers.get("access-control-allow-methods"))
    assert "*" in methods or method.lower() in methods
    assert int(response.headers.get("access-control-max-age", "0")) > 0


@pytest.mark.parametrize("case", list(PREFLIGHTS))
def test_sdk_preflights_pass_with_default_origins(
    case: str, relay: Relay, mocks: MockProviders
) -> None:
    path, method, headers = PREFLIGHTS[case]
    response = _preflight(relay, path, method, headers, APP)
    assert response.status_code == 204
    _allows(response, method, headers)
    assert response.headers["access-control-allow-origin"] in ("*", APP)
    assert "access-control-allow-credentials" not in response.headers
    assert response.content == b""
    for mock in mocks.all():
        assert mock.requests == []  # a preflight is answered by the relay alone


def test_default_origin_is_any_on_actual_requests(user: User) -> None:
    with user.client() as client:
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"Origin": OTHER}
        )
        no_origin = client.post("/relay/openai/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in no_origin.headers


def test_browser_can_read_rate_limit_and_request_id_headers(user: User) -> None:
    with user.client() as client:
        limited = client.post(
            "/relay/openai/v1/chat/completions",
            json={**CHAT, "model": "mock-429"},
            headers={"Origin": APP},
        )
        streamed = client.post(
            "/relay/anthropic/v1/messages",
            json={"model": "claude-x", "max_tokens": 5, "messages": [], "stream": True},
            headers={"Origin": APP},
        )
    assert limited.status_code == 429
    for response in (limited, streamed):
        exposed = _csv(response.headers.get("access-control-expose-headers"))
        assert set(EXPOSED) <= exposed, set(EXPOSED) - exposed
        assert response.headers["access-control-allow-origin"] in ("*", APP)
    # the exposed headers are actually there to read
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert streamed.headers["anthropic-ratelimit-requests-remaining"]


def test_cors_on_relay_errors(relay: Relay) -> None:
    """A browser must be able to read the relay's own refusals too."""
    with relay.client() as client:
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"Origin": APP}
        )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] in ("*", APP)
    assert isinstance(response.json()["error"], str)


# ----------------------------------------------------------------------- ALLOWED_ORIGINS
@pytest.fixture(scope="module")
def strict_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    directory: Path = tmp_path_factory.mktemp("relay-cors")
    env = build_relay_env(mocks, directory, ALLOWED_ORIGINS=f"{APP}, http://127.0.0.1:5173/")
    server = start_relay_process(env, directory)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def strict_user(strict_relay: Relay) -> User:
    new_user = register_user(strict_relay)
    new_user.store_key("openai")
    return new_user


@pytest.mark.parametrize("origin", [APP, "http://127.0.0.1:5173"])
def test_allowed_origin_is_echoed_with_vary(
    origin: str, strict_relay: Relay, strict_user: User
) -> None:
    path, method, headers = PREFLIGHTS["anthropic"]
    preflight = _preflight(strict_relay, path, method, headers, origin)
    assert preflight.status_code == 204
    _allows(preflight, method, headers)
    assert preflight.headers["access-control-allow-origin"] == origin
    vary = _csv(preflight.headers.get("vary"))
    # the answer depends on both: a shared cache must not mix them up
    assert {"origin", "access-control-request-headers"} <= vary, vary

    with strict_user.client() as client:
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"Origin": origin}
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "origin" in _csv(response.headers.get("vary"))
    assert set(EXPOSED) <= _csv(response.headers.get("access-control-expose-headers"))


@pytest.mark.parametrize(
    "origin",
    [
        OTHER,
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "null",
        "https://APP.example.com.evil",
    ],
)
def test_other_origins_get_no_cors(origin: str, strict_relay: Relay, strict_user: User) -> None:
    path, method, headers = PREFLIGHTS["openai"]
    preflight = _preflight(strict_relay, path, method, headers, origin)
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-headers" not in preflight.headers
    assert isinstance(preflight.json()["error"], str)
    assert "origin" in _csv(preflight.headers.get("vary"))  # cacheable per origin

    with strict_user.client() as client:
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"Origin": origin}
        )
    # not a CORS refusal on the server side (curl works), but a browser cannot read it
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-expose-headers" not in response.headers
    assert "origin" in _csv(response.headers.get("vary"))
