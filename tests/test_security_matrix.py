"""The security matrix: one row per attack, sent over real HTTP (raw sockets where a
client library would clean the request up) to real relay processes, with the refusal
expected. See SECURITY.md for the threat model these rows back.

Sections: SSRF, redirects, path traversal, header injection, cross-user access,
ciphertext moved between rows, oversized input, malformed input, the APP_SECRET and
METRICS_TOKEN gates, credential-header garbage, what a stolen database holds, and the
abuse controls (TRUSTED_PROXIES, rate-limit headers, free refusals, registration limit).
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from providers.mock import MockProviders
from providers.relay import (
    CHAT,
    Relay,
    User,
    error_of,
    fake_secret,
    http_client,
    register_user,
    start_relay_process,
)
from providers.relay import relay_env as build_relay_env

from byok_relay import crypto
from byok_relay.api import endpoints, meta

APP_SECRET = "matrix-app-secret-0123456789abcdef"
METRICS_TOKEN = "matrix-metrics-token-0123456789"
BODY_LIMIT = 64 * 1024
ALLOWED_MODELS = "gpt-4o-mini,claude-3-5-haiku-*,mock-*"
OPENAI_KEY_A = "sk-test-MATRIX-A-openai-1111"
OPENAI_KEY_B = "sk-test-MATRIX-B-openai-2222"
CLAUDE = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": []}
HTTP = http_client()  # shared keep-alive client (building one per call is slow)


# --- helpers --------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json_error(self) -> str:
        import json

        assert self.headers.get("content-type", "").startswith("application/json"), self
        data = json.loads(self.body)
        assert isinstance(data.get("error"), str) and data["error"], data
        return str(data["error"])


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def raw_http(relay: Relay, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Send exact bytes (one request, Connection: close) and parse the answer."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=timeout) as sock:
        sock.sendall(request)
        raw = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            raw += data
            if _complete(raw):  # the server may keep the connection open after answering
                break
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1."), raw[:300]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return RawResponse(int(lines[0].split()[1]), headers, body)


def request_bytes(
    method: str,
    target: bytes,
    headers: list[bytes],
    body: bytes = b"",
) -> bytes:
    head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    if body:
        head.append(b"Content-Length: " + str(len(body)).encode())
    head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def healthy(relay: Relay) -> bool:
    return relay.alive and HTTP.get(f"{relay.url}/health", timeout=5).status_code == 200


def sqlite(relay: Relay) -> sqlite3.Connection:
    assert relay.db_path is not None
    conn = sqlite3.connect(relay.db_path, timeout=10)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def user_id_of(relay: Relay, token: str) -> str:
    hasher = crypto.TokenHasher(relay.env["ENCRYPTION_SECRET"], relay.env.get("TOKEN_HMAC_SECRET"))
    with sqlite(relay) as conn:
        row = conn.execute(
            "SELECT user_id FROM tokens WHERE token_hash = ?", (hasher.hash(token),)
        ).fetchone()
    assert row is not None
    return str(row[0])


def _start_many(mocks: MockProviders, factory: Any, configs: dict[str, dict[str, str]]) -> Any:
    """Start several relays in parallel (each start is mostly interpreter start-up)."""

    # Directories first, in this thread: pytest creates its base temp dir lazily, and two
    # threads doing that at once end up with different ones.
    directories = {name: factory.mktemp(f"matrix-{name}") for name in configs}

    def start(name: str) -> Relay:
        directory = directories[name]
        env = build_relay_env(mocks, directory, **configs[name])
        # Parallel starts on a busy CI machine: allow more than the default 15 s.
        return start_relay_process(env, directory, health_timeout=60)

    with ThreadPoolExecutor(len(configs)) as pool:
        futures = {name: pool.submit(start, name) for name in configs}
        relays: dict[str, Relay] = {}
        errors = []
        for name, future in futures.items():
            try:
                relays[name] = future.result()
            except Exception as exc:  # stop the others before failing
                errors.append(exc)
        if errors:
            for relay in relays.values():
                relay.kill()
            raise errors[0]
    return relays


@pytest.fixture(scope="module")
def relays(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    limits = {"RATE_LIMIT_GLOBAL": "5/minute", "RATE_LIMIT_RELAY": "2/minute"}
    started = _start_many(
        mocks,
        tmp_path_factory,
        {
            # Hardened production-like settings; every row not about rate limits uses it.
            "hardened": {
                "APP_SECRET": APP_SECRET,
                "METRICS_TOKEN": METRICS_TOKEN,
                "TOKEN_HMAC_SECRET": fake_secret("matrix-token-hmac"),
                "REQUEST_BODY_LIMIT_BYTES": str(BODY_LIMIT),
                "ALLOWED_MODELS": ALLOWED_MODELS,
                "CACHE_TTL_S": "0",  # SQLite edits below take effect at once
            },
            "untrusted": dict(limits),  # TRUSTED_PROXIES unset
            "hops": {
                **limits,
                "TRUSTED_PROXIES": "1",
                "RATE_LIMIT_REGISTER": "3/hour",
                "ALLOWED_MODELS": "gpt-4o-mini",
            },
            "cidr": {**limits, "TRUSTED_PROXIES": "127.0.0.1/32"},
            # A relay serving a LAN model server: private upstreams allowed on purpose.
            "lan": {"ALLOW_PRIVATE_UPSTREAMS": "true", "CACHE_TTL_S": "0"},
        },
    )
    try:
        yield started
    finally:
        for relay in started.values():
            with contextlib.suppress(Exception):
                relay.stop(timeout=10)
            with contextlib.suppress(Exception):
                relay.kill()


@pytest.fixture(scope="module")
def hardened(relays: Any) -> Relay:
    relay: Relay = relays["hardened"]
    return relay


@pytest.fixture(scope="module")
def alice(hardened: Relay) -> User:
    user = register_user(hardened, "matrix")
    user.store_key("openai", OPENAI_KEY_A)
    user.store_key("anthropic", "sk-ant-MATRIX-A-anthropic-3333")
    user.store_key("openrouter", "sk-or-MATRIX-A-openrouter-4444")
    user.store_key("openai-compatible", "sk-test-MATRIX-A-compat-5555")
    return user


@pytest.fixture(scope="module")
def bob(hardened: Relay) -> User:
    user = register_user(hardened, "matrix")
    user.store_key("openai", OPENAI_KEY_B)
    return user


def post(relay: Relay, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return HTTP.post(f"{relay.url}{path}", headers=headers or {}, timeout=30, **kw)


# ======================================================================================
# SSRF: client-supplied upstreams (x-relay-base-url header, stored base_url)
# ======================================================================================

SSRF_URLS = [
    "http://2130706433/",  # integer IPv4 (and http)
    "https://2130706433/",
    "https://0177.0.0.1/",  # octal
    "https://0x7f.1/",  # hex, short form
    "https://0x7f000001/",
    "https://127.1/",  # short dotted form
    "https://127.0.0.1/",
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "https://[::ffff:7f00:1]/",
    "https://[64:ff9b::7f00:1]/",  # NAT64
    "https://169.254.169.254/",  # cloud metadata
    "https://169.254.170.2/",  # ECS task credentials
    "https://[fd00:ec2::254]/",  # AWS IMDS over IPv6
    "https://metadata.google.internal/",
    "https://10.0.0.1/",
    "https://192.168.1.1/",
    "https://100.64.0.1/",  # CGNAT
    "https://0.0.0.0/",
    "https://[::]/",
    "https://localhost/",
    "https://localhost./",  # trailing dot
    "https://LOCALHOST:8443/",
    "https://ip6-localhost/",
    "https://api.localhost/",
    "https://user:pass@api.example.com/",  # userinfo
    "https://api.example.com@127.0.0.1/",
    "https://api.example.com\\@127.0.0.1/",  # parser differential
    "http://example.com/",  # plain http
    "https://api.example.com/v1?x=1",  # query
    "https://api.example.com/v1#frag",
    "https://api.example.com/%2e%2e/admin",
    "https://[fe80::1%25eth0]/",  # zone id
    "https://１２７.０.０.１/",  # noqa: RUF001  (fullwidth digits)
    "ftp://api.example.com/",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_ssrf_header_base_url_refused(
    hardened: Relay, alice: User, mocks: MockProviders, url: str
) -> None:
    r = post(
        hardened,
        "/relay/openai-compatible/v1/chat/completions",
        {**alice.headers, "x-relay-base-url": url.encode()},
        json=CHAT,
    )
    message = error_of(r, 400)
    assert "Upstream" in message, message
    assert "sk-test" not in message


@pytest.mark.parametrize("url", SSRF_URLS)
def test_ssrf_stored_base_url_refused(hardened: Relay, alice: User, url: str) -> None:
    r = post(
        hardened,
        "/keys/openai-compatible",
        alice.headers,
        json={"key": "sk-test-MATRIX-A-compat-5555", "base_url": url},
    )
    message = error_of(r, 400)
    assert "base_url" in message, message


def _names_resolving_locally() -> list[str]:
    """Host names that resolve (from /etc/hosts, no network) to a non-public address and
    are not refused by name: they exercise the resolver check itself."""
    names = []
    for name in {socket.gethostname(), "ip6-loopback"}:
        if name in ("localhost", "ip6-localhost", "ip6-loopback") or "." in name:
            continue
        try:
            infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addrs = {ipaddress.ip_address(str(i[4][0]).partition("%")[0]) for i in infos}
        if addrs and not any(a.is_global for a in addrs):
            names.append(name)
    return names


def test_ssrf_name_resolving_to_loopback(hardened: Relay, alice: User) -> None:
    names = _names_resolving_locally()
    if not names:
        pytest.skip("no local host name resolving to a private address on this machine")
    for name in names:
        r = post(
            hardened,
            "/relay/openai-compatible/v1/chat/completions",
            {**alice.headers, "x-relay-base-url": f"https://{name}/"},
            json=CHAT,
        )
        assert "non-public address" in error_of(r, 400)
        r = post(
            hardened,
            "/keys/openai-compatible",
            alice.headers,
            json={"key": "sk-test-MATRIX-A-compat-5555", "base_url": f"https://{name}:8443/v1"},
        )
        assert "non-public address" in error_of(r, 400)


@pytest.mark.parametrize("stored", ["https://127.1/", "https://[::1]/", "http://example.com/"])
def test_ssrf_stored_base_url_rechecked_on_use(hardened: Relay, stored: str) -> None:
    # A row written before a rule existed (or by hand): refused on use, not trusted.
    user = register_user(hardened, "matrix")
    user.store_key("openai-compatible", "sk-test-MATRIX-stored-6666")
    with sqlite(hardened) as conn:
        conn.execute(
            "UPDATE api_keys SET base_url = ? WHERE user_id = ? AND provider = ?",
            (stored, user_id_of(hardened, user.token), "openai-compatible"),
        )
    r = post(hardened, "/relay/openai-compatible/v1/chat/completions", user.headers, json=CHAT)
    assert "Upstream" in error_of(r, 400)
    r = post(hardened, "/keys/openai-compatible/verify", user.headers)
    assert "Upstream" in error_of(r, 400)


def test_ssrf_header_cannot_redirect_a_fixed_provider(
    hardened: Relay, alice: User, mocks: MockProviders
) -> None:
    # x-relay-base-url only matters for openai-compatible: openai goes to the operator's URL.
    mocks.openai.clear()
    r = post(
        hardened,
        "/relay/openai/v1/chat/completions",
        {**alice.headers, "x-relay-base-url": "https://169.254.169.254/"},
        json=CHAT,
    )
    assert r.status_code == 200, r.text
    assert len(mocks.openai.requests) == 1
    assert "x-relay-base-url" not in mocks.openai.last_request.headers


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://169.254.170.2/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/",
        "http://100.100.100.200/",
        "http://0.0.0.0:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
    ],
)
def test_ssrf_metadata_refused_even_with_private_upstreams(relays: Any, url: str) -> None:
    relay: Relay = relays["lan"]
    user = register_user(relay, "matrix")
    user.store_key("openai-compatible", "sk-test-MATRIX-lan-0000")
    r = post(
        relay,
        "/relay/openai-compatible/v1/chat/completions",
        {**user.headers, "x-relay-base-url": url},
        json=CHAT,
    )
    assert "Upstream" in error_of(r, 400)
    r = post(
        relay,
        "/keys/openai-compatible",
        user.headers,
        json={"key": "sk-test-MATRIX-lan-0000", "base_url": url},
    )
    error_of(r, 400)


def test_redirect_from_client_supplied_upstream_is_not_followed(
    relays: Any, mocks: MockProviders
) -> None:
    # Through the guarded session (client-supplied base URL), as on a LAN relay.
    relay: Relay = relays["lan"]
    user = register_user(relay, "matrix")
    user.store_key("openai-compatible", "sk-test-MATRIX-lan-1111", base_url=mocks.openai.url)
    mocks.openai.clear()
    r = post(
        relay,
        "/relay/openai-compatible/v1/chat/completions",
        user.headers,
        json={**CHAT, "model": "mock-redirect"},
    )
    assert r.status_code == 302, r.text
    assert len(mocks.openai.requests) == 1


def test_header_cannot_send_stored_key_to_another_host(relays: Any, mocks: MockProviders) -> None:
    relay: Relay = relays["lan"]
    user = register_user(relay, "matrix")
    user.store_key("openai-compatible", "sk-test-MATRIX-lan-2222", base_url=mocks.openai.url)
    mocks.openai.clear()
    mocks.generic.clear()
    r = post(
        relay,
        "/relay/openai-compatible/v1/chat/completions",
        {**user.headers, "x-relay-base-url": mocks.generic.url},
        json=CHAT,
    )
    assert "bound to the base_url" in error_of(r, 400)
    # The same base URL in the header is fine.
    r = post(
        relay,
        "/relay/openai-compatible/v1/chat/completions",
        {**user.headers, "x-relay-base-url": mocks.openai.url},
        json=CHAT,
    )
    assert r.status_code == 200, r.text
    leaked = [
        q
        for q in mocks.generic.requests
        if "sk-test-MATRIX-lan-2222" in q.headers.get("authorization", "")
    ]
    assert leaked == [], "the stored key went to a host other than its stored base_url"


def test_redirect_to_private_address_is_not_followed(
    hardened: Relay, alice: User, mocks: MockProviders
) -> None:
    # The mock answers 302 Location: http://127.0.0.1:1/evil. Listen there if we may.
    listener: socket.socket | None = None
    with contextlib.suppress(OSError):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 1))
        listener.listen(8)
        listener.settimeout(0.5)
    try:
        mocks.openai.clear()
        body = {**CHAT, "model": "mock-redirect"}
        r = post(hardened, "/relay/openai/v1/chat/completions", alice.headers, json=body)
        assert r.status_code == 302, r.text  # handed back, not followed
        assert len(mocks.openai.requests) == 1
        if listener is not None and listener.getsockname()[1] == 1:
            with pytest.raises(TimeoutError):
                listener.accept()  # nobody connected to the Location
    finally:
        if listener is not None:
            listener.close()


# ======================================================================================
# Path traversal on /relay/{provider}/{path} (raw request targets, nothing normalised
# by a client library)
# ======================================================================================

TRAVERSAL = [
    b"/relay/openai/v1/chat/../../admin",
    b"/relay/openai/v1/chat/completions/../../../../etc/passwd",
    b"/relay/openai/v1/%2e%2e/%2e%2e/admin",
    b"/relay/openai/v1/%2E%2E/%2e%2e/%2e%2e/x",
    b"/relay/openai/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/relay/openai/v1%2fchat%2fcompletions",
    b"/relay/openai/v1/chat%2Fcompletions",
    b"/relay/openai/v1/models/..%2f..%2fadmin",
    b"/relay/openai/v1%5cchat%5ccompletions",
    b"/relay/openai/v1\\chat\\completions",
    b"/relay/openai/v1/chat/completions%00",
    b"/relay/openai/v1/models/%00/x",
    b"/relay/openai//v1/chat/completions",
    b"/relay/openai/v1//chat/completions",
    b"/relay/openai/v1/%252e%252e/admin",  # double encoding stays literal
    b"/relay/openai/v1/chat/completions;jsessionid=x",
    b"/relay/openai/v1/chat/completions/.",
    b"/relay/openai/" + b"a/" * 3000,  # overlong but under the parser's line limit
    b"/relay/openai/v1/" + b"a" * 9000,  # over the HTTP parser's 8190-byte line limit
    b"/relay/openai/v1/models/\xff\xfe",  # raw non-ASCII bytes
    b"/relay/openai/v1/models/%c0%ae%c0%ae/x",  # overlong UTF-8 dots
    b"/relay/openai/v1/admin%23/chat/completions",
    b"/relay/openai/v1/chat/completions%3fx=1",
]


@pytest.mark.parametrize("target", TRAVERSAL, ids=lambda t: t[:60].decode("latin-1"))
def test_path_traversal_refused(
    hardened: Relay, alice: User, mocks: MockProviders, target: bytes
) -> None:
    mocks.openai.clear()
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    r = raw_http(
        hardened,
        request_bytes(
            "POST",
            target,
            [b"x-relay-token: " + alice.token.encode(), b"content-type: application/json"],
            body,
        ),
    )
    # 403 from the relay's path check; 400 where aiohttp's HTTP parser refuses first.
    assert r.status in (400, 403), (r.status, r.body[:300])
    if r.headers.get("x-relay-request-id"):  # answered by the relay, not the parser
        assert r.status == 403, r
        assert "ath" in r.json_error()
    assert mocks.openai.requests == []  # nothing reached the provider


@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        (b"/relay/openai/v1/./chat/completions", "/v1/chat/completions"),
        (b"/relay/openai/v1/../v1/chat/completions", "/v1/chat/completions"),
        (b"/relay/openai/v1/chat/%63ompletions", "/v1/chat/completions"),
    ],
)
def test_path_normalised_before_the_allowlist(
    hardened: Relay, alice: User, mocks: MockProviders, target: bytes, upstream: str
) -> None:
    # Control rows: the provider sees exactly the path the allowlist approved.
    mocks.openai.clear()
    r = raw_http(
        hardened,
        request_bytes(
            "POST",
            target,
            [b"x-relay-token: " + alice.token.encode(), b"content-type: application/json"],
            b'{"model":"gpt-4o-mini","messages":[]}',
        ),
    )
    assert r.status == 200, r
    assert [q.path for q in mocks.openai.requests] == [upstream]


# ======================================================================================
# Header injection: CR/LF (and friends) inside a forwarded header value
# ======================================================================================

INJECTION_REFUSED = {
    "bare CR": b"anthropic-beta: tools-2024\rx-injected: yes",
    "bare LF": b"anthropic-beta: tools-2024\nx-injected: yes",
    "obs-fold": b"anthropic-beta: tools-2024\r\n x-injected: yes",
    "NUL": b"anthropic-beta: tools-2024\x00x-injected: yes",
    "request smuggled after the headers": b"anthropic-beta: a\r\n\r\nGET /health HTTP/1.1",
    "space before colon": b"anthropic-beta : a",
    "CR in name": b"anthropic-beta\r: a",
}
INJECTION_INERT = {
    "percent-encoded CRLF": b"anthropic-beta: tools-2024%0d%0ax-injected: yes",
    "U+2028 line separator": "anthropic-beta: tools-2024\u2028x-injected: yes".encode(),
    "C1 NEL byte": b"anthropic-beta: tools-2024\x85x-injected: yes",
}


def _messages_with_header(relay: Relay, user: User, header: bytes) -> Any:
    """POST /relay/anthropic/v1/messages as raw bytes, with one extra raw header line."""
    body = b'{"model":"claude-3-5-haiku-20241022","max_tokens":8,"messages":[]}'
    head = [b"x-relay-token: " + user.token.encode(), b"content-type: application/json", header]
    return raw_http(relay, request_bytes("POST", b"/relay/anthropic/v1/messages", head, body))


@pytest.mark.parametrize("header", INJECTION_REFUSED.values(), ids=INJECTION_REFUSED.keys())
def test_header_injection_refused(
    hardened: Relay, alice: User, mocks: MockProviders, header: bytes
) -> None:
    mocks.anthropic.clear()
    r = _messages_with_header(hardened, alice, header)
    assert r.status == 400, r
    assert mocks.anthropic.requests == []
    assert healthy(hardened)


@pytest.mark.parametrize("header", INJECTION_INERT.values(), ids=INJECTION_INERT.keys())
def test_header_injection_inert_values_stay_one_header(
    hardened: Relay, alice: User, mocks: MockProviders, header: bytes
) -> None:
    mocks.anthropic.clear()
    r = _messages_with_header(hardened, alice, header)
    assert r.status in (200, 400), r
    for seen in mocks.anthropic.requests:
        assert "x-injected" not in seen.headers
        for value in seen.headers.getall("anthropic-beta", []):
            assert "\r" not in value and "\n" not in value


def test_header_injection_openrouter_title(
    hardened: Relay, alice: User, mocks: MockProviders
) -> None:
    mocks.openai.clear()
    r = raw_http(
        hardened,
        request_bytes(
            "POST",
            b"/relay/openrouter/api/v1/chat/completions",
            [
                b"x-relay-token: " + alice.token.encode(),
                b"content-type: application/json",
                b"X-Title: My App\nSet-Cookie: injected=1",
                b"HTTP-Referer: https://a.example\rx: y",
            ],
            b'{"model":"gpt-4o-mini","messages":[]}',
        ),
    )
    assert r.status == 400, r
    assert mocks.openai.requests == []


# ======================================================================================
# One user against another user's keys
# ======================================================================================


def test_token_of_one_user_cannot_use_list_or_delete_anothers_keys(
    hardened: Relay, mocks: MockProviders
) -> None:
    owner = register_user(hardened, "matrix")
    owner.store_key("openai", OPENAI_KEY_B)
    other = register_user(hardened, "matrix")  # no keys at all
    mocks.openai.clear()
    # use
    r = post(hardened, "/relay/openai/v1/chat/completions", other.headers, json=CHAT)
    assert "POST /keys/openai" in error_of(r, 400)
    r = post(hardened, "/relay", other.headers, json=CHAT)
    error_of(r, 400)
    assert mocks.openai.requests == []
    # verify / rotate act on the caller's own (absent) key
    error_of(post(hardened, "/keys/openai/verify", other.headers), 400)
    # list
    r = HTTP.get(f"{hardened.url}/keys", headers=other.headers)
    assert r.json() == {"providers": [], "keys": []}
    # delete
    r = HTTP.delete(f"{hardened.url}/keys/openai", headers=other.headers)
    assert r.status_code == 200 and r.json()["deleted"] is False
    r = post(hardened, "/relay/openai/v1/chat/completions", owner.headers, json=CHAT)
    assert r.status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {OPENAI_KEY_B}"
    # stats are per caller
    r = HTTP.get(f"{hardened.url}/stats", headers=other.headers)
    assert r.status_code == 200 and r.json()["total"] == 0


@pytest.mark.parametrize(
    "headers_of",
    [
        # x-relay-token wins over everything: the other user's token elsewhere is ignored
        lambda a, b: {"x-relay-token": a, "authorization": f"Bearer {b}"},
        lambda a, b: {"x-relay-token": a, "x-api-key": b, "x-goog-api-key": b},
        lambda a, b: {"authorization": f"Bearer {a}", "x-api-key": b},
    ],
    ids=["token+bearer", "token+api-key", "bearer+api-key"],
)
def test_credential_precedence_never_mixes_users(
    hardened: Relay, mocks: MockProviders, headers_of: Any
) -> None:
    a = register_user(hardened, "matrix")  # no key
    b = register_user(hardened, "matrix")
    b.store_key("openai", OPENAI_KEY_B)
    mocks.openai.clear()
    r = post(hardened, "/relay/openai/v1/chat/completions", headers_of(a.token, b.token), json=CHAT)
    error_of(r, 400)  # acted as A, who has no key
    assert mocks.openai.requests == []


@pytest.mark.parametrize(
    "value",
    [
        "byok_rt_",
        "byok_rt_" + "A" * 43 + "A",
        "byok_rt_" + "A" * 42 + "=",
        "byok_rt_" + "A" * 42 + "\u00e9",
        "' OR 1=1 --" + "x" * 40,
        "Bearer",
    ],
)
def test_garbage_tokens_are_401(hardened: Relay, value: str) -> None:
    for header in ("x-relay-token", "x-api-key"):
        r = HTTP.get(f"{hardened.url}/keys", headers={header: value.encode("utf-8")})
        error_of(r, 401)


@pytest.mark.parametrize(
    "header",
    [
        b"x-relay-token: byok_rt_" + b"\xff" * 43,
        b"authorization: Bearer byok_rt_" + b"\xfe" * 43,
        b"x-api-key: byok_rt_" + b"\x80" * 43,
        b"x-goog-api-key: byok_rt_" + b"\xc3\xa9" * 21 + b"a",
    ],
)
def test_non_utf8_token_bytes_are_401_not_500(hardened: Relay, header: bytes) -> None:
    # Fixed: undecodable bytes reached the HMAC (UnicodeEncodeError -> 500).
    for method, target in (("GET", b"/keys"), ("POST", b"/relay/openai/v1/chat/completions")):
        r = raw_http(hardened, request_bytes(method, target, [header]))
        assert r.status == 401, r
        assert "token" in r.json_error()


# ======================================================================================
# Ciphertext moved between rows: the associated data (user, provider) must not match
# ======================================================================================


def _row(conn: sqlite3.Connection, user_id: str, provider: str) -> tuple[str, bytes]:
    row = conn.execute(
        "SELECT key_version, ciphertext FROM api_keys WHERE user_id = ? AND provider = ?",
        (user_id, provider),
    ).fetchone()
    assert row is not None
    return str(row[0]), bytes(row[1])


@pytest.mark.parametrize("move", ["other-user", "other-provider", "flipped-byte"])
def test_ciphertext_copied_between_rows_fails_to_decrypt(
    hardened: Relay, mocks: MockProviders, move: str
) -> None:
    a = register_user(hardened, "matrix")
    b = register_user(hardened, "matrix")
    a.store_key("openai", OPENAI_KEY_A)
    a.store_key("anthropic", "sk-ant-MATRIX-A-victim-7777")
    b.store_key("openai", OPENAI_KEY_B)
    a_id, b_id = user_id_of(hardened, a.token), user_id_of(hardened, b.token)
    with sqlite(hardened) as conn:
        if move == "other-user":  # A's sealed key pasted into B's row
            target, provider = b, "openai"
            version, blob = _row(conn, a_id, "openai")
            where = (b_id, "openai")
        elif move == "other-provider":  # A's openai key pasted into A's anthropic row
            target, provider = a, "anthropic"
            version, blob = _row(conn, a_id, "openai")
            where = (a_id, "anthropic")
        else:  # one bit flipped in B's own ciphertext
            target, provider = b, "openai"
            version, blob = _row(conn, b_id, "openai")
            blob = blob[:-1] + bytes([blob[-1] ^ 1])
            where = (b_id, "openai")
        conn.execute(
            "UPDATE api_keys SET key_version = ?, ciphertext = ?"
            " WHERE user_id = ? AND provider = ?",
            (version, blob, *where),
        )
    mocks.openai.clear()
    mocks.anthropic.clear()
    path, body = (
        ("/relay/openai/v1/chat/completions", CHAT)
        if provider == "openai"
        else ("/relay/anthropic/v1/messages", CLAUDE)
    )
    message = error_of(post(hardened, path, target.headers, json=body), 500)
    assert "cannot be decrypted" in message and f"POST /keys/{provider}" in message, message
    assert mocks.openai.requests == [] and mocks.anthropic.requests == []
    assert "sk-" not in message
    message = error_of(post(hardened, f"/keys/{provider}/verify", target.headers), 500)
    assert f"POST /keys/{provider}" in message
    # The victim is unaffected; storing the key again repairs the damaged row.
    if move == "other-user":
        r = post(hardened, "/relay/openai/v1/chat/completions", a.headers, json=CHAT)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == f"Bearer {OPENAI_KEY_A}"
    target.store_key(provider, "sk-test-MATRIX-repaired-8888")
    r = post(hardened, path, target.headers, json=body)
    assert r.status_code == 200, r.text


# ======================================================================================
# Oversized input
# ======================================================================================


@pytest.mark.parametrize(
    "path",
    ["/relay/openai/v1/chat/completions", "/relay", "/keys/openai", "/keys/openai/rotate"],
)
def test_oversized_body_413(hardened: Relay, alice: User, mocks: MockProviders, path: str) -> None:
    mocks.openai.clear()
    big = b'{"model":"gpt-4o-mini","pad":"' + b"x" * (BODY_LIMIT + 10) + b'"}'
    headers = {**alice.headers, "content-type": "application/json"}
    message = error_of(post(hardened, path, headers, content=big), 413)
    assert "limit" in message or "large" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the bytes read
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    error_of(post(hardened, path, headers, content=chunks()), 413)
    assert mocks.openai.requests == []


def test_oversized_body_refused_from_the_header_alone(hardened: Relay, alice: User) -> None:
    # Content-Length of 1 GB, 10 bytes sent: the answer must come without the body.
    request = (
        b"POST /relay/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"x-relay-token: " + alice.token.encode() + b"\r\ncontent-type: application/json\r\n"
        b'Content-Length: 1000000000\r\nConnection: close\r\n\r\n{"model":'
    )
    started = time.monotonic()
    r = raw_http(hardened, request, timeout=5)
    assert r.status == 413, r
    assert time.monotonic() - started < 4
    assert "limit" in r.json_error()


def test_register_body_over_limit(hardened: Relay) -> None:
    auth = {"authorization": f"Bearer {APP_SECRET}", "content-type": "application/json"}
    body = b'{"app_id":"' + b"a" * (BODY_LIMIT + 1) + b'"}'
    error_of(post(hardened, "/users", auth, content=body), 413)


@pytest.mark.parametrize(
    "extra",
    [
        [b"x-big: " + b"A" * 9000],
        [b"x-relay-token: byok_rt_" + b"S" * 9000],
        [b"x-h%d: v" % i for i in range(300)],
        [b"x-h%d: %s" % (i, b"v" * 8000) for i in range(40)],
    ],
    ids=["one 9 kB header", "9 kB token", "300 headers", "320 kB of headers"],
)
def test_oversized_headers_refused_without_crash(
    hardened: Relay, alice: User, extra: list[bytes]
) -> None:
    request = request_bytes("GET", b"/keys", [b"x-relay-token: " + alice.token.encode(), *extra])
    r = raw_http(hardened, request)
    assert r.status in (200, 400, 431), r  # within aiohttp's limits a request is fine
    assert healthy(hardened)
    assert "SSSSSSSSSS" not in hardened.log_text()  # never logged


# ======================================================================================
# Malformed input and wrong content types on management routes
# ======================================================================================

MALFORMED = [
    ("application/json", b"{bad json"),
    ("application/json", b"[]"),
    ("application/json", b'"a string"'),
    ("application/json", b"null"),
    ("application/json", b"123"),
    ("application/json", b'{"key": 12345678901}'),
    ("application/json", b'{"key": ["sk-test-0000000000"]}'),
    ("application/json", b'{"key": null}'),
    ("application/json", b'{"key": "sk-test-\\u0000-0000000"}'),
    ("application/json", b'{"key": "sk-test\\n-00000000000"}'),
    ("application/json", b'{"key": "' + b"k" * 5000 + b'"}'),
    ("application/json", b'{"key": "sk-test-\xff\xfe-0000000"}'),
    ("application/json", b"[" * 5000 + b"]" * 5000),
    ("application/json", b'{"key": 1e999}'),
    ("text/plain", b'{"key": "sk-test-0000000000"}'),
    ("application/x-www-form-urlencoded", b"key=sk-test-0000000000"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="key"'),
]


@pytest.mark.parametrize(
    ("ctype", "body"), MALFORMED, ids=[f"{c[:12]}:{b[:20]!r}" for c, b in MALFORMED]
)
def test_malformed_management_bodies_are_400(
    hardened: Relay, alice: User, ctype: str, body: bytes
) -> None:
    for path in ("/keys/openai", "/keys/openai/rotate"):
        r = post(hardened, path, {**alice.headers, "content-type": ctype}, content=body)
        error_of(r, 400)
    # The stored key is untouched by any of it.
    r = post(hardened, "/relay/openai/v1/chat/completions", alice.headers, json=CHAT)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"{bad", b"[1,2]", b'{"model": 5}', b'{"model": ""}', b"", b'{"model": "no-such-thing-x"}'],
)
def test_malformed_unified_relay_bodies_are_400(hardened: Relay, alice: User, body: bytes) -> None:
    r = post(
        hardened, "/relay", {**alice.headers, "content-type": "application/json"}, content=body
    )
    error_of(r, 400)


@pytest.mark.parametrize(
    "body", [b"{bad", b'{"app_id": ""}', b'{"app_id": 7}', b'{"app_id": "' + b"a" * 129 + b'"}']
)
def test_malformed_registration_is_400(hardened: Relay, body: bytes) -> None:
    auth = {"authorization": f"Bearer {APP_SECRET}", "content-type": "application/json"}
    error_of(post(hardened, "/users", auth, content=body), 400)


def test_allowlist_applies_to_json_sent_as_text_plain(
    hardened: Relay, alice: User, mocks: MockProviders
) -> None:
    mocks.openai.clear()
    body = b'{"model":"gpt-4o","messages":[]}'  # gpt-4o is not in ALLOWED_MODELS
    r = post(
        hardened,
        "/relay/openai/v1/chat/completions",
        {**alice.headers, "content-type": "text/plain"},
        content=body,
    )
    error_of(r, 403)
    assert mocks.openai.requests == []


# --- bodies a strict parser refuses must not dodge the allowlist ----------------------


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(
            {},
            {"data": {"model": "whisper-1"}, "files": {"file": ("a.wav", b"RIFF0000WAVE")}},
            id="multipart model field",
        ),
        pytest.param(
            {"content-type": "application/json"},
            {"content": b'\xef\xbb\xbf{"model":"gpt-4o","messages":[]}'},
            id="BOM-prefixed JSON",
        ),
        pytest.param(
            {"content-type": "application/json"},
            {"content": b'{"model":"gpt-4o","messages":[],"x":"\\ud800"}'},
            id="lone surrogate escape",
        ),
    ],
)
def test_allowlist_cannot_be_dodged_by_body_encoding(
    hardened: Relay, alice: User, mocks: MockProviders, headers: dict[str, str], body: Any
) -> None:
    mocks.openai.clear()
    path = (
        "/relay/openai/v1/audio/transcriptions"
        if "files" in body
        else "/relay/openai/v1/chat/completions"
    )
    r = post(hardened, path, {**alice.headers, **headers}, **body)
    # Fail closed: a body whose model cannot be read must not reach the provider.
    assert r.status_code in (400, 403), r.text
    assert mocks.openai.requests == []


def test_disallowed_model_403(hardened: Relay, alice: User, mocks: MockProviders) -> None:
    mocks.openai.clear()
    for path in ("/relay", "/relay/openai/v1/chat/completions"):
        r = post(hardened, path, alice.headers, json={**CHAT, "model": "gpt-4o"})
        assert "not allowed" in error_of(r, 403)
    r = post(hardened, "/relay", alice.headers, json={**CHAT, "model": "openai/GPT-4O"})
    error_of(r, 403)
    assert mocks.openai.requests == []


# ======================================================================================
# APP_SECRET and METRICS_TOKEN gates (timing-safe comparison)
# ======================================================================================

GATE_CASES = [
    ({}, 401),
    ({"authorization": "Bearer"}, 401),
    ({"authorization": f"Bearer {APP_SECRET[:-1]}"}, 401),  # prefix
    ({"authorization": f"Bearer {APP_SECRET}x"}, 401),  # extension
    ({"authorization": f"Bearer {APP_SECRET.upper()}"}, 401),
    ({"authorization": f"Basic {APP_SECRET}"}, 401),
    ({"authorization": APP_SECRET}, 401),
    ({"x-relay-token": APP_SECRET}, 401),
    ({"authorization": f"Bearer {APP_SECRET}"}, 200),
]


@pytest.mark.parametrize(("headers", "status"), GATE_CASES)
def test_app_secret_gate(hardened: Relay, headers: dict[str, str], status: int) -> None:
    r = post(hardened, "/users", headers, json={"app_id": "gate"})
    if status == 200:
        assert r.status_code == 200, r.text
        assert r.json()["token"].startswith("byok_rt_")
        r = HTTP.get(f"{hardened.url}/stats/gate", headers=headers)
        assert r.status_code == 200, r.text
    else:
        assert "APP_SECRET" in error_of(r, 401)
        error_of(HTTP.get(f"{hardened.url}/stats/gate", headers=headers), 401)


@pytest.mark.parametrize(
    "value", [b"Bearer \xff\xfe\xfd", b"Bearer " + APP_SECRET.encode() + b"\xff"]
)
def test_app_secret_gate_non_utf8_bytes_401_not_500(hardened: Relay, value: bytes) -> None:
    # Fixed: undecodable bytes made the constant-time comparison raise (500).
    for method, target in (("POST", b"/users"), ("GET", b"/stats/gate"), ("GET", b"/metrics")):
        r = raw_http(
            hardened,
            request_bytes(
                method,
                target,
                [b"authorization: " + value, b"content-type: application/json"],
                b'{"app_id":"x"}' if method == "POST" else b"",
            ),
        )
        assert r.status == 401, (target, r)
        r.json_error()


def test_metrics_token_gate(hardened: Relay) -> None:
    url = f"{hardened.url}/metrics"
    error_of(HTTP.get(url), 401)
    error_of(HTTP.get(url, headers={"authorization": f"Bearer {METRICS_TOKEN}0"}), 401)
    error_of(HTTP.get(url, headers={"authorization": f"Bearer {APP_SECRET}"}), 401)
    r = HTTP.get(url, headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "byok_relay" in r.text


def test_secret_gates_compare_in_constant_time() -> None:
    # Source inspection, not timing: the gates go through crypto.constant_time_equals,
    # which is hmac.compare_digest, and never compare secrets with ==.
    helper = inspect.getsource(crypto.constant_time_equals)
    assert "hmac.compare_digest(" in helper
    assert "constant_time_equals(" in inspect.getsource(endpoints.bearer_matches)
    for gate in (endpoints.require_app_secret, meta.metrics):
        source = inspect.getsource(gate)
        assert "bearer_matches(" in source, gate
        assert "get_secret_value() ==" not in source and "== secret" not in source
    assert crypto.constant_time_equals("same", "same")
    assert not crypto.constant_time_equals("same", "Same")
    assert not crypto.constant_time_equals("\udcff", "x")  # no exception on junk


# ======================================================================================
# What a stolen database holds
# ======================================================================================


def test_database_holds_no_token_and_no_key_in_clear(hardened: Relay, alice: User) -> None:
    assert hardened.db_path is not None
    blobs = b""
    for suffix in ("", "-wal", "-shm"):
        path = hardened.db_path.with_name(hardened.db_path.name + suffix)
        if path.exists():
            blobs += path.read_bytes()
    assert blobs
    for secret in (alice.token, alice.token[len("byok_rt_") :], OPENAI_KEY_A, "MATRIX-A-openai"):
        assert secret.encode() not in blobs, secret
    assert (hardened.db_path.stat().st_mode & 0o777) == 0o600


def test_logs_hold_no_token_and_no_key(hardened: Relay, alice: User) -> None:
    post(hardened, "/relay/openai/v1/chat/completions", alice.headers, json=CHAT)
    log = hardened.log_text()
    assert "request" in log
    for secret in (alice.token, OPENAI_KEY_A, APP_SECRET, METRICS_TOKEN, "sk-test-MATRIX"):
        assert secret not in log, secret


# ======================================================================================
# Abuse controls: client address, rate-limit headers, free refusals, registrations
# ======================================================================================


def _get_keys(
    relay: Relay, token: str, xff: str | list[str] | None = None, client: httpx.Client | None = None
) -> httpx.Response:
    headers: list[tuple[str, str]] = [("x-relay-token", token)]
    for value in [xff] if isinstance(xff, str) else xff or []:
        headers.append(("x-forwarded-for", value))
    return (client or HTTP).get(f"{relay.url}/keys", headers=headers)


def _assert_429_headers(r: httpx.Response, limit: int, window_s: int = 60) -> None:
    error_of(r, 429)
    assert r.headers["RateLimit-Limit"] == str(limit)
    assert r.headers["RateLimit-Remaining"] == "0"
    reset = int(r.headers["RateLimit-Reset"])
    retry = int(r.headers["Retry-After"])
    assert 0 < reset <= window_s and 0 < retry <= window_s
    exposed = r.headers.get("access-control-expose-headers", "")
    assert "Retry-After".lower() in exposed.lower() or not exposed


def _token(relay: Relay, xff: str | None = None) -> str:
    headers = {"x-forwarded-for": xff} if xff else {}
    r = HTTP.post(f"{relay.url}/users", json={"app_id": "abuse"}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def test_spoofed_xff_ignored_without_trusted_proxies(relays: Any) -> None:
    relay: Relay = relays["untrusted"]
    for _ in range(8):  # /health is never counted
        assert HTTP.get(f"{relay.url}/health").status_code == 200
    token = _token(relay, "203.0.113.1")  # hit 1 of 5 for 127.0.0.1
    for i in range(4):
        r = _get_keys(relay, token, f"198.51.100.{i + 10}")
        assert r.status_code == 200, (i, r.text)
    r = _get_keys(relay, token, "198.51.100.99")
    _assert_429_headers(r, 5)
    assert "address" in r.json()["error"]
    # Several header lines, a chain, garbage: still the same socket peer.
    for spoof in (["1.1.1.1", "2.2.2.2"], "3.3.3.3, 4.4.4.4", "not-an-ip", ""):
        assert _get_keys(relay, token, spoof).status_code == 429


def test_trusted_hop_uses_the_forwarded_client(relays: Any) -> None:
    relay: Relay = relays["hops"]
    token = _token(relay, "198.51.100.200")
    for _ in range(5):
        assert _get_keys(relay, token, "198.51.100.1").status_code == 200
    _assert_429_headers(_get_keys(relay, token, "198.51.100.1"), 5)
    # Another forwarded client has its own bucket.
    assert _get_keys(relay, token, "198.51.100.2").status_code == 200
    # A client-sent entry left of the proxy's does not change the bucket.
    for i in range(5):
        r = _get_keys(relay, token, f"10.9.9.{i}, 198.51.100.3")
        assert r.status_code == 200, (i, r.text)
    assert _get_keys(relay, token, "10.9.9.77, 198.51.100.3").status_code == 429


def test_trusted_hop_with_client_sent_header_line(relays: Any) -> None:
    # A proxy that adds its own X-Forwarded-For line after the client's (instead of
    # appending to it) must still win: the lines form one list, in order (RFC 9110 5.3).
    # Fixed in ratelimit.py: only the first line was read, so the client chose its bucket.
    relay: Relay = relays["hops"]
    token = _token(relay, "198.51.100.201")
    for i in range(5):
        r = _get_keys(relay, token, [f"10.8.8.{i}", "198.51.100.4"])
        assert r.status_code == 200, (i, r.text)
    assert _get_keys(relay, token, ["10.8.8.99", "198.51.100.4"]).status_code == 429


def test_trusted_cidr_believes_only_that_peer(relays: Any) -> None:
    relay: Relay = relays["cidr"]
    token = _token(relay, "198.51.100.202")
    for _ in range(5):
        assert _get_keys(relay, token, "198.51.100.9").status_code == 200
    _assert_429_headers(_get_keys(relay, token, "198.51.100.9"), 5)
    assert _get_keys(relay, token, "198.51.100.10").status_code == 200
    # Rightmost untrusted entry is the client.
    for i in range(5):
        assert _get_keys(relay, token, f"10.7.7.{i}, 198.51.100.11").status_code == 200
    assert _get_keys(relay, token, "198.51.100.11").status_code == 429
    # A peer outside the CIDR (127.0.0.2) is not believed: XFF from it is ignored.
    try:
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=10) as other:
            statuses = [
                _get_keys(relay, token, f"198.51.100.{50 + i}", other).status_code for i in range(6)
            ]
    except httpx.ConnectError:
        pytest.skip("cannot bind 127.0.0.2 as a source address here")
    assert statuses == [200] * 5 + [429], statuses


def test_refused_path_or_model_costs_no_quota(relays: Any, mocks: MockProviders) -> None:
    """A refused path or provider costs no quota at all (it is refused before the body
    or the token is read); a refused model costs no per-token quota (it is refused after
    authentication, so it counts against its address like any authenticated request)."""
    relay: Relay = relays["hops"]  # RATE_LIMIT_RELAY=2/minute, ALLOWED_MODELS=gpt-4o-mini
    token = _token(relay, "198.51.100.210")
    r = HTTP.post(
        f"{relay.url}/keys/openai",
        json={"key": "sk-test-ABUSE-00000000"},
        headers={"x-relay-token": token, "x-forwarded-for": "198.51.100.210"},
    )
    assert r.status_code == 200, r.text
    headers = {"x-relay-token": token, "x-forwarded-for": "198.51.100.5"}
    mocks.openai.clear()
    for _ in range(6):  # RATE_LIMIT_GLOBAL is 5/minute: none of these count
        error_of(HTTP.post(f"{relay.url}/relay/openai/v1/admin", json=CHAT, headers=headers), 403)
        error_of(
            HTTP.post(f"{relay.url}/relay/openai/v1/%2e%2e/x", json=CHAT, headers=headers), 403
        )
        error_of(HTTP.post(f"{relay.url}/relay/nope/v1/x", json=CHAT, headers=headers), 400)
    for i in range(3):  # each from its own address: they cost that address one request
        other = {"x-relay-token": token, "x-forwarded-for": f"198.51.100.{220 + i}"}
        error_of(
            HTTP.post(f"{relay.url}/relay", json={**CHAT, "model": "gpt-4o"}, headers=other), 403
        )
        error_of(
            HTTP.post(
                f"{relay.url}/relay/openai/v1/chat/completions",
                json={**CHAT, "model": "o1"},
                headers=other,
            ),
            403,
        )
    assert mocks.openai.requests == []
    ok = [
        HTTP.post(f"{relay.url}/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
        for _ in range(3)
    ]
    assert [r.status_code for r in ok[:2]] == [200, 200], [r.text for r in ok]
    _assert_429_headers(ok[2], 2)
    assert "relay token" in ok[2].json()["error"]


def test_registration_limit_per_ip(relays: Any) -> None:
    relay: Relay = relays["hops"]  # RATE_LIMIT_REGISTER=3/hour
    for _ in range(3):
        _token(relay, "198.51.100.6")
    r = HTTP.post(
        f"{relay.url}/users", json={"app_id": "abuse"}, headers={"x-forwarded-for": "198.51.100.6"}
    )
    _assert_429_headers(r, 3, window_s=3600)
    assert "registrations" in r.json()["error"]
    # Invalid bodies are refused before the limiter: they cost no registration.
    r = HTTP.post(
        f"{relay.url}/users",
        content=b"{bad",
        headers={"x-forwarded-for": "198.51.100.7", "content-type": "application/json"},
    )
    error_of(r, 400)
    for _ in range(3):
        _token(relay, "198.51.100.7")  # another address, its own allowance


def test_concurrent_abuse_does_not_crash(hardened: Relay, alice: User) -> None:
    # A burst of mixed junk from many connections at once; the relay stays up.
    errors: list[str] = []

    def hammer(i: int) -> None:
        try:
            raw_http(
                hardened,
                request_bytes(
                    "POST",
                    b"/relay/openai/v1/%2e%2e/x" if i % 2 else b"/keys/openai",
                    [b"x-relay-token: " + alice.token.encode(), b"content-type: application/json"],
                    b"{bad" * 50,
                ),
                timeout=10,
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert healthy(hardened)
