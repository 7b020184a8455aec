"""SPEC §2/§3 headers over real HTTP: what the provider receives (the stored key, never the
relay token or a client credential), what comes back (provider status, error bodies,
rate-limit and request-id headers; never set-cookie), relay request ids, security
headers, the four credential headers and their precedence, redirects not followed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from providers.mock import MOCK_COOKIE, REDIRECT_LOCATION, MockProvider, MockProviders
from providers.relay import CHAT, CLAUDE, FAKE_KEY, GEMINI, Relay, User, register_user

CLIENT_SECRET = "client-secret-must-not-travel-0123456789"
SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

# provider -> (mock flavor, path, body, credential header, expected value for key K)
AUTH_CASES: dict[str, tuple[str, str, dict[str, Any] | None, str, str]] = {
    "openai": ("openai", "/v1/chat/completions", CHAT, "authorization", "Bearer {k}"),
    "anthropic": ("anthropic", "/v1/messages", CLAUDE, "x-api-key", "{k}"),
    "google": (
        "gemini",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        GEMINI,
        "x-goog-api-key",
        "{k}",
    ),
    "deepgram": ("generic", "/v1/listen", None, "authorization", "Token {k}"),
    "elevenlabs": ("generic", "/v1/text-to-speech/voice1", {"text": "hi"}, "xi-api-key", "{k}"),
    "groq": ("openai", "/openai/v1/chat/completions", CHAT, "authorization", "Bearer {k}"),
}
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "xi-api-key")


@pytest.fixture
def client(shared_user: User) -> Iterator[httpx.Client]:
    with shared_user.client() as c:
        yield c


def _assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, f"{name} missing on {response.status_code}"
    assert "set-cookie" not in response.headers
    assert response.headers.get("x-relay-request-id")


def _no_secret_anywhere(request: Any, *secrets: str) -> None:
    """Nothing the client sent as a credential reached the provider."""
    for name, value in request.headers.items():
        for secret in secrets:
            assert secret not in value, f"{secret[:12]}… forwarded in {name}"
    for secret in secrets:
        assert secret not in request.raw_query
        assert secret.encode() not in request.body


# ------------------------------------------------------------------ what the mock receives
@pytest.mark.parametrize("provider", list(AUTH_CASES))
def test_provider_gets_stored_key_and_no_client_credential(
    provider: str, relay: Relay, register: Any, mocks: MockProviders
) -> None:
    flavor, path, body, header, template = AUTH_CASES[provider]
    stored = f"sk-{provider}-STORED-0123456789"
    user: User = register(relay)
    user.store_key(provider, stored)
    headers = {
        "x-relay-token": user.token,
        "authorization": f"Bearer {CLIENT_SECRET}",
        "x-api-key": CLIENT_SECRET,
        "x-goog-api-key": CLIENT_SECRET,
        "xi-api-key": CLIENT_SECRET,
        "cookie": f"session={CLIENT_SECRET}",
        "origin": "https://app.example",
        "referer": "https://app.example/page",
        "x-forwarded-for": "203.0.113.9",
        "proxy-authorization": f"Basic {CLIENT_SECRET}",
    }
    kwargs: dict[str, Any] = {"json": body} if body is not None else {"content": b"\x00audio"}
    with relay.client() as client:
        response = client.post(
            f"/relay/{provider}{path}?key={CLIENT_SECRET}&api_key={CLIENT_SECRET}",
            headers=headers,
            **kwargs,
        )
    assert response.status_code == 200, response.text
    mock: MockProvider = getattr(mocks, flavor)
    request = mock.last_request
    assert request.path == path
    assert request.headers[header] == template.format(k=stored)
    for other in CREDENTIAL_HEADERS:
        if other != header:
            assert other not in request.headers, f"client {other} forwarded"
    for name in ("cookie", "origin", "referer", "x-relay-token", "x-forwarded-for"):
        assert name not in request.headers, f"client {name} forwarded"
    assert "proxy-authorization" not in request.headers
    assert "key" not in request.query and "api_key" not in request.query
    _no_secret_anywhere(request, user.token, CLIENT_SECRET)


@pytest.mark.parametrize("credential", ["x-relay-token", "authorization", "x-api-key", "goog"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_relay_token_never_reaches_provider(
    provider: str, credential: str, shared_user: User, mocks: MockProviders
) -> None:
    """Whichever header carries the token, the provider sees only the stored key."""
    flavor, path, body, header, template = AUTH_CASES[provider]
    headers = {
        "x-relay-token": {"x-relay-token": shared_user.token},
        "authorization": {"authorization": f"Bearer {shared_user.token}"},
        "x-api-key": {"x-api-key": shared_user.token},
        "goog": {"x-goog-api-key": shared_user.token},
    }[credential]
    with shared_user.relay.client() as client:
        response = client.post(f"/relay/{provider}{path}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    request = getattr(mocks, flavor).last_request
    assert request.headers[header] == template.format(k=FAKE_KEY)
    _no_secret_anywhere(request, shared_user.token)


def test_google_key_is_a_header_never_in_the_url(
    client: httpx.Client, mocks: MockProviders
) -> None:
    response = client.post(
        f"/relay/google/v1/models/gemini-2.0-flash:generateContent?key={CLIENT_SECRET}",
        json=GEMINI,
    )
    assert response.status_code == 200
    request = mocks.gemini.last_request
    assert request.headers["x-goog-api-key"] == FAKE_KEY
    assert "key" not in request.query
    assert FAKE_KEY not in request.raw_query and CLIENT_SECRET not in request.raw_query


def test_base_url_header_cannot_redirect_a_builtin_provider(
    client: httpx.Client, mocks: MockProviders
) -> None:
    """x-relay-base-url is for openai-compatible only: the stored OpenAI key never goes
    to a URL the client picked."""
    response = client.post(
        "/relay/openai/v1/chat/completions",
        json=CHAT,
        headers={"x-relay-base-url": mocks.generic.url},
    )
    assert response.status_code == 200
    assert len(mocks.openai.requests) == 1
    assert mocks.generic.requests == []
    assert "x-relay-base-url" not in mocks.openai.last_request.headers


def test_anthropic_version_default_added(client: httpx.Client, mocks: MockProviders) -> None:
    assert client.post("/relay/anthropic/v1/messages", json=CLAUDE).status_code == 200
    request = mocks.anthropic.last_request
    assert request.headers.getall("anthropic-version") == ["2023-06-01"]
    assert "anthropic-beta" not in request.headers


def test_anthropic_version_and_beta_from_client_are_passed(
    client: httpx.Client, mocks: MockProviders
) -> None:
    response = client.post(
        "/relay/anthropic/v1/messages",
        json=CLAUDE,
        headers={
            "anthropic-version": "2024-01-01",
            "anthropic-beta": "prompt-caching-2024-07-31,output-128k-2025-02-19",
            "anthropic-dangerous-direct-browser-access": "true",
        },
    )
    assert response.status_code == 200
    request = mocks.anthropic.last_request
    assert request.headers.getall("anthropic-version") == ["2024-01-01"]
    assert request.headers["anthropic-beta"] == "prompt-caching-2024-07-31,output-128k-2025-02-19"


def test_openrouter_attribution_headers_are_passed(user: User, mocks: MockProviders) -> None:
    user.store_key("openrouter", "sk-or-test-0000000000")
    with user.client() as client:
        response = client.post(
            "/relay/openrouter/api/v1/chat/completions",
            json=CHAT,
            headers={"HTTP-Referer": "https://app.example", "X-Title": "My App"},
        )
    assert response.status_code == 200
    request = mocks.openai.last_request
    assert request.path == "/api/v1/chat/completions"
    assert request.headers["http-referer"] == "https://app.example"
    assert request.headers["x-title"] == "My App"
    assert request.headers["authorization"] == "Bearer sk-or-test-0000000000"


def test_openrouter_headers_not_sent_to_other_providers(
    client: httpx.Client, mocks: MockProviders
) -> None:
    client.post(
        "/relay/openai/v1/chat/completions",
        json=CHAT,
        headers={"HTTP-Referer": "https://app.example", "X-Title": "My App"},
    )
    request = mocks.openai.last_request
    assert "http-referer" not in request.headers and "x-title" not in request.headers


# ---------------------------------------------------------------- what comes back
def test_useful_provider_headers_come_back_and_set_cookie_never(
    client: httpx.Client, mocks: MockProviders
) -> None:
    response = client.post("/relay/openai/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    request = mocks.openai.last_request
    assert response.headers["x-request-id"] == request.request_id
    assert response.headers["x-ratelimit-limit-requests"] == "10000"
    assert response.headers["openai-processing-ms"] == "1"
    assert "set-cookie" not in response.headers
    assert "x-mock-flavor" not in response.headers  # only useful headers are passed
    assert not response.cookies

    response = client.post("/relay/anthropic/v1/messages", json={**CLAUDE, "stream": True})
    assert response.status_code == 200
    request = mocks.anthropic.last_request
    assert response.headers["request-id"] == request.request_id
    assert response.headers["x-request-id"] == request.request_id
    assert response.headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert "set-cookie" not in response.headers
    assert MOCK_COOKIE.split(";")[0] not in str(response.headers)


@pytest.mark.parametrize(
    ("flavor", "path", "body"),
    [
        ("openai", "/relay/openai/v1/chat/completions", CHAT),
        ("anthropic", "/relay/anthropic/v1/messages", CLAUDE),
        ("gemini", "/relay/google/v1beta/models/{model}:generateContent", GEMINI),
    ],
)
@pytest.mark.parametrize("status", [401, 429])
def test_provider_errors_pass_through_unchanged(
    flavor: str,
    path: str,
    body: dict[str, Any],
    status: int,
    client: httpx.Client,
    mocks: MockProviders,
    http: httpx.Client,
) -> None:
    switch = f"mock-{status}"
    mock: MockProvider = getattr(mocks, flavor)
    send = {**body, "model": switch} if "model" in body else body
    relayed = client.post(path.format(model=switch), json=send)
    direct = http.post(
        mock.url + path.removeprefix(f"/relay/{_provider(flavor)}").format(model=switch), json=send
    )
    assert direct.status_code == status
    assert relayed.status_code == status
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    assert relayed.content == direct.content  # the provider's body, byte for byte
    assert relayed.json() == direct.json()
    _assert_security_headers(relayed)
    if status == 429:
        assert relayed.headers["retry-after"] == "7"
        if flavor == "openai":
            assert relayed.headers["x-ratelimit-remaining-requests"] == "0"
            assert relayed.headers["x-ratelimit-reset-requests"] == "7s"
        if flavor == "anthropic":
            assert relayed.headers["anthropic-ratelimit-requests-remaining"] == "0"
            assert relayed.headers["anthropic-ratelimit-requests-reset"] == "2030-01-01T00:00:07Z"


def _provider(flavor: str) -> str:
    return "google" if flavor == "gemini" else flavor


def test_bad_stored_key_gives_the_providers_401(user: User, mocks: MockProviders) -> None:
    user.store_key("openai", "sk-test-mock-401-0000000000")
    with user.client() as client:
        response = client.get("/relay/openai/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "sk-test-mock-401" not in response.text.replace("sk-test-****", "")


def test_redirect_is_returned_not_followed(client: httpx.Client, mocks: MockProviders) -> None:
    response = client.post(
        "/relay/openai/v1/chat/completions", json={**CHAT, "model": "mock-redirect"}
    )
    assert response.status_code == 302
    assert len(mocks.openai.requests) == 1  # no second request to the provider
    assert all(len(m.requests) == 0 for m in (mocks.anthropic, mocks.gemini, mocks.generic))
    _assert_security_headers(response)
    assert REDIRECT_LOCATION.encode() not in response.content


# ------------------------------------------------------------------------ request ids
def test_relay_request_id_generated_or_reused(client: httpx.Client, mocks: MockProviders) -> None:
    first = client.post("/relay/openai/v1/chat/completions", json=CHAT)
    second = client.post("/relay/openai/v1/chat/completions", json=CHAT)
    ids = {first.headers["x-relay-request-id"], second.headers["x-relay-request-id"]}
    assert len(ids) == 2 and all(ids)

    sane = "trace-1234.abc:def_XYZ"
    reused = client.post(
        "/relay/openai/v1/chat/completions", json=CHAT, headers={"X-Request-ID": sane}
    )
    assert reused.headers["x-relay-request-id"] == sane
    # the provider's own id passes through untouched, next to the relay's
    assert reused.headers["x-request-id"] == mocks.openai.last_request.request_id

    for insane in ("has space", "x" * 300, "<script>", "a\tb"):
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"X-Request-ID": insane}
        )
        assert response.status_code == 200
        assert response.headers["x-relay-request-id"] not in ("", insane)


def test_relay_request_id_in_log_line(relay: Relay, client: httpx.Client) -> None:
    rid = "log-line-check-7f3a9c"
    client.post("/relay/openai/v1/chat/completions", json=CHAT, headers={"X-Request-ID": rid})
    lines: list[str] = []
    deadline = time.monotonic() + 2.0
    while not lines and time.monotonic() < deadline:
        lines = [line for line in relay.log_text().splitlines() if rid in line]
        time.sleep(0.02)
    assert len(lines) == 1, "one access-log line carries the request id"
    assert "/relay" in lines[0] and "200" in lines[0]
    assert FAKE_KEY not in relay.log_text()


# ------------------------------------------------------------------- security headers
def test_security_headers_on_every_kind_of_response(relay: Relay, shared_user: User) -> None:
    with relay.client() as anonymous, shared_user.client() as client:
        responses = {
            "json": client.post("/relay/openai/v1/chat/completions", json=CHAT),
            "stream": client.post("/relay/anthropic/v1/messages", json={**CLAUDE, "stream": True}),
            "binary": client.post(
                "/relay/openai/v1/audio/speech", json={"model": "tts-1", "input": "x"}
            ),
            "no token": anonymous.post("/relay/openai/v1/chat/completions", json=CHAT),
            "bad token": anonymous.post(
                "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": "nope"}
            ),
            "path refused": client.post("/relay/openai/v1/files", json={}),
            "unknown provider": client.post("/relay/nope/v1/chat", json={}),
            "no route": client.get("/no/such/route"),
            "provider 429": client.post(
                "/relay/openai/v1/chat/completions", json={**CHAT, "model": "mock-429"}
            ),
            "health": anonymous.get("/health"),
            "preflight": anonymous.options(
                "/relay/openai/v1/chat/completions",
                headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
            ),
        }
    expected = {
        "json": 200,
        "stream": 200,
        "binary": 200,
        "no token": 401,
        "bad token": 401,
        "path refused": 403,
        "unknown provider": 400,
        "no route": 404,
        "provider 429": 429,
        "health": 200,
        "preflight": 204,
    }
    for kind, response in responses.items():
        assert response.status_code == expected[kind], (kind, response.text)
        _assert_security_headers(response)
        if response.status_code >= 400 and kind != "provider 429":
            assert isinstance(response.json()["error"], str), kind
    assert "strict-transport-security" not in responses["json"].headers  # plain http


# ------------------------------------------------------------------------ credentials
@pytest.fixture(scope="module")
def four_users(relay: Relay) -> list[User]:
    """Four users whose stored openai keys tell them apart at the mock."""
    users = []
    for n in range(4):
        u = register_user(relay)
        u.store_key("openai", f"sk-user{n}-0000000000")
        users.append(u)
    return users


@pytest.mark.parametrize(
    ("sent", "winner"),
    [
        (("x-relay-token", "authorization", "x-api-key", "x-goog-api-key"), 0),
        (("authorization", "x-api-key", "x-goog-api-key"), 1),
        (("x-api-key", "x-goog-api-key"), 2),
        (("x-goog-api-key",), 3),
        (("x-relay-token",), 0),
        (("authorization",), 1),
        (("x-api-key",), 2),
        (("x-relay-token", "x-goog-api-key"), 0),
        (("authorization", "x-goog-api-key"), 1),
    ],
)
def test_credential_headers_and_precedence(
    sent: tuple[str, ...], winner: int, four_users: list[User], relay: Relay, mocks: MockProviders
) -> None:
    order = ("x-relay-token", "authorization", "x-api-key", "x-goog-api-key")
    headers = {}
    for name in sent:
        token = four_users[order.index(name)].token
        headers[name] = f"Bearer {token}" if name == "authorization" else token
    with relay.client() as client:
        response = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    assert (
        mocks.openai.last_request.headers["authorization"] == f"Bearer sk-user{winner}-0000000000"
    )


def test_credential_precedence_wrong_winner_is_401(
    four_users: list[User], relay: Relay, mocks: MockProviders
) -> None:
    """The first credential present decides, even when it is wrong and a later one is right."""
    good = four_users[0].token
    bad = "byok_rt_" + "A" * (len(good) - len("byok_rt_"))
    cases = [
        {"x-relay-token": bad, "authorization": f"Bearer {good}"},
        {"authorization": f"Bearer {bad}", "x-api-key": good},
        {"x-api-key": bad, "x-goog-api-key": good},
    ]
    with relay.client() as client:
        for headers in cases:
            response = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 401, headers
            assert isinstance(response.json()["error"], str)
            # a relay-token right after the wrong one is still accepted on its own
        ok = client.post(
            "/relay/openai/v1/chat/completions",
            json=CHAT,
            headers={"x-relay-token": good, "authorization": f"Bearer {bad}"},
        )
    assert ok.status_code == 200
    assert len(mocks.openai.requests) == 1


@pytest.mark.parametrize("route", ["provider", "unified"])
def test_every_credential_header_works_on_every_relay_route(
    route: str, shared_user: User, mocks: MockProviders
) -> None:
    for headers in (
        {"x-relay-token": shared_user.token},
        {"Authorization": f"Bearer {shared_user.token}"},
        {"x-api-key": shared_user.token},
        {"x-goog-api-key": shared_user.token},
    ):
        with shared_user.relay.client() as client:
            if route == "provider":
                response = client.get("/relay/openai/v1/models", headers=headers)
            else:
                response = client.post(
                    "/relay", json={**CLAUDE, "model": "anthropic/claude-x"}, headers=headers
                )
        assert response.status_code == 200, (headers, response.text)
    mock = mocks.openai if route == "provider" else mocks.anthropic
    assert len(mock.requests) == 4


def test_missing_or_unknown_token_is_401_json(relay: Relay, mocks: MockProviders) -> None:
    with relay.client() as client:
        for headers in (
            {},
            {"x-relay-token": "not-a-token"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer"},
            {"x-api-key": "byok_rt_" + "Z" * 43},
        ):
            response = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 401, headers
            assert isinstance(response.json()["error"], str)
    assert mocks.openai.requests == []
