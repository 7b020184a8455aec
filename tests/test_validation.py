"""Input validation over real HTTP: every refusal is a 400 (or 413) JSON {"error": ...},
never a framework-default 422 {"detail": ...}; oversize bodies are refused unread."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Register
from providers.mock import MockProviders
from providers.relay import (
    Relay,
    User,
    error_of,
    http_client,
    register_user,
    relay_env,
    start_relay_process,
)

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def owner(relay: Relay) -> User:
    return register_user(relay, "validation")


@pytest.fixture(scope="module")
def small_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A relay whose REQUEST_BODY_LIMIT_BYTES is small (chunked oversize stays cheap)."""
    directory = tmp_path_factory.mktemp("relay-small-body")
    env = relay_env(mocks, directory, REQUEST_BODY_LIMIT_BYTES=str(SMALL_LIMIT))
    server = start_relay_process(env, directory)
    try:
        yield server
    finally:
        try:
            server.stop(timeout=10)
        finally:
            server.kill()


def post_raw(
    relay: Relay, path: str, content: bytes, ctype: str | None, headers: dict[str, str] | None
) -> httpx.Response:
    h = dict(headers or {})
    if ctype is not None:
        h["content-type"] = ctype
    return HTTP.post(f"{relay.url}{path}", content=content, headers=h, timeout=10)


# --- bodies that are not a JSON object ------------------------------------------------------

NOT_AN_OBJECT: list[tuple[bytes, str]] = [
    (b"{", "json"),
    (b'{"app_id": "x",}', "json"),
    (b"{'app_id': 'x'}", "json"),
    (b"\xff\xfe{}", "json"),
    (b'["app_id"]', "object"),
    (b"42", "object"),
    (b'"app_id"', "object"),
    (b"null", "object"),
    (b"true", "object"),
]


@pytest.mark.parametrize(("content", "word"), NOT_AN_OBJECT)
def test_users_body_must_be_a_json_object(relay: Relay, content: bytes, word: str) -> None:
    r = post_raw(relay, "/users", content, "application/json", None)
    assert word in error_of(r, 400).lower()


@pytest.mark.parametrize(("content", "word"), NOT_AN_OBJECT)
def test_keys_body_must_be_a_json_object(
    relay: Relay, owner: User, content: bytes, word: str
) -> None:
    r = post_raw(relay, "/keys/openai", content, "application/json", owner.headers)
    assert word in error_of(r, 400).lower()


# --- POST /users fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"appId": "x"},
        {"app_id": ""},
        {"app_id": " "},
        {"app_id": "\t\n "},
        {"app_id": "a" * 129},
        {"app_id": 7},
        {"app_id": 7.5},
        {"app_id": True},
        {"app_id": None},
        {"app_id": ["x"]},
        {"app_id": {"x": 1}},
        {"app_id": "a\x00b"},
        {"app_id": "a\nb"},
        {"app_id": "app\x1b[31m"},
        {"app_id": "a\x7f"},
        {"app_id": "a\x85"},
    ],
    ids=repr,
)
def test_app_id_validation(relay: Relay, body: dict[str, Any]) -> None:
    message = error_of(HTTP.post(f"{relay.url}/users", json=body, timeout=10), 400)
    assert "app_id" in message


@pytest.mark.parametrize("app_id", ["a", "a" * 128, "my-app.example/ü"])
def test_app_id_accepted(relay: Relay, app_id: str) -> None:
    r = HTTP.post(f"{relay.url}/users", json={"app_id": app_id}, timeout=10)
    assert r.status_code == 200, r.text


def test_json_with_charset_and_extra_fields_accepted(relay: Relay) -> None:
    r = post_raw(
        relay,
        "/users",
        b'{"app_id": "charset", "unknown": 1}',
        "application/json; charset=utf-8",
        None,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/users", "/keys/openai"])
def test_content_encoding(relay: Relay, owner: User, path: str) -> None:
    body = b'{"app_id": "gzipped", "key": "sk-gzip-test-0001"}'
    headers = {**owner.headers, "content-type": "application/json"}
    r = HTTP.post(
        f"{relay.url}{path}",
        content=gzip.compress(body),
        headers={**headers, "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    # a body that is not what its Content-Encoding says is the client's error, not a 500
    r = HTTP.post(
        f"{relay.url}{path}", content=body, headers={**headers, "content-encoding": "gzip"}
    )
    error_of(r, 400)
    # the unread rest of such a body spoils the connection: the client is told not to reuse it
    assert r.headers.get("connection", "").lower() == "close"
    r = HTTP.delete(f"{relay.url}/keys/openai", headers=owner.headers)  # same client
    assert r.status_code == 200, r.text


def test_content_encoding_on_the_relay_route(relay: Relay, register: Register) -> None:
    user = register()
    user.store_key("openai", "sk-relay-gzip-test-0002")
    r = HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": []}',
        headers={**user.headers, "content-type": "application/json", "content-encoding": "gzip"},
    )
    error_of(r, 400)


# --- POST /keys fields ------------------------------------------------------------------------

BAD_KEYS: list[Any] = [
    "a" * 9,
    "a" * 4097,
    "sk-abc def-123",
    "sk-abc\tdef-123",
    "sk-abcdef-123\n",
    "\nsk-abcdef-123",
    "sk-abc\x01def-123",
    "sk-abc\x00def-123",
    "sk-abc\x7fdef-123",
    "sk-abc\u00a0def-123",  # no-break space
    "sk-abc\u2028def-123",  # line separator
    "          ",
    1234567890123,
    12.5,
    True,
    None,
    ["sk-abcdef-123"],
    {"value": "sk-abcdef-123"},
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:40])
def test_key_validation(relay: Relay, owner: User, key: Any) -> None:
    r = HTTP.post(f"{relay.url}/keys/openai", json={"key": key}, headers=owner.headers)
    message = error_of(r, 400)
    assert "key" in message
    if isinstance(key, str) and len(key) > 10:
        assert key not in message, "a refused key must not be echoed back"


def test_key_missing(relay: Relay, owner: User) -> None:
    for body in ({}, {"base_url": "https://1.1.1.1"}, {"Key": "sk-abcdef-123"}):
        r = HTTP.post(f"{relay.url}/keys/openai", json=body, headers=owner.headers)
        assert "key" in error_of(r, 400)
    r = post_raw(relay, "/keys/openai", b"", "application/json", owner.headers)
    assert "key" in error_of(r, 400)


def test_key_length_bounds_accepted(relay: Relay, register: Register) -> None:
    user = register()
    for key in ("k" * 10, "k" * 4096, "sk-" + "".join(chr(c) for c in range(33, 127))):
        r = HTTP.post(f"{relay.url}/keys/openai", json={"key": key}, headers=user.headers)
        assert r.status_code == 200, (len(key), r.text)
        listed = HTTP.get(f"{relay.url}/keys", headers=user.headers).json()
        assert listed["keys"][0]["hint"] == key[-4:]


def test_unknown_provider_lists_supported(relay: Relay, owner: User) -> None:
    for name in ("nope", "OpenAI", "openai ", "..", "openai%2Fx"):
        r = HTTP.post(
            f"{relay.url}/keys/{name}", json={"key": "sk-abcdef-123"}, headers=owner.headers
        )
        if r.status_code in (404, 405):  # the router refused the path shape itself
            error_of(r, (404, 405))  # ("/keys/.." is "/": the landing page, GET only)
            continue
        message = error_of(r, 400)
        for supported in ("openai", "anthropic", "google", "groq", "openai-compatible"):
            assert supported in message, (name, message)
        body = r.json()
        if "supported" in body:
            assert "openai" in body["supported"]


def test_base_url_refused_for_fixed_providers(relay: Relay, owner: User) -> None:
    for provider in ("openai", "anthropic", "google"):
        r = HTTP.post(
            f"{relay.url}/keys/{provider}",
            json={"key": "sk-abcdef-123", "base_url": "https://1.1.1.1/v1"},
            headers=owner.headers,
        )
        assert "base_url" in error_of(r, 400)
    # and nothing was stored by the refused request
    listed = HTTP.get(f"{relay.url}/keys", headers=owner.headers).json()
    assert listed["providers"] == []


@pytest.mark.parametrize(
    "base_url",
    [
        "http://1.1.1.1/v1",
        "https://127.0.0.1/v1",
        "https://localhost/v1",
        "https://[::1]/v1",
        "https://10.0.0.1/v1",
        "https://192.168.1.10/v1",
        "https://172.16.0.1/v1",
        "https://100.64.0.1/v1",
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]/",
        "https://2130706433/",
        "https://0x7f.0.0.1/",
        "https://0177.0.0.1/",
        "https://0.0.0.0/",
        "https://user:pass@1.1.1.1/v1",
        "https://1.1.1.1/v1?x=1",
        "ftp://1.1.1.1/",
        "not a url",
        "",
        5,
    ],
    ids=repr,
)
def test_openai_compatible_base_url_refused(relay: Relay, owner: User, base_url: Any) -> None:
    r = HTTP.post(
        f"{relay.url}/keys/openai-compatible",
        json={"key": "sk-abcdef-123", "base_url": base_url},
        headers=owner.headers,
    )
    assert "base_url" in error_of(r, 400)


# --- Content-Type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b'{"app_id": "x"}', "text/plain"),
        (b"app_id=x", "application/x-www-form-urlencoded"),
        (b'{"app_id": "x"}', "application/x-www-form-urlencoded"),
        (b"--b\r\nContent-Disposition: form-data; name=app_id\r\n\r\nx\r\n--b--\r\n",
         "multipart/form-data; boundary=b"),
    ],
)  # fmt: skip
def test_wrong_content_type(relay: Relay, owner: User, content: bytes, ctype: str) -> None:
    before = HTTP.get(f"{relay.url}/keys", headers=owner.headers).json()
    message = error_of(post_raw(relay, "/users", content, ctype, None), 400)
    assert "content-type" in message.lower()
    key_body = content.replace(b"app_id", b"key").replace(b'"x"', b'"sk-abcdef-123"')
    r = post_raw(relay, "/keys/openai", key_body, ctype, owner.headers)
    assert "content-type" in error_of(r, 400).lower()
    assert HTTP.get(f"{relay.url}/keys", headers=owner.headers).json() == before


# --- body size --------------------------------------------------------------------------------


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (Content-Length framed) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def _refused_before_body(relay: Relay, path: str, headers: dict[str, str], length: int) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {length}\r\n"
        for name, value in headers.items():
            head += f"{name}: {value}\r\n"
        sock.sendall(head.encode() + b"\r\n" + b'{"app_id": "' + b"x" * 100)
        started = time.monotonic()
        # Only ~110 of `length` bytes were sent: the answer must come anyway, and fast.
        status, resp_headers, body = _read_response(sock, timeout=5)
        assert time.monotonic() - started < 3
    assert status == 413, (status, body)
    assert resp_headers["content-type"].startswith("application/json")
    assert resp_headers.get("connection", "").lower() == "close"
    parsed = json.loads(body)
    assert isinstance(parsed["error"], str) and "detail" not in parsed


def test_oversize_content_length_refused_unread(relay: Relay, owner: User) -> None:
    limit = int(relay.env.get("REQUEST_BODY_LIMIT_BYTES", str(10 * 1024 * 1024)))
    _refused_before_body(relay, "/users", {}, limit + 1)
    _refused_before_body(relay, "/users", {}, 10**12)
    _refused_before_body(relay, "/keys/openai", owner.headers, limit + 1)


def test_oversize_small_limit(small_relay: Relay) -> None:
    user = register_user(small_relay, "small")
    _refused_before_body(small_relay, "/users", {}, SMALL_LIMIT + 1)
    _refused_before_body(small_relay, "/keys/openai", user.headers, SMALL_LIMIT + 1)
    # at the limit is fine (the body is a valid object padded with spaces)
    body = b'{"key": "sk-at-the-limit-0001"}'
    padded = body + b" " * (SMALL_LIMIT - len(body))
    r = post_raw(small_relay, "/keys/openai", padded, "application/json", user.headers)
    assert r.status_code == 200, r.text
    r = post_raw(small_relay, "/keys/openai", padded + b" ", "application/json", user.headers)
    error_of(r, 413)


@pytest.mark.parametrize("path", ["/users", "/keys/openai"])
def test_oversize_chunked_refused(small_relay: Relay, path: str) -> None:
    user = register_user(small_relay, "small-chunked")
    with socket.create_connection(("127.0.0.1", small_relay.port), timeout=5) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            f"x-relay-token: {user.token}\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b'{"key": "' + b"k" * 1000
        sent = 0
        try:
            # Twice the limit, in 1 KiB chunks, never finishing the body (no 0-chunk).
            while sent < 2 * SMALL_LIMIT:
                piece = chunk if sent == 0 else b"k" * 1024
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
        except OSError:
            pass  # the relay may close the connection as soon as it has refused
        status, headers, body = _read_response(sock, timeout=5)
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert isinstance(json.loads(body)["error"], str)
    # the relay is still fine afterwards
    assert HTTP.get(f"{small_relay.url}/health").status_code == 200


def test_validation_costs_no_storage_write(relay: Relay, owner: User) -> None:
    """Every refusal above left the owner's key list untouched."""
    listed = HTTP.get(f"{relay.url}/keys", headers=owner.headers).json()
    assert listed == {"providers": [], "keys": []}
