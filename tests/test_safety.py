"""Data safety: no plaintext key or token in the SQLite file or the logs, one structured
log line per request, and stored data surviving SIGTERM restarts and kill -9 mid-write."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Register, StartRelay
from providers.mock import MockProviders
from providers.relay import Relay, User, http_client, register_user

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

CHAT_MESSAGE = "PROMPT-BODY-MUST-NOT-BE-LOGGED-7f3a"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": CHAT_MESSAGE}]}

#: Providers served by the openai-flavoured mock through POST /relay {model: "p/m"}.
OPENAI_LIKE = [
    "openai", "groq", "openrouter", "mistral", "deepseek", "xai", "together", "fireworks",
    "cerebras", "perplexity",
]  # fmt: skip


def fresh_key(tag: str) -> str:
    return f"sk-{tag}-{secrets.token_hex(16)}"


def db_files(relay: Relay) -> list[Path]:
    assert relay.db_path is not None
    base = relay.db_path
    return [p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists()]


def stored_bytes(relay: Relay) -> bytes:
    return b"".join(p.read_bytes() for p in db_files(relay))


def log_records(relay: Relay) -> list[dict[str, Any]]:
    records = []
    for line in relay.log_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def wait_until(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def relay_chat(relay: Relay, user: User, provider: str, model: str = "mock-model") -> Any:
    return HTTP.post(
        f"{relay.url}/relay",
        json={**CHAT, "model": f"{provider}/{model}"},
        headers=user.headers,
        timeout=15,
    )


# --- secrets never at rest in plaintext, never in logs -------------------------------------


@pytest.mark.sqlite_only  # greps the SQLite file's bytes
def test_no_plaintext_secrets_in_db_or_logs(start_relay: StartRelay, mocks: MockProviders) -> None:
    server = start_relay(LOG_LEVEL="debug")
    app_id = f"safety-app-{secrets.token_hex(4)}"
    user = register_user(server, app_id)
    keys = {p: fresh_key(f"safety-{p}") for p in ("openai", "anthropic", "google", "groq")}
    for provider, key in keys.items():
        user.store_key(provider, key)
    # replace one: both the old and the new value must be absent
    replaced_old = keys["groq"]
    keys["groq"] = fresh_key("safety-groq-new")
    user.store_key("groq", keys["groq"])
    # exercise the relay on every credential header, plus some refusals
    r = HTTP.post(
        f"{server.url}/relay/openai/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert r.status_code == 200, r.text
    r = HTTP.post(
        f"{server.url}/relay/anthropic/v1/messages",
        json={**CHAT, "max_tokens": 16},
        headers={"x-api-key": user.token},
    )
    assert r.status_code == 200, r.text
    r = HTTP.post(
        f"{server.url}/relay/google/v1beta/models/gemini-2.0-flash:generateContent",
        json={"contents": [{"parts": [{"text": CHAT_MESSAGE}]}]},
        headers={"x-goog-api-key": user.token},
    )
    assert r.status_code == 200, r.text
    assert relay_chat(server, user, "groq").status_code == 200
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {keys['groq']}"
    refused_key = "sk-refused key with spaces-" + secrets.token_hex(8)
    r = HTTP.post(f"{server.url}/keys/openai", json={"key": refused_key}, headers=user.headers)
    assert r.status_code == 400
    assert refused_key not in r.text
    # a token that is rotated away and a second user's token
    old_token = user.token
    rotated = HTTP.post(f"{server.url}/tokens/rotate", headers=user.headers).json()["token"]
    other = register_user(server, "safety-2")
    other.store_key("openai", keys["openai"] + "-other")
    assert HTTP.get(f"{server.url}/keys", headers={"x-relay-token": rotated}).status_code == 200
    time.sleep(1.5)  # let the background usage flush write its rows

    secrets_used = {
        **{f"key:{p}": k for p, k in keys.items()},
        "key:groq-old": replaced_old,
        "key:refused": refused_key,
        "key:other": keys["openai"] + "-other",
        "token:old": old_token,
        "token:rotated": rotated,
        "token:other": other.token,
        "ENCRYPTION_SECRET": server.env["ENCRYPTION_SECRET"],
    }
    # the files as they are while the relay runs (recent pages still in -wal) ...
    live = stored_bytes(server)
    assert server.db_path is not None and Path(f"{server.db_path}-wal").exists()
    # ... and after SIGTERM, when everything is checkpointed and flushed
    assert server.stop() == 0
    data = live + stored_bytes(server)
    assert len(data) > 4096 and b"SQLite format 3" in data
    # positive controls: what is stored in clear (app id, hint) is found by this grep
    assert app_id.encode() in data
    assert keys["openai"][-4:].encode() in data
    log = server.log_text()
    assert '"msg":"request"' in log.replace(" ", "")
    for label, value in secrets_used.items():
        for needle in {value, value[:-4], value[4:]}:  # the whole and most of it
            assert needle.encode() not in data, f"{label} found in the SQLite files"
            assert needle not in log, f"{label} found in the relay log"
    # bodies are not logged either
    assert CHAT_MESSAGE not in log
    # the database file is private
    assert server.db_path is not None
    assert stat.S_IMODE(server.db_path.stat().st_mode) & 0o077 == 0


# --- the access log line --------------------------------------------------------------------


def test_one_json_log_line_per_request(relay: Relay, user: User) -> None:
    ids: dict[str, dict[str, Any]] = {}

    def call(method: str, path: str, expect: dict[str, Any], **kwargs: Any) -> None:
        rid = f"safety-log-{secrets.token_hex(6)}"
        headers = {**user.headers, "x-request-id": rid, **kwargs.pop("headers", {})}
        r = HTTP.request(method, f"{relay.url}{path}", headers=headers, timeout=15, **kwargs)
        assert r.headers["x-relay-request-id"] == rid  # a sane client id is reused
        ids[rid] = {"status": r.status_code, **expect}

    call("POST", "/relay/openai/v1/chat/completions", {"provider": "openai",
         "model": "gpt-4o-mini", "route": "/relay/{provider}/{path}"}, json=CHAT)  # fmt: skip
    call("POST", "/relay", {"provider": "anthropic", "model": "claude-3-5-haiku-20241022",
         "route": "/relay"}, json={**CHAT, "model": "claude-3-5-haiku-20241022",
                                   "max_tokens": 16})  # fmt: skip
    call("GET", "/keys", {"provider": None, "model": None, "route": "/keys"})
    call("GET", "/nope", {"provider": None, "model": None})
    call("POST", "/keys/openai", {"route": "/keys/{provider}"}, json={"key": "short"})
    # an insane client id is replaced by the relay's own
    bad = HTTP.get(f"{relay.url}/health", headers={"x-request-id": "bad id\twith spaces"})
    generated = bad.headers["x-relay-request-id"]
    assert generated and generated != "bad id\twith spaces"

    def lines_for(rid: str) -> list[dict[str, Any]]:
        return [rec for rec in log_records(relay) if rec.get("id") == rid]

    assert wait_until(lambda: all(lines_for(rid) for rid in ids)), relay.log_tail()
    for rid, expected in ids.items():
        found = lines_for(rid)
        assert len(found) == 1, (rid, found)
        rec = found[0]
        for name in ("id", "route", "status", "latency_ms", "provider", "model"):
            assert name in rec, (name, rec)
        assert isinstance(rec["latency_ms"], int | float) and rec["latency_ms"] >= 0
        for name, value in expected.items():
            assert rec[name] == value, (name, rec)
    assert wait_until(lambda: lines_for(generated))
    assert lines_for(generated)[0]["status"] == 200


# --- restarts ---------------------------------------------------------------------------------


def test_sigterm_restart_keeps_users_and_keys(
    start_relay: StartRelay, mocks: MockProviders, tmp_path: Path
) -> None:
    first = start_relay(data_dir=tmp_path)
    user = register_user(first, "restart")
    key = fresh_key("restart")
    user.store_key("openai", key)
    user.store_key("anthropic", fresh_key("restart-ant"))
    before = HTTP.get(f"{first.url}/keys", headers=user.headers).json()
    assert first.stop(signal.SIGTERM) == 0
    assert not first.alive

    second = start_relay(data_dir=tmp_path)
    user.relay = second
    after = HTTP.get(f"{second.url}/keys", headers=user.headers)
    assert after.status_code == 200, after.text
    assert after.json() == before
    r = relay_chat(second, user, "openai")
    assert r.status_code == 200, r.text
    assert mocks.openai.last_request.headers["authorization"] == f"Bearer {key}"
    assert second.stop(signal.SIGTERM) == 0


def test_kill_9_during_concurrent_key_writes(
    start_relay: StartRelay, mocks: MockProviders, tmp_path: Path
) -> None:
    first = start_relay(data_dir=tmp_path)
    users = [register_user(first, f"kill9-{i}") for i in range(12)]
    jobs = [(u, p, fresh_key(f"kill9-{p}")) for u in users for p in OPENAI_LIKE]  # 120 writes
    acknowledged: list[tuple[User, str, str]] = []
    lock = threading.Lock()
    killed = threading.Event()
    client = httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=32))

    def write(job: tuple[User, str, str]) -> str:
        if killed.is_set():
            return "not sent"
        u, provider, key = job
        try:
            r = client.post(f"{first.url}/keys/{provider}", json={"key": key}, headers=u.headers)
        except httpx.HTTPError:
            return "failed"
        if r.status_code != 200:
            return f"status {r.status_code}"
        with lock:
            acknowledged.append(job)
            if len(acknowledged) >= 40 and not killed.is_set():
                os.kill(first.proc.pid, signal.SIGKILL)  # mid-burst: others are in flight
                killed.set()
        return "ok"

    with ThreadPoolExecutor(max_workers=24) as pool:
        outcomes = list(pool.map(write, jobs))
    client.close()
    first.proc.wait(10)
    assert first.proc.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 40
    assert outcomes.count("ok") == len(acknowledged)
    assert any(o != "ok" for o in outcomes), "the kill came after the burst had finished"

    second = start_relay(data_dir=tmp_path)
    by_user: dict[str, dict[str, str]] = {}
    for u, provider, key in acknowledged:
        by_user.setdefault(u.token, {})[provider] = key
    for u in users:
        u.relay = second
        listed = HTTP.get(f"{second.url}/keys", headers=u.headers)
        assert listed.status_code == 200, listed.text
        hints = {k["provider"]: k["hint"] for k in listed.json()["keys"]}
        for provider, key in by_user.get(u.token, {}).items():
            assert hints.get(provider) == key[-4:], (provider, hints)
    # every acknowledged key decrypts and reaches the provider unchanged
    for u, provider, key in acknowledged:
        r = relay_chat(second, u, provider)
        assert r.status_code == 200, (provider, r.text)
        got = mocks.openai.last_request.headers.get("authorization")
        assert got == f"Bearer {key}", provider
    # the relay that was killed left a database the new one fully accepts
    assert HTTP.get(f"{second.url}/health", params={"deep": "1"}).json()["ok"] is True


def test_sigterm_exit_code_zero_while_idle_and_after_traffic(
    start_relay: StartRelay, register: Register
) -> None:
    idle = start_relay()
    assert idle.stop(signal.SIGTERM) == 0
    busy = start_relay()
    u = register(busy)
    u.store_key("openai", fresh_key("sigterm"))
    assert relay_chat(busy, u, "openai").status_code == 200
    assert busy.stop(signal.SIGTERM) == 0
    assert "stopped" in busy.log_text()
