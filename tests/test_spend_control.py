"""Spend control over real HTTP (SPEC §9): scoped tokens, owner budgets, exact usage.

One relay subprocess on SQLite with the mock providers; every refusal is checked to
happen before anything goes upstream (the mock saw no request). The PostgreSQL + Redis
shape with two instances is in test_spend_multi_instance.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import openai
import pytest
from backends import relay_db_rows
from conftest import Register
from providers.mock import MockProviders
from providers.relay import CHAT, CLAUDE, FAKE_KEY, GEMINI, Relay, StartRelay, User, error_of

T = TypeVar("T")
CHAT_PATH = "/relay/openai/v1/chat/completions"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def spend_relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A relay of this module's own (budgets and erasures touch nobody else's tests);
    on PostgreSQL too with BYOK_TEST_BACKEND=postgres."""
    from conftest import _stop_quietly, build_relay_env
    from providers.relay import start_relay_process

    directory = tmp_path_factory.mktemp("spend")
    server = start_relay_process(build_relay_env(mocks, directory), directory)
    yield server
    _stop_quietly(server)


@pytest.fixture
def owner(spend_relay: Relay, register: Register) -> User:
    user = register(spend_relay)
    for provider in ("openai", "anthropic", "google"):
        user.store_key(provider, FAKE_KEY)
    return user


def mint(owner: User, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{owner.relay.url}/tokens", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def chat(
    relay: Relay, token: str, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{relay.url}{CHAT_PATH}", json=body or CHAT, headers={"x-relay-token": token, **headers}
    )


def refused_upstream_untouched(
    mocks: MockProviders, response: httpx.Response, status: int, *words: str
) -> dict[str, Any]:
    message = error_of(response, status)
    for word in words:
        assert word in message, message
    assert mocks.openai.requests == [] and mocks.anthropic.requests == []
    return dict(response.json())


def eventually(read: Callable[[], T], done: Callable[[T], bool], limit: float = 3.0) -> T:
    """`read()` until `done` says so: a request is recorded just after its last byte left
    the relay, so a client that read the answer may ask a moment too early."""
    deadline = time.monotonic() + limit
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# --- scoped tokens: minting and what they may do ------------------------------------------
def test_mint_list_and_use_a_scoped_token(owner: User, mocks: MockProviders) -> None:
    minted = mint(
        owner,
        label="tab 1",
        providers=["openai"],
        models=["gpt-4o-mini"],
        origins=[ORIGIN],
        ttl_s=900,
        budget={"requests": 50},
    )
    token = minted["token"]
    assert token.startswith("byok_st_") and len(token) >= 8 + 43
    assert minted["id"].startswith("st_") and minted["label"] == "tab 1"
    assert minted["scope"] == {
        "providers": ["openai"],
        "models": ["gpt-4o-mini"],
        "origins": [ORIGIN],
        "budget": {"requests": 50},
    }
    assert abs(minted["expires_at"] - (time.time() + 900) * 1000) < 10_000

    r = chat(owner.relay, token, Origin=ORIGIN)
    assert r.status_code == 200, r.text
    (sent,) = mocks.openai.requests
    assert sent.headers["authorization"] == f"Bearer {FAKE_KEY}"  # the owner's key
    assert token not in str(dict(sent.headers)) and "byok_" not in sent.body.decode()

    listed = httpx.get(f"{owner.relay.url}/tokens", headers=owner.headers).json()["tokens"]
    (entry,) = listed
    assert token not in str(listed) and "token_hash" not in entry
    assert entry["id"] == minted["id"] and entry["scope"] == minted["scope"]
    assert entry["usage"]["requests"] == 1
    assert entry["usage"]["input_tokens"] > 0 and entry["usage"]["output_tokens"] > 0
    assert entry["last_used_at"] is not None


@pytest.mark.parametrize(
    ("scope", "request_kwargs", "status", "words"),
    [
        ({"providers": ["anthropic"]}, {}, 403, ('Provider "openai"', "providers")),
        ({"models": ["gpt-4o"]}, {}, 403, ('Model "gpt-4o-mini"', "models")),
        ({"origins": [ORIGIN]}, {}, 403, ("no Origin",)),
        ({"origins": [ORIGIN]}, {"Origin": "https://evil.example"}, 403, ("evil.example",)),
        ({"ips": ["10.0.0.0/8"]}, {}, 403, ("127.0.0.1", "ips")),
    ],
    ids=["provider", "model", "no-origin", "other-origin", "client-ip"],
)
def test_scope_refusals_name_the_rule_and_never_go_upstream(
    owner: User,
    mocks: MockProviders,
    scope: dict[str, Any],
    request_kwargs: dict[str, str],
    status: int,
    words: tuple[str, ...],
) -> None:
    token = mint(owner, **scope)["token"]
    body = refused_upstream_untouched(
        mocks, chat(owner.relay, token, **request_kwargs), status, *words
    )
    assert body["code"] == "scope_refused"


def test_model_globs_and_the_unified_route(owner: User, mocks: MockProviders) -> None:
    token = mint(owner, models=["gpt-4o*", "claude-*"])["token"]
    assert chat(owner.relay, token, {**CHAT, "model": "GPT-4o-2024"}).status_code == 200
    unified = httpx.post(
        f"{owner.relay.url}/relay",
        json={**CLAUDE, "model": "anthropic/claude-3-5-haiku-20241022"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert unified.status_code == 200, unified.text
    mocks.clear()
    gemini = httpx.post(
        f"{owner.relay.url}/relay/google/v1beta/models/gemini-2.0-flash:generateContent",
        json=GEMINI,
        headers={"x-goog-api-key": token},
    )
    message = error_of(gemini, 403)
    assert "gemini-2.0-flash" in message and mocks.gemini.requests == []


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        # Two model fields: a lenient reader sees the first, many providers the last.
        (b'{"model":"gpt-4o-mini","model":"gpt-4.1","messages":[]}', 400, ("model",)),
        (b'{"model":"gpt-4o-mini","mod\\u0065l":"gpt-4.1","messages":[]}', 400, ("model",)),
        (b'{"messages":[]}', 403, ("names none",)),
    ],
    ids=["duplicate", "escaped-duplicate", "no-model"],
)
def test_scoped_models_are_read_as_the_provider_reads_them(
    owner: User, mocks: MockProviders, raw: bytes, status: int, words: tuple[str, ...]
) -> None:
    """No ALLOWED_MODELS on this relay: a scoped token's models alone make the relay
    read the model strictly, so no spelling slips another model past the scope."""
    token = mint(owner, models=["gpt-4o-mini"])["token"]
    response = httpx.post(
        f"{owner.relay.url}{CHAT_PATH}",
        content=raw,
        headers={"x-relay-token": token, "content-type": "application/json"},
    )
    refused_upstream_untouched(mocks, response, status, *words)
    # the relay token (no model rule at all) is not held to it
    plain = httpx.post(
        f"{owner.relay.url}{CHAT_PATH}", content=raw,
        headers={**owner.headers, "content-type": "application/json"},
    )  # fmt: skip
    assert plain.status_code == 200, plain.text


def test_expired_scoped_token_is_401(owner: User, mocks: MockProviders) -> None:
    token = mint(owner, ttl_s=1)["token"]
    assert chat(owner.relay, token).status_code == 200
    mocks.clear()
    time.sleep(1.2)
    refused_upstream_untouched(mocks, chat(owner.relay, token), 401, "expired")


def test_scoped_budget_lets_exactly_n_through_then_429(owner: User, mocks: MockProviders) -> None:
    token = mint(owner, budget={"requests": 10})["token"]
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        r = chat(owner.relay, token)
        with lock:
            statuses.append(r.status_code)
            bodies.append(r.json())

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [200] * 10 + [429] * 10, statuses
    assert len(mocks.openai.requests) == 10  # nothing beyond the budget went upstream
    refused = [b for b in bodies if "code" in b]
    assert {b["code"] for b in refused} == {"budget_exceeded"}
    assert "10 requests" in refused[0]["error"]


def test_scoped_token_budget_in_tokens(owner: User, mocks: MockProviders) -> None:
    token = mint(owner, budget={"tokens": 5})["token"]
    assert chat(owner.relay, token).status_code == 200  # uses more than 5: in flight, it finishes
    mocks.clear()
    body = refused_upstream_untouched(mocks, chat(owner.relay, token), 429, "5 tokens")
    assert body["code"] == "budget_exceeded"


def test_scoped_token_cannot_manage_the_account(owner: User) -> None:
    token = mint(owner)["token"]
    relay = owner.relay
    headers = {"x-relay-token": token}
    for method, path, body in [
        ("GET", "/keys", None),
        ("POST", "/keys/openai", {"key": FAKE_KEY}),
        ("DELETE", "/keys/openai", None),
        ("GET", "/tokens", None),
        ("POST", "/tokens", {}),
        ("POST", "/tokens/rotate", None),
        ("POST", "/tokens/revoke", None),
        ("GET", "/stats", None),
        ("GET", "/budget", None),
        ("PUT", "/budget", {"window": "day", "requests": 1}),
        ("DELETE", "/users", None),
    ]:
        r = httpx.request(method, f"{relay.url}{path}", json=body, headers=headers)
        assert "a scoped token cannot manage the account" in error_of(r, 403), (method, path)
    assert chat(relay, token).status_code == 200  # and it still works where it may
    assert httpx.get(f"{relay.url}/keys", headers=owner.headers).json()["providers"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"providers": ["opnai"]}, ('unsupported provider "opnai"', "openai")),
        ({"origins": ["example.com"]}, ("not an origin", "https://app.example")),
        ({"origins": ["https://app.example/path"]}, ("not an origin",)),
        ({"ips": ["10.0.0.0/33"]}, ("not a CIDR", "203.0.113.0/24")),
        ({"budget": {"requests": -1}}, ("budget.requests", "greater than or equal to 0")),
        ({"budget": {"tokens": 1.5}}, ("budget.tokens must be an integer",)),
        ({"budget": {"dollars": 5}}, ("budget.dollars is not a known field",)),
        ({"scopes": ["openai"]}, ("scopes is not a known field", "providers")),
        ({"ttl_s": 0}, ("ttl_s must be between 1 and 2592000",)),
        ({"ttl_s": 2592001}, ("SCOPED_TOKEN_MAX_TTL_S",)),
        ({"providers": []}, ("omit the field",)),
        ({"models": "gpt-4o"}, ("models",)),
    ],
)
def test_bad_mint_requests_say_what_to_send(
    owner: User, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    r = httpx.post(f"{owner.relay.url}/tokens", json=body, headers=owner.headers)
    message = error_of(r, 400)
    for word in words:
        assert word in message, message


def test_ttl_never_past_the_parent_expiry(start_relay: StartRelay, register: Register) -> None:
    relay = start_relay(TOKEN_EXPIRY_DAYS="1")
    parent = register(relay)
    minted = mint(parent, ttl_s=2_000_000)
    assert minted["expires_at"] == parent.expires_at


# --- revocation ---------------------------------------------------------------------------
def test_revoke_one_scoped_token(owner: User, mocks: MockProviders) -> None:
    keep, kill = mint(owner), mint(owner)
    assert chat(owner.relay, kill["token"]).status_code == 200  # cached on this instance
    r = httpx.delete(f"{owner.relay.url}/tokens/{kill['id']}", headers=owner.headers)
    assert r.json() == {"ok": True, "deleted": True}
    again = httpx.delete(f"{owner.relay.url}/tokens/{kill['id']}", headers=owner.headers)
    assert again.json() == {"ok": True, "deleted": False}
    mocks.clear()
    refused_upstream_untouched(mocks, chat(owner.relay, kill["token"]), 401, "revoked")
    assert chat(owner.relay, keep["token"]).status_code == 200
    ids = [t["id"] for t in httpx.get(f"{owner.relay.url}/tokens", headers=owner.headers).json()[
        "tokens"
    ]]  # fmt: skip
    assert ids == [keep["id"]]


def test_someone_elses_token_id_is_not_theirs_to_revoke(
    owner: User, spend_relay: Relay, register: Register
) -> None:
    minted = mint(owner)
    other = register(spend_relay)
    r = httpx.delete(f"{spend_relay.url}/tokens/{minted['id']}", headers=other.headers)
    assert r.json() == {"ok": True, "deleted": False}
    assert chat(spend_relay, minted["token"]).status_code == 200


def test_parent_revoke_kills_children_rotate_keeps_them(
    owner: User, spend_relay: Relay, mocks: MockProviders
) -> None:
    child = mint(owner)["token"]
    assert chat(spend_relay, child).status_code == 200
    rotated = httpx.post(f"{spend_relay.url}/tokens/rotate", headers=owner.headers).json()
    assert chat(spend_relay, child).status_code == 200  # rotation keeps scoped tokens
    new_parent = {"x-relay-token": rotated["token"]}
    assert httpx.get(f"{spend_relay.url}/tokens", headers=new_parent).json()["tokens"]
    second = httpx.post(f"{spend_relay.url}/tokens", json={}, headers=new_parent).json()["token"]
    assert httpx.post(f"{spend_relay.url}/tokens/revoke", headers=new_parent).status_code == 200
    mocks.clear()
    for token in (child, second):
        refused_upstream_untouched(mocks, chat(spend_relay, token), 401, "revoked")


def test_erasing_the_user_kills_scoped_tokens(owner: User, mocks: MockProviders) -> None:
    child = mint(owner)["token"]
    assert chat(owner.relay, child).status_code == 200
    assert httpx.delete(f"{owner.relay.url}/users", headers=owner.headers).status_code == 200
    mocks.clear()
    refused_upstream_untouched(mocks, chat(owner.relay, child), 401)


def test_relay_rate_limit_is_per_user_rotation_gives_no_fresh_bucket(
    start_relay: StartRelay, register: Register
) -> None:
    relay = start_relay(RATE_LIMIT_RELAY="3/minute")
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    scoped = mint(user)["token"]
    assert chat(relay, user.token).status_code == 200
    assert chat(relay, scoped).status_code == 200  # one bucket for every token of the user
    token = httpx.post(f"{relay.url}/tokens/rotate", headers=user.headers).json()["token"]
    assert chat(relay, token).status_code == 200
    r = chat(relay, token)
    assert "rate limit" in error_of(r, 429) and r.headers["RateLimit-Limit"] == "3"
    error_of(chat(relay, scoped), 429)
    other = register(relay)
    other.store_key("openai", FAKE_KEY)
    assert chat(relay, other.token).status_code == 200  # another user, another bucket


# --- owner budgets ------------------------------------------------------------------------
def _seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_daily_budget_per_provider_and_total(owner: User, mocks: MockProviders) -> None:
    relay = owner.relay
    put = httpx.put(
        f"{relay.url}/budget",
        json={"window": "day", "requests": 3, "providers": {"openai": {"requests": 2}}},
        headers=owner.headers,
    )
    assert put.status_code == 200, put.text
    assert put.json() == {
        "budget": {"window": "day", "requests": 3, "providers": {"openai": {"requests": 2}}}
    }
    scoped = mint(owner)["token"]  # the owner's budget holds for every credential
    assert chat(relay, owner.token).status_code == 200
    assert chat(relay, scoped).status_code == 200
    mocks.clear()
    r = chat(relay, owner.token)
    body = refused_upstream_untouched(mocks, r, 429, "2 openai requests per day")
    assert body["code"] == "budget_exceeded"
    assert abs(int(r.headers["Retry-After"]) - _seconds_to_utc_midnight()) < 5
    claude = httpx.post(f"{relay.url}/relay/anthropic/v1/messages", json=CLAUDE,
                        headers=owner.headers)  # fmt: skip
    assert claude.status_code == 200, claude.text
    mocks.clear()
    again = httpx.post(f"{relay.url}/relay/anthropic/v1/messages", json=CLAUDE,
                       headers=owner.headers)  # fmt: skip
    refused_upstream_untouched(mocks, again, 429, "3 requests per day")

    got = httpx.get(f"{relay.url}/budget", headers=owner.headers).json()
    usage = got["usage"]
    assert got["budget"]["requests"] == 3
    assert usage["requests"] == 3 and usage["providers"]["openai"]["requests"] == 2
    assert usage["providers"]["anthropic"]["requests"] == 1
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["window_end"] - usage["window_start"] == 86_400_000
    assert usage["window_start"] <= time.time() * 1000 < usage["window_end"]
    stats = httpx.get(f"{relay.url}/stats", headers=owner.headers).json()
    assert stats["total_input_tokens"] == usage["input_tokens"]  # one count, three views
    assert stats["total_output_tokens"] == usage["output_tokens"]

    assert httpx.delete(f"{relay.url}/budget", headers=owner.headers).json() == {
        "ok": True,
        "deleted": True,
    }
    assert chat(relay, owner.token).status_code == 200
    assert httpx.get(f"{relay.url}/budget", headers=owner.headers).json()["budget"] is None


def test_budget_set_mid_window_counts_earlier_requests(owner: User, mocks: MockProviders) -> None:
    relay = owner.relay
    for _ in range(2):
        assert chat(relay, owner.token).status_code == 200
    time.sleep(1.3)  # the request log is written about once a second
    httpx.put(f"{relay.url}/budget", json={"window": "hour", "requests": 2}, headers=owner.headers)
    mocks.clear()
    r = chat(relay, owner.token)
    refused_upstream_untouched(mocks, r, 429, "2 requests per hour")
    assert 0 < int(r.headers["Retry-After"]) <= 3600


def test_budget_in_tokens(owner: User, mocks: MockProviders) -> None:
    relay = owner.relay
    httpx.put(f"{relay.url}/budget", json={"window": "month", "tokens": 10},
              headers=owner.headers)  # fmt: skip
    assert chat(relay, owner.token).status_code == 200
    mocks.clear()
    refused_upstream_untouched(mocks, chat(relay, owner.token), 429, "10 tokens per month")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"window": "week", "requests": 1}, ("window", "hour", "day", "month")),
        ({"requests": 1}, ("window is required",)),
        ({"window": "day", "requests": -5}, ("requests", "greater than or equal to 0")),
        ({"window": "day", "requests": "10"}, ("requests must be an integer",)),
        ({"window": "day", "providers": {"opnai": {"requests": 1}}}, ('"opnai"',)),
        ({"window": "day", "requests": 1, "dollars": 3}, ("dollars is not a known field",)),
        ({"window": "day"}, ("at least one cap",)),
    ],
)
def test_bad_budgets_say_what_to_send(
    owner: User, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    r = httpx.put(f"{owner.relay.url}/budget", json=body, headers=owner.headers)
    message = error_of(r, 400)
    for word in words:
        assert word in message, message


def test_budget_survives_a_restart(
    start_relay: StartRelay, register: Register, mocks: MockProviders, tmp_path: Any
) -> None:
    relay = start_relay(data_dir=tmp_path)
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    httpx.put(f"{relay.url}/budget", json={"window": "day", "requests": 3}, headers=user.headers)
    for _ in range(3):
        assert chat(relay, user.token).status_code == 200
    assert relay.stop() == 0  # SIGTERM: the request log is flushed on the way out
    again = start_relay(data_dir=tmp_path)
    mocks.clear()
    refused_upstream_untouched(mocks, chat(again, user.token), 429, "3 requests per day")


def test_usage_outlives_its_raw_rows_once_rolled_up(
    start_relay: StartRelay, register: Register, mocks: MockProviders, tmp_path: Any
) -> None:
    """The stop folds the request log into hourly rollups; with every raw row deleted
    (what a 1-day REQUEST_LOG_RETENTION_DAYS does later), /stats, /budget, a scoped
    token's usage and budget counters seeded after the restart (no Redis: counters in
    memory) still count every request."""
    relay = start_relay(data_dir=tmp_path)
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    put = httpx.put(f"{relay.url}/budget", json={"window": "month", "requests": 4},
                    headers=user.headers)  # fmt: skip
    assert put.status_code == 200, put.text
    scoped = mint(user, budget={"requests": 2})
    for token in (user.token, user.token, scoped["token"], scoped["token"]):
        assert chat(relay, token).status_code == 200
    stats = eventually(lambda: httpx.get(f"{relay.url}/stats", headers=user.headers).json(),
                       lambda s: s["total"] == 4)  # fmt: skip
    assert stats["total"] == 4 and stats["total_output_tokens"] > 0
    assert relay.stop() == 0  # SIGTERM: the last flush, then the roll
    assert relay_db_rows(relay, "SELECT COUNT(*) FROM request_log") == [(4,)]
    relay_db_rows(relay, "DELETE FROM request_log")
    assert relay_db_rows(relay, "SELECT SUM(requests) FROM request_log_hourly") == [(4,)]

    again = start_relay(data_dir=tmp_path)
    after = httpx.get(f"{again.url}/stats", headers=user.headers).json()
    assert after == stats
    usage = httpx.get(f"{again.url}/budget", headers=user.headers).json()["usage"]
    assert usage["requests"] == 4 and usage["providers"]["openai"]["requests"] == 4
    assert usage["output_tokens"] == stats["total_output_tokens"]
    (listed,) = httpx.get(f"{again.url}/tokens", headers=user.headers).json()["tokens"]
    assert listed["id"] == scoped["id"] and listed["usage"]["requests"] == 2
    mocks.clear()
    refused_upstream_untouched(mocks, chat(again, user.token), 429, "4 requests per month")
    # The token's own counter, seeded from its rollups once the owner's budget is gone.
    assert httpx.delete(f"{again.url}/budget", headers=user.headers).status_code == 200
    refused_upstream_untouched(mocks, chat(again, scoped["token"]), 429, "2 requests")
    assert chat(again, user.token).status_code == 200


# --- exact usage --------------------------------------------------------------------------
def test_openai_sdk_stream_without_usage_option_is_counted_and_unchanged(
    owner: User, mocks: MockProviders
) -> None:
    token = mint(owner, providers=["openai"])["token"]
    client = openai.OpenAI(base_url=f"{owner.relay.url}/relay/openai/v1", api_key=token)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks), "no usage-only chunk reached the client"
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    (sent,) = mocks.openai.requests
    assert sent.json()["stream_options"] == {"include_usage": True}  # the relay asked

    with_usage = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    final = with_usage[-1]
    assert final.choices == [] and final.usage is not None  # asked for: passed through

    usage = eventually(
        lambda: httpx.get(f"{owner.relay.url}/tokens", headers=owner.headers).json()["tokens"][0][
            "usage"
        ],
        lambda u: u["requests"] == 2,
    )
    assert usage["output_tokens"] == 2 * final.usage.completion_tokens
    expected_input = sum(max(1, len(r.body) // 4) for r in mocks.openai.requests)
    assert usage["input_tokens"] == expected_input


@pytest.mark.parametrize(
    ("path", "body", "flavor"),
    [
        (CHAT_PATH, CHAT, "openai"),
        ("/relay/openai/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, "openai"),
        ("/relay/openai/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True},
         "openai"),
        ("/relay/anthropic/v1/messages", CLAUDE, "anthropic"),
        ("/relay/anthropic/v1/messages", {**CLAUDE, "stream": True}, "anthropic"),
        ("/relay/google/v1beta/models/gemini-2.0-flash:generateContent", GEMINI, "gemini"),
        ("/relay/google/v1beta/models/gemini-2.0-flash:streamGenerateContent", GEMINI, "gemini"),
    ],
    ids=["chat", "responses", "responses-stream", "anthropic", "anthropic-stream", "gemini",
         "gemini-stream"],
)  # fmt: skip
def test_every_shape_is_counted(owner: User, path: str, body: dict[str, Any], flavor: str) -> None:
    relay = owner.relay
    r = httpx.post(f"{relay.url}{path}", json=body, headers=owner.headers)
    assert r.status_code == 200, r.text
    usage = eventually(
        lambda: httpx.get(f"{relay.url}/budget", headers=owner.headers).json()["usage"],
        lambda u: u["requests"] == 1,
    )
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, (flavor, usage)
