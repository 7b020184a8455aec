"""ENCRYPTION_SECRET rotation (SPEC §5): versioned data keys, ENCRYPTION_SECRET_PREVIOUS,
and `python -m byok_relay reencrypt` run for real against the relay's SQLite file:
rewrites everything, idempotent, safe while a relay serves traffic, and killed with
SIGKILL half-way it loses nothing and a second run finishes the job.

The CLI runs with the relay's environment in a working directory without a `.env`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RelayEnv, StartRelay
from providers.mock import MockProviders
from providers.relay import Relay, fake_secret, http_client, register_user

from byok_relay.crypto import KeyCipher, SealedKey, TokenHasher, key_hint, new_token
from byok_relay.custody import KeyCustody
from byok_relay.storage import open_storage

HTTP = http_client()
SECRET_A = fake_secret("secret-a")
SECRET_B = fake_secret("secret-b")
SECRET_UNKNOWN = fake_secret("secret-c")
# Set explicitly, as `byok-relay init` does: token HMACs then survive a secret rotation
# (see test_tokens_survive_rotation_without_token_hmac_secret for the unset case).
HMAC_SECRET = fake_secret("token-hmac")
VERSION_A = KeyCipher(SECRET_A).current_version
VERSION_B = KeyCipher(SECRET_B).current_version
RESULT_RE = re.compile(
    r"re-encrypted (\d+) key\(s\); (\d+) left under older secrets; (\d+) unreadable"
)


# --- helpers --------------------------------------------------------------------------


def versions(db_path: Path) -> Counter[str]:
    with sqlite3.connect(db_path, timeout=10) as conn:
        return Counter(v for (v,) in conn.execute("SELECT key_version FROM api_keys").fetchall())


def reencrypt_cmd(env: dict[str, str], cwd: Path, batch_size: int | None = None) -> list[str]:
    args = [sys.executable, "-m", "byok_relay", "reencrypt"]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    assert not (cwd / ".env").exists()
    return args


def run_reencrypt(
    env: dict[str, str], cwd: Path, batch_size: int | None = None
) -> tuple[int, int, int, int]:
    """(exit code, rewritten, left, unreadable) of one complete run."""
    proc = subprocess.run(
        reencrypt_cmd(env, cwd, batch_size),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = RESULT_RE.search(proc.stdout)
    assert match, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr}"
    # Logs never carry key material.
    assert "sk-test" not in proc.stdout + proc.stderr
    return proc.returncode, int(match[1]), int(match[2]), int(match[3])


def chat(relay: Relay, token: str, user_tag: str = "") -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [], "user": user_tag}
    return HTTP.post(
        f"{relay.url}/relay/openai/v1/chat/completions",
        json=body,
        headers={"x-relay-token": token},
    )


def migrate(db_path: Path) -> None:
    async def run() -> None:
        storage = open_storage(f"sqlite:///{db_path}", pool_size=1)
        await storage.connect()
        try:
            await storage.migrate()
        finally:
            await storage.close()

    asyncio.run(run())


def seed(
    db_path: Path, count: int, secret: str, *, with_tokens: bool = False, prefix: str = "u"
) -> dict[str, tuple[str, str]]:
    """`count` users with one openai key each, sealed under `secret` straight into the
    SQLite file (what a relay on that secret would have written). Returns
    {user_id: (key, token)}."""
    migrate(db_path)
    cipher = KeyCipher(secret)
    hasher = TokenHasher(secret, HMAC_SECRET)
    now = int(time.time() * 1000)
    out: dict[str, tuple[str, str]] = {}
    users, tokens, keys = [], [], []
    for i in range(count):
        user_id = f"{prefix}{i:05d}"
        key = f"sk-test-{prefix}{i:05d}-SEEDED"
        token = new_token() if with_tokens else ""
        sealed = cipher.seal(key, user_id, "openai")
        users.append((user_id, "rotation-test", now))
        if with_tokens:
            tokens.append((hasher.hash(token), user_id, now, None))
        keys.append((user_id, "openai", sealed.version, sealed.blob, key_hint(key), None, now, now))
        out[user_id] = (key, token)
    conn = sqlite3.connect(db_path, timeout=10)
    with conn:
        conn.executemany("INSERT INTO users (id, app_id, created_at) VALUES (?, ?, ?)", users)
        conn.executemany(
            "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            tokens,
        )
        conn.executemany(
            "INSERT INTO api_keys (user_id, provider, key_version, ciphertext, hint, base_url,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            keys,
        )
    conn.close()
    return out


def opened_keys(db_path: Path, cipher: KeyCipher) -> dict[str, str]:
    """Every stored key decrypted (raises if any row cannot be opened)."""
    with sqlite3.connect(db_path, timeout=10) as conn:
        rows = conn.execute(
            "SELECT user_id, provider, key_version, ciphertext FROM api_keys"
        ).fetchall()
    return {
        f"{user}/{provider}": cipher.open(SealedKey(version, bytes(blob)), user, provider)
        for user, provider, version, blob in rows
    }


@pytest.fixture
def no_env_dir(tmp_path: Path) -> Path:
    """A working directory without a .env: the CLI gets its settings from env only."""
    directory = tmp_path / "cwd"
    directory.mkdir()
    return directory


# --- the runbook, end to end ------------------------------------------------------------


def test_secret_rotation_end_to_end(
    start_relay: StartRelay, tmp_path: Path, no_env_dir: Path, mocks: MockProviders
) -> None:
    data = tmp_path / "data"
    env_a = {"ENCRYPTION_SECRET": SECRET_A, "TOKEN_HMAC_SECRET": HMAC_SECRET}
    relay_a = start_relay(data_dir=data, **env_a)
    users = []
    for i in range(4):
        user = register_user(relay_a, "rotation")
        user.store_key("openai", f"sk-test-ROTATE-{i}-openai")
        if i % 2 == 0:
            user.store_key("anthropic", f"sk-ant-ROTATE-{i}-anthropic")
        users.append(user)
    assert relay_a.db_path is not None
    db_path = relay_a.db_path
    assert versions(db_path) == {VERSION_A: 6}
    assert relay_a.stop() == 0

    # 1. New secret, old one kept as previous: old rows still decrypt.
    relay_b = start_relay(
        data_dir=data,
        ENCRYPTION_SECRET=SECRET_B,
        ENCRYPTION_SECRET_PREVIOUS=SECRET_A,
        TOKEN_HMAC_SECRET=HMAC_SECRET,
    )
    for i, user in enumerate(users):
        mocks.openai.clear()
        r = chat(relay_b, user.token)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == (
            f"Bearer sk-test-ROTATE-{i}-openai"
        )
    # A key stored now is sealed under B: a mixed table, as in real life.
    r = HTTP.post(
        f"{relay_b.url}/keys/google",
        json={"key": "AIza-test-ROTATE-new"},
        headers={"x-relay-token": users[1].token},
    )
    assert r.status_code == 200, r.text
    assert versions(db_path) == {VERSION_A: 6, VERSION_B: 1}

    # 2. reencrypt with the relay's environment: every row moves to B.
    code, rewritten, left, unreadable = run_reencrypt(relay_b.env, no_env_dir, batch_size=2)
    assert (code, rewritten, left, unreadable) == (0, 6, 0, 0)
    assert versions(db_path) == {VERSION_B: 7}
    # The relay keeps serving while and after the rows move under it.
    for user in users:
        assert chat(relay_b, user.token).status_code == 200

    # 3. Idempotent: a second run rewrites nothing.
    assert run_reencrypt(relay_b.env, no_env_dir) == (0, 0, 0, 0)
    assert relay_b.stop() == 0

    # 4. Previous secret removed: everything still works, under B alone.
    relay_c = start_relay(data_dir=data, ENCRYPTION_SECRET=SECRET_B, TOKEN_HMAC_SECRET=HMAC_SECRET)
    for i, user in enumerate(users):
        mocks.openai.clear()
        r = chat(relay_c, user.token)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == (
            f"Bearer sk-test-ROTATE-{i}-openai"
        )
        r = HTTP.post(f"{relay_c.url}/keys/openai/verify", headers={"x-relay-token": user.token})
        assert r.json() == {"ok": True, "status": 200}
    mocks.anthropic.clear()
    r = HTTP.post(
        f"{relay_c.url}/relay/anthropic/v1/messages",
        json={"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": []},
        headers={"x-relay-token": users[2].token},
    )
    assert r.status_code == 200, r.text
    assert mocks.anthropic.last_request.headers["x-api-key"] == "sk-ant-ROTATE-2-anthropic"
    expected = {f"sk-test-ROTATE-{i}-openai" for i in range(4)}
    assert expected <= set(opened_keys(db_path, KeyCipher(SECRET_B)).values())


def test_reencrypt_killed_half_way_loses_nothing(
    relay_env: RelayEnv, tmp_path: Path, no_env_dir: Path
) -> None:
    total = 3000
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "relay.db"
    seeded = seed(db_path, total, SECRET_A)
    env = relay_env(data, ENCRYPTION_SECRET=SECRET_B, ENCRYPTION_SECRET_PREVIOUS=SECRET_A)
    assert versions(db_path) == {VERSION_A: total}

    proc = subprocess.Popen(
        reencrypt_cmd(env, no_env_dir, batch_size=20),
        env=env,
        cwd=no_env_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reader = sqlite3.connect(db_path, timeout=10)
    killed_at = 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            (done,) = reader.execute(
                "SELECT COUNT(*) FROM api_keys WHERE key_version = ?", (VERSION_B,)
            ).fetchone()
            if done >= total // 3:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not killed_at:
            proc.kill()
        proc.wait(30)
        reader.close()
    assert killed_at, f"reencrypt finished (exit {proc.returncode}) before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    # Interrupted: a mix of versions, and not one key lost or damaged.
    after_kill = versions(db_path)
    assert sum(after_kill.values()) == total
    assert set(after_kill) == {VERSION_A, VERSION_B}, after_kill
    assert 0 < after_kill[VERSION_B] < total
    opened = opened_keys(db_path, KeyCipher(SECRET_B, [SECRET_A]))
    assert opened == {f"{u}/openai": key for u, (key, _t) in seeded.items()}

    # A second run resumes and finishes the job (only what was left).
    code, rewritten, left, unreadable = run_reencrypt(env, no_env_dir, batch_size=500)
    assert (code, left, unreadable) == (0, 0, 0)
    assert rewritten == after_kill[VERSION_A]
    assert versions(db_path) == {VERSION_B: total}
    opened = opened_keys(db_path, KeyCipher(SECRET_B))  # B alone now opens everything
    assert opened == {f"{u}/openai": key for u, (key, _t) in seeded.items()}


def test_reencrypt_while_relay_serves_traffic(
    start_relay: StartRelay, tmp_path: Path, no_env_dir: Path, mocks: MockProviders
) -> None:
    total = 300
    data = tmp_path / "data"
    data.mkdir()
    seeded = seed(data / "relay.db", total, SECRET_A, with_tokens=True)
    # CACHE_TTL_S=0: every request reads and decrypts the row, racing the rewrite.
    relay = start_relay(
        data_dir=data,
        ENCRYPTION_SECRET=SECRET_B,
        ENCRYPTION_SECRET_PREVIOUS=SECRET_A,
        TOKEN_HMAC_SECRET=HMAC_SECRET,
        CACHE_TTL_S="0",
    )
    assert relay.db_path is not None
    user_ids = sorted(seeded)
    failures: list[str] = []
    served = 0
    replaced: dict[str, str] = {}
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        with httpx.Client(timeout=30, trust_env=False) as client:
            i = 0
            while not stop.is_set():
                user_id = user_ids[(i * 7) % total]
                i += 1
                r = client.post(
                    f"{relay.url}/relay/openai/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": [], "user": user_id},
                    headers={"x-relay-token": seeded[user_id][1]},
                )
                if r.status_code != 200:
                    failures.append(f"{user_id}: {r.status_code} {r.text[:200]}")
                served += 1

    def writer() -> None:
        # Users replacing their keys meanwhile: the rewrite must never undo that.
        with httpx.Client(timeout=30, trust_env=False) as client:
            for user_id in user_ids[::10]:
                if stop.is_set():
                    return
                key = f"sk-test-{user_id}-REPLACED"
                r = client.post(
                    f"{relay.url}/keys/openai",
                    json={"key": key},
                    headers={"x-relay-token": seeded[user_id][1]},
                )
                if r.status_code != 200:
                    failures.append(f"store {user_id}: {r.status_code} {r.text[:200]}")
                    continue
                replaced[user_id] = key
                time.sleep(0.01)

    threads = [threading.Thread(target=traffic) for _ in range(2)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        code, rewritten, left, unreadable = run_reencrypt(relay.env, no_env_dir, batch_size=10)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert served > 20, served
    assert (code, left, unreadable) == (0, 0, 0)
    assert 0 < rewritten <= total
    assert versions(relay.db_path) == {VERSION_B: total}
    assert replaced, "the writer stored no key during the run"

    # Every user's key is the one they last stored: originals, or their replacement.
    opened = opened_keys(relay.db_path, KeyCipher(SECRET_B))
    for user_id, (key, _token) in seeded.items():
        assert opened[f"{user_id}/openai"] == replaced.get(user_id, key), user_id
    sample = [*list(replaced)[:3], *(u for u in user_ids[1:40:13] if u not in replaced)]
    for user_id in sample:
        mocks.openai.clear()
        assert chat(relay, seeded[user_id][1], user_id).status_code == 200
        expected = replaced.get(user_id, seeded[user_id][0])
        assert mocks.openai.last_request.headers["authorization"] == f"Bearer {expected}"


def test_reencrypt_reports_rows_it_cannot_read(
    relay_env: RelayEnv, tmp_path: Path, no_env_dir: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "relay.db"
    seed(db_path, 5, SECRET_A)
    seed(db_path, 1, SECRET_UNKNOWN, prefix="lost")  # sealed by a secret nobody passes
    with sqlite3.connect(db_path) as conn:
        (before,) = conn.execute("SELECT ciphertext FROM api_keys WHERE user_id = 'lost00000'")
    env = relay_env(data, ENCRYPTION_SECRET=SECRET_B, ENCRYPTION_SECRET_PREVIOUS=SECRET_A)
    code, rewritten, left, unreadable = run_reencrypt(env, no_env_dir)
    assert code != 0  # the operator must notice
    assert (rewritten, left, unreadable) == (5, 1, 1)
    with sqlite3.connect(db_path) as conn:
        (after,) = conn.execute("SELECT ciphertext FROM api_keys WHERE user_id = 'lost00000'")
    assert after == before  # left untouched, not destroyed
    assert versions(db_path)[VERSION_B] == 5


def test_tokens_survive_rotation_without_token_hmac_secret(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "relay.db"
    migrate(db_path)
    token = new_token()
    sealed = KeyCipher(SECRET_A).seal("sk-test-DERIVED-HMAC-1", "derived0", "openai")
    now = int(time.time() * 1000)
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO users VALUES ('derived0', 'app', ?)", (now,))
        conn.execute(
            "INSERT INTO tokens (token_hash, user_id, created_at) VALUES (?, 'derived0', ?)",
            (TokenHasher(SECRET_A).hash(token), now),  # as a relay on A without HMAC secret
        )
        conn.execute(
            "INSERT INTO api_keys (user_id, provider, key_version, ciphertext, hint,"
            " created_at, updated_at) VALUES ('derived0', 'openai', ?, ?, 'MAC1', ?, ?)",
            (sealed.version, sealed.blob, now, now),
        )
    relay = start_relay(
        data_dir=data, ENCRYPTION_SECRET=SECRET_B, ENCRYPTION_SECRET_PREVIOUS=SECRET_A
    )
    r = chat(relay, token)
    assert r.status_code == 200, r.text


class _RacingStorage:
    """The real SQLite storage, with a hook that runs between reencrypt's read of a batch
    and its write: the moment a relay serving users could change the same rows."""

    def __init__(self, inner: Any, between: Any) -> None:
        self._inner = inner
        self._between = between
        self._fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def keys_not_at_version(self, *args: Any) -> Any:
        batch = await self._inner.keys_not_at_version(*args)
        if batch and not self._fired:
            self._fired = True
            await self._between()
        return batch


def test_reencrypt_never_undoes_a_concurrent_change(tmp_path: Path) -> None:
    # Deterministic version of the race the HTTP test above can only hope to hit.
    from byok_relay.reencrypt import reencrypt

    db_path = tmp_path / "relay.db"
    seeded = seed(db_path, 6, SECRET_A)
    users = sorted(seeded)
    storage = open_storage(f"sqlite:///{db_path}", pool_size=1)
    relay_b = KeyCipher(SECRET_B, [SECRET_A])  # a relay already on the new secret
    stale_a = KeyCipher(SECRET_A)  # an instance not yet restarted
    now = int(time.time() * 1000)

    async def users_act() -> None:
        sealed = relay_b.seal("sk-test-NEW-under-B", users[0], "openai")
        await storage.put_key(users[0], "openai", sealed.version, sealed.blob, "er-B", None, now)
        await storage.delete_key(users[1], "openai")
        sealed = stale_a.seal("sk-test-NEW-under-A", users[2], "openai")
        await storage.put_key(users[2], "openai", sealed.version, sealed.blob, "er-A", None, now)

    async def run() -> Any:
        await storage.connect()
        try:
            custody = KeyCustody(relay_b, storage, None, "local", 1.0)
            return await reencrypt(_RacingStorage(storage, users_act), custody, batch_size=100)
        finally:
            await storage.close()

    result = asyncio.run(run())
    # Three rows were swapped; the three changed meanwhile were left alone.
    assert (result.rewritten, result.unreadable) == (3, 0)
    assert result.remaining == 1  # the stale instance's write: a second run will take it
    opened = opened_keys(db_path, KeyCipher(SECRET_B, [SECRET_A]))
    assert opened[f"{users[0]}/openai"] == "sk-test-NEW-under-B"  # not clobbered
    assert f"{users[1]}/openai" not in opened  # not resurrected
    assert opened[f"{users[2]}/openai"] == "sk-test-NEW-under-A"
    for user_id in users[3:]:
        assert opened[f"{user_id}/openai"] == seeded[user_id][0]
    assert versions(db_path) == {VERSION_B: 4, VERSION_A: 1}
