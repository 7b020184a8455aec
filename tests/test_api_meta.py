"""Metadata routes over real HTTP: /health, /version, /models, /openapi.json, /docs,
/client.js, and JSON 404/405."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import StartRelay
from providers.relay import Relay, error_of, http_client

import byok_relay

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

BUILTIN = [
    "anthropic", "openai", "google", "groq", "openrouter", "mistral", "deepseek", "xai",
    "together", "fireworks", "perplexity", "cohere", "cerebras", "elevenlabs", "deepgram",
    "huggingface", "openai-compatible",
]  # fmt: skip

#: Every route of SPEC §2 (method, path template).
SPEC_ROUTES = [
    ("POST", "/users"),
    ("POST", "/keys/{provider}"),
    ("GET", "/keys"),
    ("DELETE", "/keys/{provider}"),
    ("POST", "/keys/{provider}/rotate"),
    ("POST", "/keys/{provider}/verify"),
    ("POST", "/tokens/revoke"),
    ("POST", "/tokens/rotate"),
    ("DELETE", "/users"),
    ("GET", "/stats"),
    ("GET", "/stats/{app_id}"),
    ("GET", "/models"),
    ("POST", "/relay"),
    ("POST", "/relay/{provider}/{path}"),
    ("GET", "/relay/{provider}/{path}"),
    ("GET", "/health"),
    ("GET", "/version"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
]
_PARAM_VALUES = {"provider": "openai", "path": "v1/models", "app_id": "test-app"}


def concrete(template: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: _PARAM_VALUES.get(m.group(1), "x"), template)


def shape(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", template)


def route_exists(relay: Relay, method: str, template: str) -> bool:
    """Probe without credentials: a route that exists answers anything but 404/405."""
    r = HTTP.request(method, f"{relay.url}{concrete(template)}", timeout=10)
    return r.status_code not in (404, 405)


# --- health and version ----------------------------------------------------------------------


def test_health(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/health")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["ok"] is True
    assert body["version"] == byok_relay.__version__
    assert set(BUILTIN) <= set(body["providers"])
    assert "checks" not in body or body["checks"] is None
    # no secrets, paths or hostnames in a public endpoint
    text = r.text
    assert relay.env["ENCRYPTION_SECRET"] not in text
    assert str(relay.db_path) not in text


@pytest.mark.parametrize("deep", ["1", "true"])
def test_health_deep(relay: Relay, deep: str) -> None:
    r = HTTP.get(f"{relay.url}/health", params={"deep": deep})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    checks = body["checks"]
    assert checks["database"] == "ok"
    assert checks["rate_limits"] == "memory"
    # The key version fingerprints the secret: never shown to an anonymous caller.
    assert "encryption_key_version" not in checks
    assert relay.env["ENCRYPTION_SECRET"] not in r.text
    assert str(relay.db_path) not in r.text


def test_health_deep_shows_the_key_version_to_operators_only(start_relay: StartRelay) -> None:
    metrics_token, app_secret = "meta-metrics-token-4c1d9e", "meta-app-secret-77ab02f1"
    server = start_relay(METRICS_TOKEN=metrics_token, APP_SECRET=app_secret)
    url = f"{server.url}/health?deep=1"
    for secret in (metrics_token, app_secret):
        checks = HTTP.get(url, headers={"authorization": f"Bearer {secret}"}).json()["checks"]
        assert isinstance(checks["encryption_key_version"], str)
        assert checks["encryption_key_version"]
    for headers in ({}, {"authorization": "Bearer wrong-secret"}, {"x-relay-token": app_secret}):
        r = HTTP.get(url, headers=headers)
        assert r.status_code == 200 and "encryption_key_version" not in r.json()["checks"]


def test_version(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/version")
    assert r.status_code == 200
    assert r.json() == {
        "version": byok_relay.__version__,
        "commit": "unknown",
        "build_time": "unknown",
    }


def test_version_build_info_and_health_not_rate_limited(start_relay: StartRelay) -> None:
    server = start_relay(
        BUILD_COMMIT="abc1234",
        BUILD_TIME="2025-01-02T03:04:05Z",
        RATE_LIMIT_GLOBAL="2/minute",
        ALLOWED_MODELS="gpt-4o*, Claude-*",
    )
    with server.client() as c:
        for _ in range(6):
            assert c.get("/health").status_code == 200
            assert c.get("/health?deep=1").status_code == 200
        v = c.get("/version")
        assert v.status_code == 200
        assert v.json() == {
            "version": byok_relay.__version__,
            "commit": "abc1234",
            "build_time": "2025-01-02T03:04:05Z",
        }
        m = c.get("/models")
        assert m.status_code == 200
        assert m.json()["allowed_models"] == ["gpt-4o*", "Claude-*"]
        limited = c.get("/version")
        error_of(limited, 429)
        assert int(limited.headers["Retry-After"]) > 0
        assert limited.headers["RateLimit-Limit"] == "2"
        assert c.get("/health").status_code == 200  # /health is never counted


# --- models ----------------------------------------------------------------------------------


def test_models(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/models")
    assert r.status_code == 200
    body = r.json()
    assert set(BUILTIN) <= set(body["providers"])
    assert body["allowed_models"] is None
    patterns = body["patterns"]
    assert isinstance(patterns, list) and patterns
    for p in patterns:
        assert {"pattern", "provider"} <= set(p)
        assert p["provider"] in body["providers"]
    by_glob = {p["pattern"]: p["provider"] for p in patterns}
    assert by_glob.get("gpt-*") == "openai"
    assert by_glob.get("claude-*") == "anthropic"
    assert by_glob.get("gemini-*") == "google"


# --- OpenAPI and docs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(relay: Relay) -> dict[str, Any]:
    r = HTTP.get(f"{relay.url}/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = r.json()
    return doc


def test_openapi_is_valid_31(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.1")
    assert openapi["info"]["title"] and openapi["info"]["version"] == byok_relay.__version__
    assert isinstance(openapi["paths"], dict) and openapi["paths"]
    for path, ops in openapi["paths"].items():
        assert path.startswith("/"), path
        for method, op in ops.items():
            assert method in {"get", "post", "put", "delete", "patch", "options", "head"}
            assert op["responses"], (path, method)
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"\{([^}]+)\}", path)), (path, method)
            for status in op["responses"]:
                assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), status


def test_openapi_passes_openapi_spec_validator(openapi: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")  # in the test extras
    validator.validate(openapi)


def test_openapi_refs_resolve(openapi: dict[str, Any]) -> None:
    schemas = openapi.get("components", {}).get("schemas", {})
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(openapi)
    assert refs, "the document should reference its component schemas"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_openapi_lists_every_existing_spec_route(relay: Relay, openapi: dict[str, Any]) -> None:
    documented = {
        (method.upper(), shape(path))
        for path, ops in openapi["paths"].items()
        for method in ops
        if method in {"get", "post", "put", "delete", "patch"}
    }
    missing = [
        (method, path)
        for method, path in SPEC_ROUTES
        if route_exists(relay, method, path) and (method, shape(path)) not in documented
    ]
    assert not missing, f"routes served but not in /openapi.json: {missing}"
    # the core routes of SPEC §2 exist in any case
    for core in [
        ("POST", "/users"), ("POST", "/keys/{}"), ("GET", "/keys"), ("DELETE", "/keys/{}"),
        ("POST", "/tokens/revoke"), ("DELETE", "/users"), ("GET", "/models"),
        ("POST", "/relay"), ("POST", "/relay/{}/{}"), ("GET", "/health"), ("GET", "/version"),
        ("GET", "/openapi.json"), ("GET", "/docs"),
    ]:  # fmt: skip
        assert core in documented, core


def test_openapi_documents_only_real_routes(relay: Relay, openapi: dict[str, Any]) -> None:
    ghosts = [
        (method.upper(), path)
        for path, ops in openapi["paths"].items()
        for method in ops
        if method in {"get", "post", "put", "delete", "patch"}
        and not route_exists(relay, method.upper(), path)
    ]
    assert not ghosts, f"documented but answering 404/405: {ghosts}"


def test_openapi_bodies_match_the_code(openapi: dict[str, Any]) -> None:
    def body_schema(path: str, method: str) -> dict[str, Any]:
        op = openapi["paths"][path][method]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = openapi["components"]["schemas"][name]
        assert isinstance(schema, dict)
        return schema

    users = body_schema("/users", "post")
    assert "app_id" in users["properties"] and "app_id" in users.get("required", [])
    keys = body_schema("/keys/{provider}", "post")
    assert "key" in keys["properties"] and "key" in keys.get("required", [])
    assert "base_url" in keys["properties"]
    assert "base_url" not in keys.get("required", [])
    # token routes declare a security requirement, /health does not
    assert openapi["paths"]["/keys"]["get"].get("security")
    assert not openapi["paths"]["/health"]["get"].get("security")


def test_docs_page(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()
    assert "openapi.json" in r.text


def test_client_js_served_as_javascript(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/client.js")
    assert r.status_code == 200
    ctype = r.headers["content-type"].split(";")[0].strip()
    assert ctype in ("text/javascript", "application/javascript"), ctype
    assert "export " in r.text
    assert r.headers.get("x-content-type-options") == "nosniff"


# --- 404 / 405 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/keys/openai/extra/segments"),
        ("GET", "/relayx"),
        # The relay route matches by prefix (app.RelayResource): the same paths as its
        # pattern /relay/{provider}/{path:.*}, no more.
        ("POST", "/relay/openai"),
        ("POST", "/relay//v1/chat/completions"),
    ],
)
def test_not_found_is_json(relay: Relay, method: str, path: str) -> None:
    error_of(HTTP.request(method, f"{relay.url}{path}"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/users"),
        ("PUT", "/keys/openai"),
        ("PATCH", "/keys"),
        ("GET", "/tokens/revoke"),
        ("DELETE", "/health"),
        ("PUT", "/relay"),
        ("PUT", "/relay/openai/v1/chat/completions"),
    ],
)
def test_method_not_allowed_is_json(relay: Relay, method: str, path: str) -> None:
    r = HTTP.request(method, f"{relay.url}{path}")
    message = error_of(r, 405)
    assert method in message
    assert r.headers.get("Allow")


def test_security_headers_on_management_routes(relay: Relay) -> None:
    for path in ("/health", "/version", "/models", "/nope", "/keys"):
        r = HTTP.get(f"{relay.url}{path}")
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("referrer-policy") == "no-referrer", path
        assert "set-cookie" not in r.headers
