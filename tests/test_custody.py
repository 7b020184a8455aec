"""Key custody in a PKCS#11 token (SPEC §11), with SoftHSM2 as the real token.

Every test gets its own token (`providers/softhsm.py`) and talks to real relay and CLI
processes: `init --pkcs11`, serving with the master key in the HSM, start-up errors,
the HSM lost and back while serving, `reencrypt --to pkcs11 / --to local` (killed half
way and resumed), a database mixed mid-migration, and `doctor`.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import _stop_quietly
from providers.mock import MockProviders
from providers.relay import (
    CHAT,
    FAKE_KEY,
    TEST_ENCRYPTION_SECRET,
    Relay,
    error_of,
    register_user,
    relay_env,
    start_relay_process,
)
from providers.softhsm import KEY_LABEL, TEST_PIN, TOKEN_LABEL, SoftHsm
from test_reencrypt import HMAC_SECRET, opened_keys, seed

from byok_relay.crypto import KeyCipher

CHAT_PATH = "/relay/openai/v1/chat/completions"


def cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET, **env}
    return subprocess.run([sys.executable, "-m", "byok_relay", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture
def hsm(tmp_path: Path) -> SoftHsm:
    return SoftHsm(tmp_path / "hsm")


@pytest.fixture
def hsm_with_key(hsm: SoftHsm, tmp_path: Path) -> SoftHsm:
    done = cli(hsm.env(), tmp_path, "init", "--pkcs11", "--path", str(tmp_path / "init.env"))
    assert done.returncode == 0, done.stderr
    return hsm


def db_rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT user_id, provider, key_version FROM api_keys").fetchall()


def start(mocks: MockProviders, directory: Path, **env: str) -> Relay:
    directory.mkdir(parents=True, exist_ok=True)
    return start_relay_process(relay_env(mocks, directory, **env), directory)


# --- init --------------------------------------------------------------------------------
def test_init_pkcs11_creates_a_non_extractable_key_once(hsm: SoftHsm, tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    first = cli(hsm.env(), tmp_path, "init", "--pkcs11", "--path", str(env_file))
    assert first.returncode == 0, first.stderr
    assert f"created the non-extractable AES-256 key {KEY_LABEL!r}" in first.stdout
    assert env_file.is_file()  # the .env (token-HMAC secrets) is written first when absent
    again = cli(hsm.env(), tmp_path, "init", "--pkcs11", "--path", str(env_file))
    assert again.returncode == 0 and "already exists" in again.stdout, again.stdout
    # Read the key's attributes from the token itself: it must never leave the HSM.
    probe = (
        "import pkcs11, sys\n"
        "from pkcs11 import Attribute, KeyType\n"
        f"t = pkcs11.lib({hsm.module!r}).get_token(token_label={TOKEN_LABEL!r})\n"
        f"s = t.open(user_pin={TEST_PIN!r})\n"
        f"k = s.get_key(label={KEY_LABEL!r}, key_type=KeyType.AES)\n"
        "print(k.key_length, k[Attribute.EXTRACTABLE], k[Attribute.SENSITIVE])\n"
        "try:\n    k[Attribute.VALUE]\nexcept pkcs11.exceptions.AttributeSensitive:\n"
        "    print('value refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env={"SOFTHSM2_CONF": str(hsm.conf)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split("\n")[:2] == ["256 False True", "value refused"], done


# --- serving -----------------------------------------------------------------------------
def test_keys_are_sealed_under_an_hsm_wrapped_data_key(
    mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    relay = start(mocks, tmp_path / "relay", **hsm_with_key.env())
    try:
        user = register_user(relay)
        user.store_key("openai", FAKE_KEY)
        r = httpx.post(relay.url + CHAT_PATH, json=CHAT, headers=user.headers)
        assert r.status_code == 200, r.text
        assert mocks.openai.last_request.headers["authorization"] == f"Bearer {FAKE_KEY}"
        deep = httpx.get(relay.url + "/health?deep=1").json()
        assert deep["checks"]["key_custody"] == "pkcs11 ok", deep
    finally:
        relay.stop()
    assert relay.db_path is not None
    ((_, _, version),) = db_rows(relay.db_path)
    assert version.startswith("p11:")
    raw = relay.db_path.read_bytes()
    assert FAKE_KEY.encode() not in raw
    with sqlite3.connect(relay.db_path) as conn:
        (label, mechanism, wrapped) = conn.execute(
            "SELECT key_label, mechanism, wrapped FROM data_keys WHERE id = ?",
            (version.removeprefix("p11:"),),
        ).fetchone()
    assert (label, mechanism, len(wrapped)) == (KEY_LABEL, "AES-GCM", 12 + 32 + 16)
    # The ENCRYPTION_SECRET alone no longer opens it: the data key is in the HSM's custody.
    with pytest.raises(Exception, match="unknown"):
        opened_keys(relay.db_path, KeyCipher(TEST_ENCRYPTION_SECRET))
    # A restart reads the key again through the HSM.
    again = start_relay_process(relay.env, relay.cwd)
    try:
        assert httpx.post(again.url + CHAT_PATH, json=CHAT, headers=user.headers).is_success
    finally:
        _stop_quietly(again)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"PKCS11_PIN": "test-only-wrong"}, "PKCS11_PIN: the token 'byok-relay-test' refused"),
        ({"PKCS11_MODULE": "/usr/lib/does-not-exist.so"}, "PKCS11_MODULE"),
        ({"PKCS11_TOKEN_LABEL": "no-such-token"}, "no token labelled 'no-such-token'"),
        ({"PKCS11_KEY_LABEL": "no-such-key"}, "byok-relay init --pkcs11"),
        ({"PKCS11_PIN_FILE": "/etc/hostname"}, "exactly one of PKCS11_PIN and PKCS11_PIN_FILE"),
        ({"PKCS11_TOKEN_LABEL": ""}, "PKCS11_TOKEN_LABEL: is required"),
    ],
)
def test_a_bad_hsm_setting_stops_serve_with_one_line(
    hsm_with_key: SoftHsm, tmp_path: Path, override: dict[str, str], words: str
) -> None:
    env = hsm_with_key.env(**override)
    done = cli(env, tmp_path, "serve", "--port", "1")
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert "Traceback" not in done.stderr and TEST_PIN not in done.stderr


def test_pin_file(mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(TEST_PIN + "\n")
    env = hsm_with_key.env(PKCS11_PIN_FILE=str(pin_file))
    env.pop("PKCS11_PIN")
    relay = start(mocks, tmp_path / "relay", **env)
    try:
        register_user(relay).store_key("openai", FAKE_KEY)
    finally:
        _stop_quietly(relay)


def test_hsm_lost_while_serving_answers_503_and_recovers_without_restart(
    mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    relay = start(mocks, tmp_path / "relay", CACHE_TTL_S="0.5", **hsm_with_key.env())
    try:
        user = register_user(relay)
        user.store_key("openai", FAKE_KEY)
        assert httpx.post(relay.url + CHAT_PATH, json=CHAT, headers=user.headers).is_success
        hsm_with_key.lose()
        time.sleep(1.0)  # the decrypted key and the data key leave the caches
        r = httpx.post(relay.url + CHAT_PATH, json=CHAT, headers=user.headers)
        assert "HSM" in error_of(r, 503) and r.headers["retry-after"] == "5"
        stored = httpx.post(f"{relay.url}/keys/anthropic", json={"key": FAKE_KEY},
                            headers=user.headers)  # fmt: skip
        assert stored.status_code == 503 and "HSM" in stored.json()["error"]
        deep = httpx.get(relay.url + "/health?deep=1")
        assert deep.status_code == 503
        assert deep.json()["checks"]["key_custody"].startswith("pkcs11 unavailable"), deep.json()
        assert httpx.get(relay.url + "/health").status_code == 200  # liveness stays up
        hsm_with_key.restore()
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(relay.url + CHAT_PATH, json=CHAT, headers=user.headers)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        time.sleep(1.1)  # the deep check reuses its answer for a second (HSM not crowded)
        assert httpx.get(relay.url + "/health?deep=1").status_code == 200
        assert relay.alive
    finally:
        _stop_quietly(relay)
    assert TEST_PIN not in relay.log_text() and FAKE_KEY not in relay.log_text()


# --- moving a deployment's keys ------------------------------------------------------------
def _reencrypt(env: dict[str, str], cwd: Path, to: str, batch: int = 200) -> tuple[int, str]:
    done = cli(env, cwd, "reencrypt", "--to", to, "--batch-size", str(batch))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def _versions(db: Path) -> dict[str, int]:
    counts = {"local": 0, "p11": 0}
    for _, _, version in db_rows(db):
        counts["p11" if version.startswith("p11:") else "local"] += 1
    return counts


def test_reencrypt_to_pkcs11_killed_half_way_loses_nothing(
    mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    db = tmp_path / "relay.db"
    seeded = seed(db, 3000, TEST_ENCRYPTION_SECRET, with_tokens=True)
    env = {
        **hsm_with_key.env(),
        "DATABASE_URL": f"sqlite:///{db}",
        "TOKEN_HMAC_SECRET": HMAC_SECRET,
    }
    command = [sys.executable, "-m", "byok_relay", "reencrypt", "--to", "pkcs11",
               "--batch-size", "5"]  # fmt: skip
    full = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET, **env}
    proc = subprocess.Popen(command, env=full, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while _versions(db)["p11"] < 300 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    moved = _versions(db)
    print(f"\n[custody] reencrypt --to pkcs11 killed after {moved['p11']} of 3000 keys")
    assert 0 < moved["p11"] < 3000 and sum(moved.values()) == 3000, moved

    # Mid-migration, a relay in pkcs11 custody reads both kinds of row.
    relay = start(mocks, tmp_path / "relay", DATABASE_URL=f"sqlite:///{db}",
                  TOKEN_HMAC_SECRET=HMAC_SECRET, **hsm_with_key.env())  # fmt: skip
    try:
        with sqlite3.connect(db) as conn:
            rows = dict(conn.execute("SELECT user_id, key_version FROM api_keys").fetchall())
        moved_user = next(u for u, v in rows.items() if v.startswith("p11:"))
        local_user = next(u for u, v in rows.items() if not v.startswith("p11:"))
        for user_id in (moved_user, local_user):
            token = seeded[user_id][1]
            r = httpx.post(relay.url + CHAT_PATH, json=CHAT, headers={"x-relay-token": token})
            assert r.status_code == 200, r.text
            sent = mocks.openai.last_request.headers["authorization"]
            assert sent == f"Bearer {seeded[user_id][0]}"
    finally:
        _stop_quietly(relay)

    code, out = _reencrypt(env, tmp_path, "pkcs11")
    assert code == 0 and "0 left" in out, out
    assert _versions(db) == {"local": 0, "p11": 3000}
    code, out = _reencrypt(env, tmp_path, "pkcs11")
    assert code == 0 and "re-encrypted 0 key(s)" in out, out  # nothing left to do
    # And back: every key opens with the local secret alone, exactly as seeded.
    code, out = _reencrypt(env, tmp_path, "local")
    assert code == 0 and _versions(db) == {"local": 3000, "p11": 0}, out
    opened = opened_keys(db, KeyCipher(TEST_ENCRYPTION_SECRET))
    assert opened == {f"{u}/openai": key for u, (key, _) in seeded.items()}


def test_reencrypt_exits_1_while_the_hsm_cannot_take_the_keys(
    hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    db = tmp_path / "relay.db"
    seed(db, 20, TEST_ENCRYPTION_SECRET)
    env = {**hsm_with_key.env(), "DATABASE_URL": f"sqlite:///{db}"}
    assert _reencrypt(env, tmp_path, "pkcs11")[0] == 0
    hsm_with_key.lose()
    try:
        code, out = _reencrypt(env, tmp_path, "local")
        assert code == 1 and "20 left" in out and "does not answer" in out, out
    finally:
        hsm_with_key.restore()
    assert _versions(db) == {"local": 0, "p11": 20}  # nothing half-written


def test_local_custody_still_reads_keys_left_in_the_hsm(
    mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    """After KEY_CUSTODY=local with the PKCS11_* settings kept, `p11:` rows still open,
    and new keys are sealed locally: the way back before `reencrypt --to local`."""
    relay = start(mocks, tmp_path / "a", **hsm_with_key.env())
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    _stop_quietly(relay)
    back = start_relay_process({**relay.env, "KEY_CUSTODY": "local"}, relay.cwd)
    try:
        assert httpx.post(back.url + CHAT_PATH, json=CHAT, headers=user.headers).is_success
        user.relay = back
        user.store_key("anthropic", FAKE_KEY)
    finally:
        _stop_quietly(back)
    assert relay.db_path is not None
    versions = {p: v for _, p, v in db_rows(relay.db_path)}
    assert versions["openai"].startswith("p11:") and not versions["anthropic"].startswith("p11")


# --- doctor --------------------------------------------------------------------------------
def test_doctor_checks_module_token_key_and_round_trip(
    hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    env = {**hsm_with_key.env(), "DATABASE_URL": f"sqlite:///{tmp_path}/d.db"}
    done = cli(env, tmp_path, "doctor")
    assert f"token {TOKEN_LABEL!r} accepts the PIN, key {KEY_LABEL!r} found" in done.stdout
    assert "wrap/unwrap round trip works (key custody: pkcs11)" in done.stdout, done.stdout
    bad = cli({**env, "PKCS11_PIN": "test-only-wrong"}, tmp_path, "doctor")
    assert bad.returncode == 1 and "refused the PIN" in bad.stdout, bad.stdout
    assert TEST_PIN not in done.stdout + bad.stdout


def test_pkcs11_without_its_extra_is_one_line(hsm_with_key: SoftHsm, tmp_path: Path) -> None:
    """`pip install byok-relay` without `[pkcs11]`: the binding is missing (simulated by
    blocking its import), and serve says which extra to install."""
    code = "import sys; sys.modules['pkcs11'] = None; from byok_relay.cli import main; " \
           "sys.exit(main(['serve', '--port', '1']))"  # fmt: skip
    full = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
            **hsm_with_key.env()}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=full, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "pip install 'byok-relay[pkcs11]'" in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1


def test_concurrent_requests_with_no_cache_all_reach_the_hsm_fine(
    mocks: MockProviders, hsm_with_key: SoftHsm, tmp_path: Path
) -> None:
    """CACHE_TTL_S=0: every request unwraps the data key in the HSM. 64 at once must all
    succeed (PKCS#11 calls are serialised on the HSM thread; concurrent sessions made
    SoftHSM2 answer CKR_GENERAL_ERROR)."""
    from concurrent.futures import ThreadPoolExecutor

    relay = start(mocks, tmp_path / "relay", CACHE_TTL_S="0", **hsm_with_key.env())
    try:
        user = register_user(relay)
        user.store_key("openai", FAKE_KEY)
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(
                lambda _: client.post(relay.url + CHAT_PATH, json=CHAT,
                                      headers=user.headers).status_code, range(64)))  # fmt: skip
        assert statuses == [200] * 64
    finally:
        _stop_quietly(relay)


def test_reencrypt_to_pkcs11_without_the_hsm_settings_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    seed(db, 3, TEST_ENCRYPTION_SECRET)
    done = cli({"DATABASE_URL": f"sqlite:///{db}"}, tmp_path, "reencrypt", "--to", "pkcs11")
    assert done.returncode == 2 and "set PKCS11_MODULE" in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert _versions(db) == {"local": 3, "p11": 0}
