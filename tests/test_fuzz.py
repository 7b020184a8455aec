"""Schemathesis against the running relay's own /openapi.json: for every operation,
schema-valid and schema-violating requests; no 5xx, and every error is JSON with an
"error" field (a string when the relay itself refuses).

Uses schemathesis' Python API (APIOperation.as_strategy) under plain Hypothesis, one
pytest item per operation: the schemathesis pytest plugin's lazy loader does not work
with pytest 9. Size is CI-friendly (FUZZ_EXAMPLES per operation and mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from providers.mock import MockProviders
from providers.relay import Relay, http_client, register_user, relay_process
from schemathesis import GenerationMode

import byok_relay.app  # noqa: F401  (registers every endpoint)
from byok_relay.api.openapi import build_openapi
from byok_relay.providers import ProviderRegistry

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
APP_SECRET = "fuzz-app-secret-0123456789abcdef"
HTTP = http_client()
SESSION = requests.Session()  # keep-alive for schemathesis' calls
SESSION.trust_env = False

# Operations taken from the code's own document (the same builder the relay serves).
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in build_openapi()["paths"].items()
    for method in item
    if method in {"get", "post", "put", "patch", "delete"}
)
# Negative (schema-violating) cases only exist where there is something to violate.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or {"parameters", "requestBody"} & set(build_openapi()["paths"][path][method.lower()])
]
# A bare string {provider} almost never names a provider: mix in real names (and real
# paths for the relay routes) so the fuzzing reaches the code behind the first check.
PROVIDERS = ProviderRegistry.load(None, {}).names
RELAY_PATHS = [
    "v1/chat/completions",
    "v1/models",
    "v1/messages",
    "v1/embeddings",
    "v1beta/models/gemini-2.0-flash:generateContent",
    "v1/audio/speech",
]
# These end or replace the caller's identity: each example gets a fresh user.
DESTRUCTIVE = {("DELETE", "/users"), ("POST", "/tokens/revoke"), ("POST", "/tokens/rotate")}
APP_SECRET_ROUTES = {("POST", "/users"), ("GET", "/stats/{app_id}")}


@pytest.fixture(scope="module")
def fuzz_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_process(
        mocks,
        tmp_path_factory.mktemp("fuzz"),
        APP_SECRET=APP_SECRET,
        UPSTREAM_TIMEOUT_S="5",
        UPSTREAM_CONNECT_TIMEOUT_S="2",
    ) as relay:
        yield relay


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_relay: Relay) -> Any:
    served = HTTP.get(f"{fuzz_relay.url}/openapi.json").json()
    assert served == build_openapi()  # the document really is the relay's
    config = schemathesis.Config.from_dict({"generation": {"max-examples": FUZZ_EXAMPLES}})
    return schemathesis.openapi.from_url(f"{fuzz_relay.url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def fuzz_user(fuzz_relay: Relay) -> Any:
    user = register_user(fuzz_relay, "fuzz")
    for provider in ("openai", "anthropic", "google"):
        user.store_key(provider, f"sk-test-FUZZ-{provider}-0000")
    return user


def check_response(method: str, path: str, response: Any, request: str) -> None:
    status = response.status_code
    assert status < 500, f"{request} -> {status}: {response.text[:500]}"
    if status < 400:
        return
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{request} -> {status} not JSON: {response.headers} {response.text[:300]}"
    )
    body = response.json()
    assert isinstance(body, dict) and "error" in body, f"{request} -> {status}: {body}"
    if not path.startswith("/relay"):  # a provider's own error may be an object
        assert isinstance(body["error"], str) and body["error"], f"{request}: {body}"
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
def test_fuzz_operation(
    fuzz_relay: Relay,
    fuzz_schema: Any,
    fuzz_user: Any,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = fuzz_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{provider}" in path:
        names = st.sampled_from(PROVIDERS)
        if "{path}" in path:
            real = st.tuples(names, st.sampled_from(RELAY_PATHS)).flatmap(
                lambda pp: operation.as_strategy(
                    generation_mode=mode, path_parameters={"provider": pp[0], "path": pp[1]}
                )
            )
        else:
            real = names.flatmap(
                lambda p: operation.as_strategy(
                    generation_mode=mode, path_parameters={"provider": p}
                )
            )
        strategy = st.one_of(real, strategy)
        if method == "POST" and path in ("/keys/{provider}", "/keys/{provider}/rotate"):
            # The document does not carry the key's length rules (10..4096): add keys of
            # a plausible length, any characters, so the store/rotate code gets reached.
            key_text = st.text(
                st.characters(exclude_categories=("C", "Z")), min_size=10, max_size=300
            )
            keyed = st.tuples(names, key_text).flatmap(
                lambda pk: operation.as_strategy(
                    generation_mode=GenerationMode.POSITIVE,
                    path_parameters={"provider": pk[0]},
                    body={"key": pk[1]},
                )
            )
            strategy = st.one_of(keyed, strategy)

    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every CI run
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if (method, path) in APP_SECRET_ROUTES:
            headers = {"authorization": f"Bearer {APP_SECRET}"}
        elif (method, path) in DESTRUCTIVE:
            headers = {"x-relay-token": register_user(fuzz_relay, "fuzz").token}
        else:
            headers = {"x-relay-token": fuzz_user.token}
        response = case.call(base_url=fuzz_relay.url, session=SESSION, headers=headers)
        check_response(method, path, response, f"{method} {case.formatted_path}")

    run()
    assert fuzz_relay.alive
    # The shared user still works: no fuzzed request broke its token or keys.
    r = HTTP.get(f"{fuzz_relay.url}/keys", headers={"x-relay-token": fuzz_user.token})
    assert r.status_code == 200, r.text


# --- raw header bytes ----------------------------------------------------------------
# Header values reach the relay as undecodable bytes (surrogate-escaped str in aiohttp):
# tokens, secrets, base URLs, request ids, origins. None of them may produce a 5xx.

_HEADERS = [
    b"x-relay-token",
    b"authorization",
    b"x-api-key",
    b"x-goog-api-key",
    b"x-relay-base-url",
    b"x-request-id",
    b"origin",
    b"anthropic-beta",
    b"x-forwarded-for",
    b"content-type",
]
_TARGETS = [
    (b"GET", b"/keys"),
    (b"POST", b"/users"),
    (b"POST", b"/relay/openai/v1/chat/completions"),
    (b"POST", b"/relay/openai-compatible/v1/chat/completions"),
    (b"POST", b"/relay/anthropic/v1/messages"),
    (b"GET", b"/metrics"),
    (b"GET", b"/stats/fuzz"),
    (b"OPTIONS", b"/relay"),
]


def _raw(relay: Relay, request: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@given(
    target=st.sampled_from(_TARGETS),
    name=st.sampled_from(_HEADERS),
    value=st.binary(max_size=120).filter(lambda b: b"\r" not in b and b"\n" not in b)
    | st.sampled_from([b"byok_rt_" + bytes([c]) * 43 for c in (0x80, 0xC3, 0xFF, 0x7F)]),
    with_token=st.booleans(),
)
@settings(
    max_examples=4 * FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_raw_header_bytes(
    fuzz_relay: Relay,
    fuzz_user: Any,
    target: tuple[bytes, bytes],
    name: bytes,
    value: bytes,
    with_token: bool,
) -> None:
    method, path = target
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if with_token and name != b"x-relay-token":
        lines.append(b"x-relay-token: " + fuzz_user.token.encode())
    lines.append(name + b": " + value)
    if method == b"OPTIONS":
        lines.append(b"access-control-request-method: POST")
    body = b'{"model":"gpt-4o-mini","app_id":"fuzz","messages":[]}' if method == b"POST" else b""
    if body:
        lines.append(b"content-length: " + str(len(body)).encode())
    status, headers, payload = _raw(fuzz_relay, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    assert status < 500, (status, name, value, payload[:300])
    if status >= 400 and "x-relay-request-id" in headers:  # the relay answered
        assert headers.get("content-type", "").startswith("application/json"), payload[:200]
        assert b'"error"' in payload
