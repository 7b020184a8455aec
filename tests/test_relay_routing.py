"""SPEC §2/§4 routing over real HTTP: the unified POST /relay route, Gemini paths, the path
and model allowlists (and that refusals cost no quota), every built-in provider,
PROVIDER_<NAME>_BASE_URL, PROVIDERS_FILE custom providers and openai-compatible base URLs
(SSRF refusals included)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from providers.mock import REPLY_TEXT, MockProvider, MockProviders
from providers.relay import (
    CHAT,
    CLAUDE,
    FAKE_KEY,
    GEMINI,
    PROVIDER_MOCKS,
    Relay,
    User,
    register_user,
    start_relay_process,
)
from providers.relay import relay_env as build_relay_env
from providers.sse import parse_sse_events


def _module_relay(
    mocks: MockProviders, factory: pytest.TempPathFactory, name: str, **env: str | None
) -> Iterator[Relay]:
    directory: Path = factory.mktemp(name)
    server = start_relay_process(build_relay_env(mocks, directory, **env), directory)
    try:
        yield server
    finally:
        server.kill()


def _json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def _no_upstream_calls(mocks: MockProviders) -> None:
    for mock in mocks.all():
        assert mock.requests == [], f"mock {mock.flavor} was called"


@pytest.fixture
def client(shared_user: User) -> Iterator[httpx.Client]:
    with shared_user.client() as c:
        yield c


# ------------------------------------------------------------------- POST /relay (unified)
@pytest.mark.parametrize(
    ("model", "flavor", "path", "sent_model"),
    [
        ("openai/gpt-4o", "openai", "/v1/chat/completions", "gpt-4o"),
        ("anthropic/claude-3-5-haiku", "anthropic", "/v1/messages", "claude-3-5-haiku"),
        (
            "groq/llama-3.1-8b-instant",
            "openai",
            "/openai/v1/chat/completions",
            "llama-3.1-8b-instant",
        ),
        (
            "openrouter/meta-llama/llama-3-8b",
            "openai",
            "/api/v1/chat/completions",
            "meta-llama/llama-3-8b",
        ),
        ("deepseek/deepseek-chat", "openai", "/chat/completions", "deepseek-chat"),
        ("OpenAI/gpt-4o", "openai", "/v1/chat/completions", "gpt-4o"),
    ],
)
def test_unified_provider_prefix_is_stripped(
    model: str,
    flavor: str,
    path: str,
    sent_model: str,
    relay: Relay,
    register: Any,
    mocks: MockProviders,
) -> None:
    provider = model.split("/", 1)[0].lower()
    user: User = register(relay)
    user.store_key(provider, FAKE_KEY)
    body = {**(CLAUDE if provider == "anthropic" else CHAT), "model": model, "temperature": 0.5}
    with user.client() as client:
        response = client.post("/relay", json=body)
    assert response.status_code == 200, response.text
    request = getattr(mocks, flavor).last_request
    assert request.path == path
    assert request.json() == {**body, "model": sent_model}


@pytest.mark.parametrize(
    ("model", "flavor", "path"),
    [
        ("gpt-4o-mini", "openai", "/v1/chat/completions"),
        ("o3-mini", "openai", "/v1/chat/completions"),
        ("text-embedding-3-small", "openai", "/v1/embeddings"),
        ("claude-sonnet-4-5", "anthropic", "/v1/messages"),
        ("CLAUDE-3-opus", "anthropic", "/v1/messages"),
    ],
)
def test_unified_bare_names_route_by_pattern(
    model: str, flavor: str, path: str, client: httpx.Client, mocks: MockProviders
) -> None:
    raw = orjson.dumps({**CHAT, "model": model, "max_tokens": 5, "input": "x"})
    response = client.post("/relay", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    request = getattr(mocks, flavor).last_request
    assert request.path == path
    assert request.body == raw  # a bare name needs no rewrite: the body is forwarded as sent


def test_unified_gemini_non_stream(client: httpx.Client, mocks: MockProviders) -> None:
    response = client.post("/relay", json={**GEMINI, "model": "gemini-2.0-flash"})
    assert response.status_code == 200, response.text
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == REPLY_TEXT
    request = mocks.gemini.last_request
    assert request.path.endswith("/models/gemini-2.0-flash:generateContent")
    assert "alt" not in request.query
    assert request.json() == GEMINI


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "google/gemini-2.0-flash"])
def test_unified_gemini_stream_goes_to_stream_generate_content_sse(
    model: str, client: httpx.Client, mocks: MockProviders
) -> None:
    body = {**GEMINI, "model": model, "stream": True, "generationConfig": {"temperature": 0}}
    response = client.post("/relay", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    request = mocks.gemini.last_request
    assert request.path.endswith("/models/gemini-2.0-flash:streamGenerateContent")
    assert request.query.getall("alt") == ["sse"]
    assert request.json() == {**GEMINI, "generationConfig": {"temperature": 0}}
    text = "".join(
        e.json()["candidates"][0]["content"]["parts"][0]["text"]
        for e in parse_sse_events(response.content)
    )
    assert text == REPLY_TEXT


@pytest.mark.parametrize(
    "body",
    [
        {**CHAT, "model": "totally-unknown-model"},
        {**CHAT, "model": "nope/gpt-4o"},
        {**CHAT, "model": "openai/"},
        {**CHAT, "model": ""},
        {**CHAT, "model": 42},
        CHAT | {"model": None},
        {"messages": []},
        [1, 2],
        "not json",
    ],
)
def test_unified_unroutable_is_400_json(
    body: Any, client: httpx.Client, mocks: MockProviders
) -> None:
    content = body.encode() if isinstance(body, str) else orjson.dumps(body)
    response = client.post("/relay", content=content, headers={"content-type": "application/json"})
    _json_error(response, 400)
    _no_upstream_calls(mocks)


def test_unified_provider_without_key_is_400(relay: Relay, register: Any) -> None:
    user: User = register(relay)
    with user.client() as client:
        message = _json_error(client.post("/relay", json={**CHAT, "model": "gpt-4o"}), 400)
    assert "POST /keys/openai" in message


def test_models_endpoint_shape(relay: Relay) -> None:
    with relay.client() as client:
        response = client.get("/models")
    assert response.status_code == 200
    data = response.json()
    assert set(data["providers"]) == {*PROVIDER_MOCKS, "openai-compatible"}
    patterns = {(p["pattern"], p["provider"]) for p in data["patterns"]}
    assert {("gpt-*", "openai"), ("claude-*", "anthropic"), ("gemini-*", "google")} <= patterns
    assert {"openai", "anthropic", "google"} <= set(data["providerPrefixes"])
    assert data["allowed_models"] is None


# -------------------------------------------------------------------------- google paths
@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_google_paths_both_versions(
    version: str, client: httpx.Client, mocks: MockProviders
) -> None:
    base = f"/relay/google/{version}/models"
    generate = client.post(f"{base}/gemini-2.0-flash:generateContent", json=GEMINI)
    assert generate.status_code == 200
    assert mocks.gemini.last_request.path == f"/{version}/models/gemini-2.0-flash:generateContent"

    stream = client.post(f"{base}/gemini-2.0-flash:streamGenerateContent", json=GEMINI)
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    request = mocks.gemini.last_request
    assert request.path == f"/{version}/models/gemini-2.0-flash:streamGenerateContent"
    assert request.query.getall("alt") == ["sse"]

    # a client that already asks for alt=sse gets it once
    client.post(f"{base}/gemini-2.0-flash:streamGenerateContent?alt=sse", json=GEMINI)
    assert mocks.gemini.last_request.query.getall("alt") == ["sse"]

    for path in ("", "/gemini-1.5-pro"):
        listed = client.get(base + path)
        assert listed.status_code == 200, listed.text
        assert mocks.gemini.last_request.path == f"/{version}/models{path}"
    count = client.post(f"{base}/gemini-2.0-flash:countTokens", json=GEMINI)
    assert count.status_code == 200 and count.json()["totalTokens"] > 0


# ----------------------------------------------------------------------- path allowlist
RAW_REFUSED = [
    "/relay/openai/v1/files",
    "/relay/openai/v1/%2e%2e/%2e%2e/keys",
    "/relay/openai/v1/chat/completions/%2e%2e/%2e%2e/files",
    "/relay/openai/v1/chat/completions/../../files",
    "/relay/openai/../keys",
    "/relay/openai/v1/chat%2fcompletions",
    "/relay/openai/v1/chat%2Fcompletions",
    "/relay/openai/v1%5cchat/completions",
    "/relay/openai/v1\\chat/completions",
    "/relay/openai/v1//chat/completions",
    "//relay/openai/v1/chat/completions/x",
    "/relay/openai/v1/chat/completions%00",
    "/relay/openai/v1/chat/completions%00.json",
    "/relay/openai/v1/chat/completions/",
    "/relay/openai/v1/chat/completions;x",
    "/relay/openai/v1/organization/api_keys",
    "/relay/anthropic/v1/messages/batches",
    "/relay/google/v1beta/files",
    "/relay/google/v1beta/models/gemini-2.0-flash:generateContent/../../../tunedModels",
]


def _raw_request(
    relay: Relay, method: str, raw_path: str, token: str, body: bytes = b"{}"
) -> tuple[int, bytes, dict[str, str]]:
    """Send a request line exactly as given (httpx would normalise the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    try:
        conn.putrequest(method, raw_path, skip_host=False, skip_accept_encoding=True)
        conn.putheader("x-relay-token", token)
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.mark.parametrize("raw_path", RAW_REFUSED)
def test_disallowed_paths_are_403_json(
    raw_path: str, relay: Relay, shared_user: User, mocks: MockProviders
) -> None:
    status, body, headers = _raw_request(
        relay, "POST", raw_path, shared_user.token, orjson.dumps(CHAT)
    )
    # 400 only where the HTTP layer itself rejects the request line first (SPEC §4)
    assert status in (403, 404) if raw_path.startswith("//") else status == 403, (status, body)
    assert headers["content-type"].startswith("application/json")
    message = orjson.loads(body)["error"]
    assert isinstance(message, str) and message
    assert message.count("Path refused") <= 1, message
    _no_upstream_calls(mocks)


def test_dot_segments_are_normalised_before_the_allowlist(
    relay: Relay, shared_user: User, mocks: MockProviders
) -> None:
    for raw in (
        "/relay/openai/v1/./chat/completions",
        "/relay/openai/v1/x/../chat/completions",
        "/relay/openai/v1/%63hat/completions",
    ):
        status, body, _ = _raw_request(relay, "POST", raw, shared_user.token, orjson.dumps(CHAT))
        assert status == 200, (raw, body)
        assert mocks.openai.last_request.path == "/v1/chat/completions"


def test_percent_encoded_upstream_path_is_not_double_decoded(
    relay: Relay, register: Any, mocks: MockProviders
) -> None:
    """A client's %252e reaches the provider as %252e (literal '%2e'), never as '..'."""
    user = register(relay)
    user.store_key("elevenlabs", FAKE_KEY)
    raw = "/relay/elevenlabs/v1/text-to-speech/a%252e%252e"
    status, _, _ = _raw_request(relay, "POST", raw, user.token, orjson.dumps({"text": "hi"}))
    assert status == 200
    assert mocks.generic.last_request.path == "/v1/text-to-speech/a%252e%252e"


def test_a_path_model_must_have_the_providers_model_shape(
    relay: Relay, shared_user: User, mocks: MockProviders
) -> None:
    """{model} in a path is a model name, never path syntax or another method."""
    for raw in (
        "/relay/google/v1beta/models/a%252e%252e:generateContent",
        "/relay/google/v1beta/models/gemini-2.0-flash:countTokens:generateContent",
        "/relay/google/v1beta/models/..gemini:generateContent",
    ):
        status, body, _ = _raw_request(relay, "POST", raw, shared_user.token, orjson.dumps(GEMINI))
        assert status == 403, (raw, body)
    _no_upstream_calls(mocks)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/relay/openai/v1/chat/completions"),
        ("POST", "/relay/openai/v1/models"),
        ("POST", "/relay/anthropic/v1/models"),
        ("POST", "/relay/google/v1beta/models"),
    ],
)
def test_method_is_part_of_the_allowlist(
    method: str, path: str, client: httpx.Client, mocks: MockProviders
) -> None:
    _json_error(client.request(method, path, json={} if method == "POST" else None), 403)
    _no_upstream_calls(mocks)


def test_unknown_provider_is_400_listing_supported(
    client: httpx.Client, mocks: MockProviders
) -> None:
    message = _json_error(client.post("/relay/nope/v1/chat/completions", json=CHAT), 400)
    assert "openai" in message and "anthropic" in message
    _no_upstream_calls(mocks)


@pytest.fixture(scope="module")
def quota_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """2 relay requests per token per minute; openai-compatible pinned by the operator."""
    yield from _module_relay(
        mocks,
        tmp_path_factory,
        "relay-quota",
        RATE_LIMIT_RELAY="2/minute",
        PROVIDER_OPENAI_COMPATIBLE_BASE_URL=mocks.generic.url + "/oc",
    )


def test_refused_paths_and_models_cost_no_relay_quota(
    quota_relay: Relay, mocks: MockProviders
) -> None:
    user = register_user(quota_relay)
    user.store_key("openai", FAKE_KEY)
    for raw in RAW_REFUSED[:6]:
        status, _, _ = _raw_request(quota_relay, "POST", raw, user.token, orjson.dumps(CHAT))
        assert status == 403
    with user.client() as client:
        for _ in range(3):
            _json_error(client.post("/relay/openai/v1/files", json={}), 403)
            _json_error(client.post("/relay/nope/v1/chat", json={}), 400)
            _json_error(client.post("/relay", json={**CHAT, "model": "nope-model"}), 400)
        first = client.post("/relay/openai/v1/chat/completions", json=CHAT)
        second = client.post("/relay", json={**CHAT, "model": "gpt-4o"})
        third = client.post("/relay/openai/v1/chat/completions", json=CHAT)
    assert (first.status_code, second.status_code) == (200, 200)
    _json_error(third, 429)  # the limit is real: the quota was only spent by the 2 OK ones
    assert int(third.headers["retry-after"]) > 0
    assert len(mocks.openai.requests) == 2


def test_provider_name_with_dash_env_override(quota_relay: Relay, mocks: MockProviders) -> None:
    """PROVIDER_OPENAI_COMPATIBLE_BASE_URL: NAME upper-cased, '-' -> '_'."""
    user = register_user(quota_relay)
    user.store_key("openai-compatible", FAKE_KEY)
    with user.client() as client:
        response = client.post("/relay/openai-compatible/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    request = mocks.generic.last_request
    assert request.path == "/oc/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"


# ---------------------------------------------------------------------- model allowlist
@pytest.fixture(scope="module")
def models_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    yield from _module_relay(
        mocks,
        tmp_path_factory,
        "relay-models",
        ALLOWED_MODELS="gpt-4o*, claude-*,google/gemini-2.0-*",
    )


@pytest.fixture(scope="module")
def models_user(models_relay: Relay) -> User:
    user = register_user(models_relay)
    for provider in ("openai", "anthropic", "google", "groq"):
        user.store_key(provider, FAKE_KEY)
    return user


@pytest.mark.parametrize(
    ("model", "allowed"),
    [
        ("gpt-4o", True),
        ("GPT-4O-mini", True),
        ("openai/gpt-4o-mini", True),
        ("claude-3-5-haiku", True),
        ("anthropic/claude-3-5-haiku", True),
        ("gemini-2.0-flash", True),  # passes as google/gemini-2.0-flash
        ("google/gemini-2.0-flash-lite", True),
        ("gpt-3.5-turbo", False),
        ("openai/gpt-3.5-turbo", False),
        ("gemini-1.5-pro", False),
        ("google/gemini-1.5-pro", False),
        ("groq/llama-3.1-8b", False),
        ("o3-mini", False),
    ],
)
def test_allowed_models_on_unified_route(
    model: str, allowed: bool, models_user: User, mocks: MockProviders
) -> None:
    body = {**(GEMINI if "gemini" in model else CHAT), "model": model}
    with models_user.client() as client:
        response = client.post("/relay", json=body)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        message = _json_error(response, 403)
        assert model.split("/", 1)[-1] in message
        _no_upstream_calls(mocks)


@pytest.mark.parametrize(
    ("path", "body", "allowed"),
    [
        ("/relay/openai/v1/chat/completions", {**CHAT, "model": "gpt-4o-mini"}, True),
        ("/relay/openai/v1/chat/completions", {**CHAT, "model": "gpt-3.5-turbo"}, False),
        ("/relay/groq/openai/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, True),
        ("/relay/groq/openai/v1/chat/completions", {**CHAT, "model": "llama3-70b"}, False),
        ("/relay/anthropic/v1/messages", {**CLAUDE, "model": "claude-x"}, True),
        ("/relay/google/v1beta/models/gemini-2.0-flash:generateContent", GEMINI, True),
        ("/relay/google/v1/models/gemini-2.0-flash:streamGenerateContent", GEMINI, True),
        ("/relay/google/v1beta/models/gemini-1.5-pro:generateContent", GEMINI, False),
        ("/relay/google/v1/models/gemini-1.5-pro:streamGenerateContent", GEMINI, False),
        # a body model cannot smuggle a path model past the allowlist
        (
            "/relay/google/v1beta/models/gemini-1.5-pro:generateContent",
            {**GEMINI, "model": "gemini-2.0-flash"},
            False,
        ),
    ],
)
def test_allowed_models_on_provider_routes(
    path: str, body: dict[str, Any], allowed: bool, models_user: User, mocks: MockProviders
) -> None:
    with models_user.client() as client:
        response = client.post(path, json=body)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        _json_error(response, 403)
        _no_upstream_calls(mocks)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_allowed_models_not_bypassed_by_content_type(
    content_type: str | None, models_user: User, mocks: MockProviders
) -> None:
    """The relay sends JSON upstream as JSON; the allowlist must read it the same way."""
    raw = orjson.dumps({**CHAT, "model": "gpt-3.5-turbo"})
    headers = {"content-type": content_type} if content_type else {}
    with models_user.client() as client:
        request = client.build_request(
            "POST", "/relay/openai/v1/chat/completions", content=raw, headers=headers
        )
        assert "content-type" not in request.headers or content_type is not None
        response = client.send(request)
    _json_error(response, 403)
    _no_upstream_calls(mocks)


def test_allowed_models_leaves_model_free_routes_alone(
    models_user: User, models_relay: Relay
) -> None:
    with models_user.client() as client:
        assert client.get("/relay/openai/v1/models").status_code == 200
        assert client.get("/relay/anthropic/v1/models").status_code == 200
    with models_relay.client() as client:
        listed = client.get("/models").json()
    assert listed["allowed_models"] == ["gpt-4o*", "claude-*", "google/gemini-2.0-*"]


# ----------------------------------------------------------------- every built-in provider
# provider -> (path, body or None for raw bytes, credential header, prefix)
BUILTIN_CASES: dict[str, tuple[str, dict[str, Any] | None, str, str]] = {
    "openai": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "groq": ("/openai/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "openrouter": ("/api/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "mistral": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "deepseek": ("/chat/completions", CHAT, "authorization", "Bearer "),
    "xai": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "together": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "fireworks": ("/inference/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "perplexity": ("/chat/completions", CHAT, "authorization", "Bearer "),
    "cohere": ("/compatibility/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "cerebras": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
    "anthropic": ("/v1/messages", CLAUDE, "x-api-key", ""),
    "google": ("/v1beta/models/gemini-2.0-flash:generateContent", GEMINI, "x-goog-api-key", ""),
    "elevenlabs": ("/v1/text-to-speech/voice1", {"text": "hi"}, "xi-api-key", ""),
    "deepgram": ("/v1/listen", None, "authorization", "Token "),
    "huggingface": ("/v1/chat/completions", CHAT, "authorization", "Bearer "),
}


def test_builtin_cases_cover_every_builtin_provider() -> None:
    assert set(BUILTIN_CASES) == set(PROVIDER_MOCKS)


@pytest.mark.parametrize("provider", list(BUILTIN_CASES))
def test_every_builtin_provider_is_reachable(
    provider: str, relay: Relay, register: Any, mocks: MockProviders
) -> None:
    path, body, header, prefix = BUILTIN_CASES[provider]
    key = f"k-{provider}-0123456789"
    user: User = register(relay)
    user.store_key(provider, key)
    kwargs: dict[str, Any] = (
        {"json": body}
        if body is not None
        else {"content": b"RIFF\x00\x01", "headers": {"content-type": "audio/wav"}}
    )
    with user.client() as client:
        response = client.post(f"/relay/{provider}{path}", **kwargs)
        refused = client.post(f"/relay/{provider}/v1/files", json={})
    assert response.status_code == 200, response.text
    mock: MockProvider = mocks.by_flavor(PROVIDER_MOCKS[provider])
    (request,) = mock.requests
    assert request.path == path
    assert request.headers[header] == prefix + key
    _json_error(refused, 403)


@pytest.mark.parametrize(
    ("provider", "chat_path"),
    [
        ("mistral", "/v1/chat/completions"),
        ("xai", "/v1/chat/completions"),
        ("together", "/v1/chat/completions"),
        ("fireworks", "/inference/v1/chat/completions"),
        ("perplexity", "/chat/completions"),
        ("cerebras", "/v1/chat/completions"),
        ("huggingface", "/v1/chat/completions"),
    ],
)
def test_unified_prefix_for_more_providers(
    provider: str, chat_path: str, relay: Relay, register: Any, mocks: MockProviders
) -> None:
    user: User = register(relay)
    user.store_key(provider, FAKE_KEY)
    with user.client() as client:
        response = client.post("/relay", json={**CHAT, "model": f"{provider}/some-model"})
    assert response.status_code == 200, response.text
    (request,) = mocks.by_flavor(PROVIDER_MOCKS[provider]).requests
    assert request.path == chat_path
    assert request.json()["model"] == "some-model"


# --------------------------------------------- PROVIDERS_FILE, overrides, openai-compatible
@pytest.fixture(scope="module")
def custom_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """PROVIDERS_FILE with two custom providers and a built-in override; mistral moved by
    env; private client base URLs allowed (the mocks are on 127.0.0.1)."""
    directory = tmp_path_factory.mktemp("providers-file")
    generic = mocks.generic.url
    toml = directory / "providers.toml"
    toml.write_text(
        f"""
[providers.acme]
base_url = "{generic}/acme/"
auth = {{ header = "authorization", prefix = "Bearer " }}
paths = ["/v1/chat/completions", "GET /v1/models"]
headers = {{ "x-acme-client" = "byok-relay" }}
chat_path = "/v1/chat/completions"
stream_usage_option = true

[providers.qauth]
base_url = "{generic}"
auth = {{ query = "key" }}
paths = ["/v2/generate", "GET /v2/models/*"]
headers = {{ "x-qauth-fixed" = "1", "user-agent" = "qauth-agent" }}

[providers.cerebras]
base_url = "{generic}/cerebras-from-file"
""",
        encoding="utf-8",
    )
    yield from _module_relay(
        mocks,
        tmp_path_factory,
        "relay-custom",
        PROVIDERS_FILE=str(toml),
        PROVIDER_MISTRAL_BASE_URL=generic + "/mistral-env",
        PROVIDER_CEREBRAS_BASE_URL=None,  # the file's base_url applies
        ALLOW_PRIVATE_UPSTREAMS="true",
    )


@pytest.fixture
def custom_user(custom_relay: Relay) -> User:
    return register_user(custom_relay)


def test_providers_file_header_auth(custom_user: User, mocks: MockProviders) -> None:
    custom_user.store_key("acme", "acme-key-0123456789")
    with custom_user.client() as client:
        response = client.post(
            "/relay/acme/v1/chat/completions",
            json=CHAT,
            headers={"x-acme-client": "client-value", "authorization": "Bearer client"},
        )
        listed = client.get("/relay/acme/v1/models")
        refused = client.post("/relay/acme/v1/embeddings", json={})
        unified = client.post("/relay", json={**CHAT, "model": "acme/acme-large"})
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["path"] == "/acme/v1/chat/completions"
    assert echo["headers"]["authorization"] == "Bearer acme-key-0123456789"
    assert echo["headers"]["x-acme-client"] == "byok-relay"  # fixed: the client's replaced
    assert custom_user.token not in str(echo)
    assert listed.status_code == 200 and listed.json()["path"] == "/acme/v1/models"
    _json_error(refused, 403)
    assert unified.status_code == 200, unified.text
    assert mocks.generic.last_request.json()["model"] == "acme-large"


def test_providers_file_stream_usage_option(custom_user: User, mocks: MockProviders) -> None:
    """`stream_usage_option = true`: streamed chats are sent asking for usage (SPEC §9)."""
    custom_user.store_key("acme", "acme-key-0123456789")
    with custom_user.client() as client:
        client.post("/relay/acme/v1/chat/completions", json={**CHAT, "stream": True})
        streamed = mocks.generic.last_request.json()
        client.post("/relay/acme/v1/chat/completions", json=CHAT)
        plain = mocks.generic.last_request.json()
    assert streamed["stream_options"] == {"include_usage": True}
    assert "stream_options" not in plain


def test_providers_file_query_auth(custom_user: User, mocks: MockProviders) -> None:
    custom_user.store_key("qauth", "q-key-0123456789")
    with custom_user.client() as client:
        response = client.post("/relay/qauth/v2/generate?key=client-key&x=1", json={"p": 1})
        got = client.get("/relay/qauth/v2/models/m1")
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["path"] == "/v2/generate"
    assert echo["query"] == {"x": ["1"], "key": ["q-key-0123456789"]}
    assert echo["headers"]["x-qauth-fixed"] == "1"
    assert echo["headers"]["user-agent"] == "qauth-agent"
    for header in ("authorization", "x-api-key", "x-relay-token"):
        assert header not in echo["headers"]
    assert got.status_code == 200 and got.json()["query"] == {"key": ["q-key-0123456789"]}


def test_providers_file_overrides_builtin_and_env_overrides_base_url(
    custom_user: User, mocks: MockProviders
) -> None:
    custom_user.store_key("cerebras", FAKE_KEY)
    custom_user.store_key("mistral", FAKE_KEY)
    with custom_user.client() as client:
        cerebras = client.post("/relay/cerebras/v1/chat/completions", json=CHAT)
        mistral = client.post("/relay/mistral/v1/chat/completions", json=CHAT)
    assert cerebras.status_code == 200 and mistral.status_code == 200
    # cerebras keeps its built-in paths and auth; only the base URL came from the file
    assert cerebras.json()["path"] == "/cerebras-from-file/v1/chat/completions"
    assert cerebras.json()["headers"]["authorization"] == f"Bearer {FAKE_KEY}"
    assert mistral.json()["path"] == "/mistral-env/v1/chat/completions"
    assert mocks.openai.requests == []


def test_openai_compatible_stored_base_url_with_prefix(
    custom_user: User, mocks: MockProviders
) -> None:
    custom_user.store_key("openai-compatible", FAKE_KEY, base_url=mocks.openai.url + "/api/")
    with custom_user.client() as client:
        response = client.post(
            "/relay/openai-compatible/v1/chat/completions", json={**CHAT, "stream": True}
        )
        models = client.get("/relay/openai-compatible/v1/models")
        refused = client.post("/relay/openai-compatible/v1/files", json={})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert models.status_code == 200
    chat, listing = mocks.openai.requests
    assert chat.path == "/api/v1/chat/completions"
    assert listing.path == "/api/v1/models"
    assert chat.headers["authorization"] == f"Bearer {FAKE_KEY}"
    _json_error(refused, 403)


def test_openai_compatible_base_url_header(custom_user: User, mocks: MockProviders) -> None:
    custom_user.store_key("openai-compatible", FAKE_KEY)  # no stored base_url: the header's
    with custom_user.client() as client:
        response = client.post(
            "/relay/openai-compatible/chat/completions",
            json=CHAT,
            headers={"x-relay-base-url": mocks.generic.url + "/gw/v2"},
        )
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["path"] == "/gw/v2/chat/completions"
    assert echo["headers"]["authorization"] == f"Bearer {FAKE_KEY}"
    assert "x-relay-base-url" not in echo["headers"]
    assert mocks.openai.requests == []
    # A key stored with a base_url is bound to it: another header base URL is refused.
    custom_user.store_key("openai-compatible", FAKE_KEY, base_url=mocks.openai.url)
    with custom_user.client() as client:
        refused = client.post(
            "/relay/openai-compatible/chat/completions",
            json=CHAT,
            headers={"x-relay-base-url": mocks.generic.url + "/gw/v2"},
        )
    assert "bound to the base_url" in _json_error(refused, 400)


def test_openai_compatible_base_url_prefix_is_normalised(
    custom_user: User, mocks: MockProviders
) -> None:
    custom_user.store_key("openai-compatible", FAKE_KEY)
    with custom_user.client() as client:
        response = client.get(
            "/relay/openai-compatible/v1/models",
            headers={"x-relay-base-url": mocks.generic.url + "/x/../api/./v2/"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/api/v2/v1/models"


@pytest.mark.parametrize(
    "base",
    ["{mock}/api?x=1", "{mock}/api#frag", "ftp://127.0.0.1/", "https://169.254.169.254/latest"],
)
def test_openai_compatible_refusals_even_with_private_allowed(
    base: str, custom_user: User, mocks: MockProviders
) -> None:
    custom_user.store_key("openai-compatible", FAKE_KEY)
    with custom_user.client() as client:
        response = client.post(
            "/relay/openai-compatible/v1/chat/completions",
            json=CHAT,
            headers={"x-relay-base-url": base.format(mock=mocks.openai.url)},
        )
    _json_error(response, 400)
    _no_upstream_calls(mocks)


FORBIDDEN_BASES = [
    "http://127.0.0.1:{port}",
    "https://127.0.0.1:{port}",
    "https://localhost:{port}",
    "https://10.0.0.1",
    "https://192.168.1.10/v1",
    "https://172.16.0.1",
    "https://100.64.0.1",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]:{port}",
    "https://[::ffff:127.0.0.1]:{port}",
    "https://[64:ff9b::7f00:1]",
    "https://0.0.0.0:{port}",
    "https://2130706433",
    "https://0x7f000001",
    "https://0177.0.0.1",
    "https://127.1",
    "https://user:pass@api.example.com",
    "http://api.example.com",
]


@pytest.mark.parametrize("base", FORBIDDEN_BASES)
def test_openai_compatible_forbidden_base_url_header_is_400(
    base: str, shared_user: User, mocks: MockProviders
) -> None:
    shared_user.store_key("openai-compatible", FAKE_KEY)
    url = base.format(port=mocks.openai.url.rsplit(":", 1)[1])
    with shared_user.client() as client:
        response = client.post(
            "/relay/openai-compatible/v1/chat/completions",
            json=CHAT,
            headers={"x-relay-base-url": url},
        )
    message = _json_error(response, 400)
    assert FAKE_KEY not in message
    _no_upstream_calls(mocks)


@pytest.mark.parametrize("base", FORBIDDEN_BASES[:4] + FORBIDDEN_BASES[-2:])
def test_openai_compatible_forbidden_stored_base_url_is_400(
    base: str, shared_user: User, mocks: MockProviders
) -> None:
    url = base.format(port=mocks.openai.url.rsplit(":", 1)[1])
    with shared_user.client() as client:
        response = client.post("/keys/openai-compatible", json={"key": FAKE_KEY, "base_url": url})
    _json_error(response, 400)
    _no_upstream_calls(mocks)


def test_openai_compatible_without_base_url_is_400(shared_user: User, mocks: MockProviders) -> None:
    shared_user.store_key("openai-compatible", FAKE_KEY)
    with shared_user.client() as client:
        message = _json_error(
            client.post("/relay/openai-compatible/v1/chat/completions", json=CHAT), 400
        )
    assert "base" in message.lower()
    _no_upstream_calls(mocks)


def test_stored_private_base_url_is_checked_again_when_used(
    start_relay: Any, tmp_path: Path, mocks: MockProviders
) -> None:
    """Stored while ALLOW_PRIVATE_UPSTREAMS=true, used after it was turned off → 400."""
    permissive = start_relay(data_dir=tmp_path, ALLOW_PRIVATE_UPSTREAMS="true")
    user = register_user(permissive)
    user.store_key("openai-compatible", FAKE_KEY, base_url=mocks.openai.url)
    with user.client() as client:
        assert client.get("/relay/openai-compatible/v1/models").status_code == 200
    assert permissive.stop() == 0
    mocks.clear()

    strict = start_relay(data_dir=tmp_path)
    with httpx.Client(base_url=strict.url, headers=user.headers, trust_env=False) as client:
        _json_error(client.get("/relay/openai-compatible/v1/models"), 400)
    _no_upstream_calls(mocks)


def test_providers_file_stream_usage_option_must_be_a_boolean(tmp_path: Path) -> None:
    from byok_relay.providers.builtin import BUILTIN_PROVIDERS
    from byok_relay.providers.registry import ProviderConfigError, load_providers_file

    toml = tmp_path / "providers.toml"
    toml.write_text('[providers.openai]\nstream_usage_option = "yes"\n', encoding="utf-8")
    with pytest.raises(ProviderConfigError, match=r"providers\.openai\.stream_usage_option"):
        load_providers_file(toml, {spec.name: spec for spec in BUILTIN_PROVIDERS})
