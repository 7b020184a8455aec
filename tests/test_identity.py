"""Bring your own identity (SPEC §10): the app's signed-in user's JWT as the credential.

Real relay processes verify tokens from test identity providers on loopback
(`providers/idp.py`: RS256, ES256 and EdDSA keys generated per run, HS256 shared secret,
a JWKS file). Every attack from the issue gets its own test, and every refusal is checked
to happen before anything goes upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from conftest import identity_relay
from cryptography.hazmat.primitives import serialization
from providers.idp import (
    AUDIENCE,
    TEST_HS256_SECRET,
    IdP,
    hs256_token,
    issuers_toml,
    new_key,
)
from providers.mock import MockProviders
from providers.relay import (
    CHAT,
    FAKE_KEY,
    TEST_ENCRYPTION_SECRET,
    Relay,
    error_of,
    fake_secret,
)

HS256_ISSUER = "https://supabase.test/auth/v1"
FILE_ISSUER = "https://offline.test/"
JWKS_TIMEOUT_S = 1.0
APP_SECRET = fake_secret("identity-app")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuers:
    """The identity providers of this module's relay, one per concern: key-rotation and
    endpoint-failure tests each get their own, so their fetch counts are their own."""

    def __init__(self) -> None:
        self.main = IdP([new_key("RS256"), new_key("ES256"), new_key("EdDSA")]).start()
        self.other = IdP([new_key("RS256")]).start()  # the same `sub` values, another issuer
        self.rotating = IdP([new_key("RS256")]).start()
        self.burst = IdP([new_key("ES256")]).start()
        self.down = IdP([new_key("RS256")]).start()
        self.hang = IdP([new_key("RS256")]).start()
        self.garbage = IdP([new_key("RS256")]).start()
        self.offline_key = new_key("EdDSA")
        self.hang.set_mode("hang")
        self.garbage.set_mode("garbage")

    @property
    def remote(self) -> list[IdP]:
        return [self.main, self.other, self.rotating, self.burst, self.down, self.hang,
                self.garbage]  # fmt: skip

    def write(self, directory: Path) -> Path:
        jwks_file = directory / "offline-jwks.json"
        jwks_file.write_text(json.dumps({"keys": [self.offline_key.public_jwk()]}))
        tables: list[dict[str, Any]] = [
            {"issuer": idp.issuer, "audience": AUDIENCE, "jwks_url": idp.jwks_url}
            for idp in self.remote
        ]
        tables[0]["app_id"] = "main-app"
        tables.append({"issuer": HS256_ISSUER, "audience": ["authenticated", AUDIENCE],
                       "hs256_secret_env": "TEST_SUPABASE_JWT_SECRET"})  # fmt: skip
        tables.append({"issuer": FILE_ISSUER, "audience": AUDIENCE,
                       "jwks_file": jwks_file.name})  # fmt: skip
        path = directory / "issuers.toml"
        path.write_text(issuers_toml(*tables))
        return path

    def stop(self) -> None:
        for idp in self.remote:
            idp.stop()


@pytest.fixture(scope="module")
def idps() -> Iterator[Issuers]:
    issuers = Issuers()
    yield issuers
    issuers.stop()


@pytest.fixture(scope="module")
def id_relay(
    mocks: MockProviders, idps: Issuers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    directory = tmp_path_factory.mktemp("identity")
    with identity_relay(
        mocks, directory, idps.write(directory),
        TEST_SUPABASE_JWT_SECRET=TEST_HS256_SECRET,
        JWKS_TIMEOUT_S=str(JWKS_TIMEOUT_S),
        APP_SECRET=APP_SECRET,
    ) as server:  # fmt: skip
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def call(relay: Relay, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, relay.url + path, headers=bearer(token), timeout=30, **kw)


def refused(relay: Relay, mocks: MockProviders, token: str, *words: str) -> str:
    """A relayed call with `token` gets 401 naming the reason, and nothing went upstream."""
    r = call(relay, "POST", "/relay/openai/v1/chat/completions", token, json=CHAT)
    message = error_of(r, 401)
    for word in words:
        assert word in message, message
    assert mocks.openai.requests == []
    return message


def new_sub(prefix: str = "user") -> str:
    return f"{prefix}-{time.monotonic_ns()}"


# --- what a user does ---------------------------------------------------------------------
def test_signed_in_user_stores_a_key_and_relays_through_the_openai_sdk(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    token = idps.main.token(sub=new_sub())
    r = call(id_relay, "POST", "/keys/openai", token, json={"key": FAKE_KEY})
    assert r.status_code == 200, r.text
    listed = call(id_relay, "GET", "/keys", token).json()
    assert [k["provider"] for k in listed["keys"]] == ["openai"]

    client = openai.OpenAI(api_key=token, base_url=f"{id_relay.url}/relay/openai/v1")
    answer = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content
    chunks = list(client.chat.completions.create(**CHAT, stream=True))  # type: ignore[call-overload]
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    sent = mocks.openai.requests
    assert len(sent) == 2
    for request in sent:  # the provider sees the user's key, never the sign-in token
        assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"
        assert token not in json.dumps(dict(request.headers))
    assert token not in id_relay.log_text() and token.split(".")[2] not in id_relay.log_text()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_each_asymmetric_algorithm(id_relay: Relay, idps: Issuers, alg: str) -> None:
    key = next(k for k in idps.main.keys if k.alg == alg)
    r = call(id_relay, "GET", "/keys", idps.main.token(sub=new_sub(), key=key))
    assert r.status_code == 200, r.text


def test_hs256_shared_secret_issuer(id_relay: Relay) -> None:
    token = hs256_token(HS256_ISSUER, sub=new_sub(), aud="authenticated")
    assert call(id_relay, "GET", "/keys", token).status_code == 200


def test_offline_jwks_file_issuer(id_relay: Relay, idps: Issuers) -> None:
    now = int(time.time())
    key = idps.offline_key
    token = jwt.encode({"iss": FILE_ISSUER, "aud": AUDIENCE, "sub": new_sub(), "exp": now + 60},
                       key.private, algorithm=key.alg, headers={"kid": key.kid})  # fmt: skip
    assert call(id_relay, "GET", "/keys", token).status_code == 200


def test_the_same_sub_under_two_issuers_is_two_users(id_relay: Relay, idps: Issuers) -> None:
    sub = new_sub("shared")
    first = idps.main.token(sub=sub)
    assert call(id_relay, "POST", "/keys/openai", first, json={"key": FAKE_KEY}).status_code == 200
    assert len(call(id_relay, "GET", "/keys", first).json()["keys"]) == 1
    assert call(id_relay, "GET", "/keys", idps.other.token(sub=sub)).json()["keys"] == []
    # A fresh token of the same identity is the same user.
    again = idps.main.token(sub=sub, ttl_s=900)
    assert again != first and len(call(id_relay, "GET", "/keys", again).json()["keys"]) == 1


def test_racing_first_uses_make_one_user(id_relay: Relay, idps: Issuers) -> None:
    sub = new_sub("race")
    tokens = [idps.main.token(sub=sub, ttl_s=600 + n) for n in range(8)]  # 8 distinct tokens
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda t: call(id_relay, "GET", "/keys", t).status_code, tokens))
    assert statuses == [200] * 8
    assert call(id_relay, "POST", "/keys/openai", tokens[0], json={"key": FAKE_KEY}).is_success
    assert all(len(call(id_relay, "GET", "/keys", t).json()["keys"]) == 1 for t in tokens)


def test_the_identity_provider_owns_the_credential(id_relay: Relay, idps: Issuers) -> None:
    token = idps.main.token(sub=new_sub())
    for path in ("/tokens/rotate", "/tokens/revoke"):
        message = error_of(call(id_relay, "POST", path, token), 400)
        assert "identity provider" in message and idps.main.issuer in message
    assert call(id_relay, "POST", "/keys/openai", token, json={"key": FAKE_KEY}).is_success
    erased = call(id_relay, "DELETE", "/users", token)
    assert erased.status_code == 200 and erased.json()["deleted"] is True
    # The next sign-in is a new, empty user: the relay's data of the old one is gone.
    assert call(id_relay, "GET", "/keys", token).json()["keys"] == []


def test_scoped_token_minted_with_a_sign_in_never_outlives_it(
    id_relay: Relay, idps: Issuers
) -> None:
    token = idps.main.token(sub=new_sub(), ttl_s=120)
    assert call(id_relay, "POST", "/keys/openai", token, json={"key": FAKE_KEY}).is_success
    minted = call(id_relay, "POST", "/tokens", token, json={"ttl_s": 3600, "models": ["gpt-*"]})
    assert minted.status_code == 201, minted.text
    exp_ms = jwt.decode(token, options={"verify_signature": False})["exp"] * 1000
    assert minted.json()["expires_at"] <= exp_ms
    scoped = minted.json()["token"]
    r = httpx.post(f"{id_relay.url}/relay/openai/v1/chat/completions", json=CHAT,
                   headers={"x-relay-token": scoped})  # fmt: skip
    assert r.status_code == 200, r.text


def test_stats_are_recorded_under_the_issuers_app_id(id_relay: Relay, idps: Issuers) -> None:
    token = idps.main.token(sub=new_sub())
    assert call(id_relay, "POST", "/keys/openai", token, json={"key": FAKE_KEY}).is_success
    assert call(id_relay, "POST", "/relay/openai/v1/chat/completions", token, json=CHAT).is_success
    assert call(id_relay, "GET", "/stats", token).json()["total"] == 1
    app = httpx.get(f"{id_relay.url}/stats/main-app", headers=bearer(APP_SECRET))
    assert app.status_code == 200 and app.json()["total"] >= 1, app.text


# --- the attack list ------------------------------------------------------------------------
def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(idp: IdP, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": new_sub("attacker"), "iat": now,
              "exp": now + 600}  # fmt: skip
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def test_alg_none_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, _claims(idps.main)) + "."
    # "a." with an empty signature is not even the JWS shape; with a dummy signature it is.
    refused(id_relay, mocks, token + "AAAA", 'alg "none"')


def test_hs256_signed_with_the_public_key_is_refused(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    """Key confusion: an HMAC made with the issuer's published RSA key as the secret."""
    rsa_key = idps.main.keys[0]
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = _unsigned({"alg": "HS256", "kid": rsa_key.kid}, _claims(idps.main))
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    refused(id_relay, mocks, f"{signing_input}.{_b64(mac)}", 'alg "HS256"', "RS256")


@pytest.mark.parametrize("kid", ["../../../../dev/null", "/etc/passwd", "file:///etc/passwd",
                                 "' OR 1=1 --", "x" * 200])  # fmt: skip
def test_kid_tricks_find_no_key(
    id_relay: Relay, idps: Issuers, mocks: MockProviders, kid: str
) -> None:
    key = idps.main.keys[0]
    refused(id_relay, mocks, idps.main.token(key=key, headers={"kid": kid}), "key the issuer")


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_a_token_naming_its_own_key_is_refused(
    id_relay: Relay, idps: Issuers, mocks: MockProviders, header: str
) -> None:
    """jku/x5u pointing elsewhere (here: at another trusted IdP), or an embedded key."""
    attacker = idps.other
    value: Any = attacker.jwks_url if header in ("jku", "x5u") else attacker.keys[0].public_jwk()
    if header == "x5c":
        value = ["MIIB"]
    token = idps.main.token(key=attacker.keys[0], headers={header: value})
    refused(id_relay, mocks, token, f'"{header}" header')


def test_missing_exp_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    refused(id_relay, mocks, idps.main.token(exp=None), "no exp claim")


def test_expired_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    refused(id_relay, mocks, idps.main.token(ttl_s=-120), "expired")


def test_expired_within_leeway_is_accepted(id_relay: Relay, idps: Issuers) -> None:
    assert call(id_relay, "GET", "/keys", idps.main.token(ttl_s=-5)).status_code == 200


def test_not_yet_valid_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    refused(id_relay, mocks, idps.main.token(nbf=int(time.time()) + 600), "not valid yet")


def test_wrong_audience_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    refused(id_relay, mocks, idps.main.token(aud="another-app"), "wrong audience", AUDIENCE)
    refused(id_relay, mocks, idps.main.token(aud=None), "no aud claim")


def test_unknown_issuer_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    refused(id_relay, mocks, idps.main.token(iss="https://evil.example/"), "unknown issuer")
    refused(id_relay, mocks, idps.main.token(iss=None), "no iss claim")


def test_bad_signature_is_refused(id_relay: Relay, idps: Issuers, mocks: MockProviders) -> None:
    head, _, sig = idps.main.token().split(".")
    forged = _b64(json.dumps(_claims(idps.main, sub="someone-else")).encode())
    refused(id_relay, mocks, f"{head}.{forged}.{sig}", "bad signature")
    # Signed by a key the attacker made, under the kid of a published one.
    impostor = new_key("RS256", kid=idps.main.keys[0].kid)
    refused(id_relay, mocks, idps.main.token(key=impostor), "bad signature")


def test_hs256_with_a_guessed_secret_is_refused(id_relay: Relay, mocks: MockProviders) -> None:
    now = int(time.time())
    claims = {"iss": HS256_ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now + 60}
    token = jwt.encode(claims, "test-only-not-the-secret-0123456789abcdef", algorithm="HS256")
    refused(id_relay, mocks, token, "bad signature")


def test_a_token_without_the_user_claim_is_refused(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    refused(id_relay, mocks, idps.main.token(sub=None), '"sub" claim')


def test_garbage_in_jwt_shape_is_refused(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    refused(id_relay, mocks, "eyJub3QganNvbg.eyJ4Ijox.c2ln", "well-formed")
    refused(id_relay, mocks, _unsigned({"alg": "RS256"}, {"iss": 5}) + ".c2ln", "no iss")
    refused(id_relay, mocks, "eyJh.eyJi.eyJj.eyJk.eyJl", "encrypted (five-part)")  # a JWE
    refused(id_relay, mocks, f'"{idps.main.token()}"', "three base64url parts")  # quoted


# --- keys at the identity provider ------------------------------------------------------------
def test_a_rotated_signing_key_is_picked_up_without_restart(id_relay: Relay, idps: Issuers) -> None:
    idp = idps.rotating
    assert call(id_relay, "GET", "/keys", idp.token(sub=new_sub())).status_code == 200
    before = idp.fetches
    idp.keys.append(new_key("RS256"))  # the IdP publishes a new key and signs with it
    token = idp.token(sub=new_sub(), key=idp.keys[-1])
    assert call(id_relay, "GET", "/keys", token).status_code == 200
    assert idp.fetches == before + 1


def test_a_burst_of_unknown_kids_refetches_at_most_once(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    idp = idps.burst
    assert call(id_relay, "GET", "/keys", idp.token(sub=new_sub())).status_code == 200
    before = idp.fetches
    forged = [idp.token(headers={"kid": f"forged-{n}"}) for n in range(40)]
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda t: call(id_relay, "GET", "/keys", t).status_code, forged))
    assert statuses == [401] * 40
    assert idp.fetches - before <= 1


def test_while_the_jwks_endpoint_is_down_cached_keys_keep_working(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    idp = idps.down
    assert call(id_relay, "GET", "/keys", idp.token(sub=new_sub())).status_code == 200
    idp.set_mode("down")
    try:
        assert call(id_relay, "GET", "/keys", idp.token(sub=new_sub())).status_code == 200
        started = time.monotonic()
        refused(id_relay, mocks, idp.token(headers={"kid": "new-kid"}), "key the issuer")
        assert time.monotonic() - started < JWKS_TIMEOUT_S + 5
    finally:
        idp.set_mode("ok")


def test_a_hanging_jwks_endpoint_answers_503_in_bounded_time(
    id_relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    started = time.monotonic()
    r = call(id_relay, "GET", "/keys", idps.hang.token())
    assert "could not be fetched" in error_of(r, 503)
    assert time.monotonic() - started < JWKS_TIMEOUT_S + 5


def test_a_jwks_endpoint_sending_garbage_answers_503(id_relay: Relay, idps: Issuers) -> None:
    r = call(id_relay, "GET", "/keys", idps.garbage.token())
    assert "is not JSON" in error_of(r, 503)


# --- configuration ---------------------------------------------------------------------------
def test_jwt_only_closes_registration(mocks: MockProviders, idps: Issuers, tmp_path: Path) -> None:
    with identity_relay(mocks, tmp_path, idps.write(tmp_path), JWT_ONLY="true",
                        TEST_SUPABASE_JWT_SECRET=TEST_HS256_SECRET) as server:  # fmt: skip
        r = httpx.post(f"{server.url}/users", json={"app_id": "x"})
        assert "JWT_ONLY" in error_of(r, 403)
        assert call(server, "GET", "/keys", idps.main.token(sub=new_sub())).status_code == 200


def _serve(tmp_path: Path, issuers: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "issuers.toml").write_text(issuers)
    full = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
            "JWT_ISSUERS_FILE": str(tmp_path / "issuers.toml"), **env}  # fmt: skip
    command = [sys.executable, "-m", "byok_relay", "serve", "--port", "1"]
    return subprocess.run(command, env=full, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"audience": "a", "jwks_url": "http://127.0.0.1/jwks"}, "must use https"),
        ({"audience": "a", "jwks_url": "https://10.1.2.3/jwks"}, "private address"),
        ({"audience": "a", "jwks_url": "https://idp.example/j", "hs256_secret_env": "S"},
         "exactly one key source"),
        ({"audience": "a", "jwks_url": "https://idp.example/j", "algorithms": ["none"]},
         '"none" is never accepted'),
        ({"audience": "a", "jwks_url": "https://idp.example/j", "algorithms": ["HS256"]},
         "HS256 cannot be used with a JWKS"),
        ({"audience": "a", "hs256_secret_env": "UNSET_SECRET"}, "UNSET_SECRET is not set"),
        ({"audience": "a", "jwks_file": "missing.json"}, "does not exist"),
        ({"jwks_url": "https://idp.example/j"}, "audience"),
        ({"audience": "a", "jwks_url": "https://idp.example/j", "leeway": 3}, "leeway"),
    ],
)  # fmt: skip
def test_a_malformed_issuers_file_stops_serve_with_one_line(
    tmp_path: Path, table: dict[str, Any], words: str
) -> None:
    done = _serve(tmp_path, issuers_toml({"issuer": "https://idp.example/", **table}))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "JWT_ISSUERS_FILE" in lines[0] and words in lines[0], lines
    assert "Traceback" not in done.stderr


def test_a_short_shared_secret_stops_serve(tmp_path: Path) -> None:
    done = _serve(tmp_path, issuers_toml({"issuer": "x", "audience": "a",
                                          "hs256_secret_env": "S"}), S="tiny-value")  # fmt: skip
    assert done.returncode == 2 and "shorter than 32 bytes" in done.stderr
    assert "tiny-value" not in done.stderr  # the secret is never shown


def test_doctor_fetches_each_jwks(idps: Issuers, tmp_path: Path) -> None:
    path = idps.write(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
           "JWT_ISSUERS_FILE": str(path), "ALLOW_PRIVATE_UPSTREAMS": "true",
           "TEST_SUPABASE_JWT_SECRET": TEST_HS256_SECRET, "JWKS_TIMEOUT_S": "1",
           "DATABASE_URL": f"sqlite:///{tmp_path}/doctor.db"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "byok_relay", "doctor"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    out = done.stdout
    main_kids = ", ".join(sorted(k.kid for k in idps.main.keys))
    assert f"{idps.main.issuer}: 3 keys ({main_kids})" in out, out
    assert f"{idps.garbage.issuer}: cannot fetch the JWKS" in out and "is not JSON" in out, out
    assert "no answer within JWKS_TIMEOUT_S=1 s" in out, out
    assert f"{HS256_ISSUER}: shared secret" in out, out
    assert f"{FILE_ISSUER}: 1 key ({idps.offline_key.kid})" in out, out
    assert done.returncode == 1  # two issuers' keys cannot be had
    assert TEST_HS256_SECRET not in out + done.stderr


def test_a_relay_without_issuers_refuses_a_jwt_saying_why(
    relay: Relay, idps: Issuers, mocks: MockProviders
) -> None:
    """The default relay has no JWT_ISSUERS_FILE: a sign-in token gets a 401 naming it."""
    refused(relay, mocks, idps.main.token(), "trusts no identity provider", "JWT_ISSUERS_FILE")
