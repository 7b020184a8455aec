"""A test identity provider on loopback: a JWKS endpoint and the tokens it signs.

Keys are generated per run with PyJWT's backend (`cryptography`): RSA (RS256), P-256
(ES256) and Ed25519 (EdDSA). The JWKS server is a small threaded HTTP server whose
behaviour a test switches: serve the keys, be down (500), hang, or send garbage; it
counts the fetches. ``IdP.token(...)`` signs a JWT with any of the keys, with claims
the test chooses (expired, wrong audience, another issuer ...).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

Mode = Literal["ok", "down", "hang", "garbage"]
AUDIENCE = "test-app"
#: An obviously fake HS256 secret (Supabase-style shared secret), >= 32 bytes.
TEST_HS256_SECRET = "test-only-hs256-shared-secret-0123456789abcdef"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        codec = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        jwk = dict(codec.to_jwk(public, as_dict=True))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


def new_key(alg: str, kid: str | None = None) -> SigningKey:
    if alg == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)


@dataclass
class IdP:
    """One issuer with its JWKS endpoint (``jwks_url``); ``issuer`` is its ``iss``."""

    keys: list[SigningKey]
    issuer: str = ""
    mode: Mode = "ok"
    max_age: int = 600
    fetches: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _release: threading.Event = field(default_factory=threading.Event, repr=False)

    # -- the JWKS endpoint ---------------------------------------------------------------
    def start(self) -> IdP:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                idp.fetches += 1
                if idp.mode == "hang":
                    idp._release.wait(60)
                    return
                if idp.mode == "down":
                    self.send_error(500)
                    return
                body = (
                    b"<html>not a jwks"
                    if idp.mode == "garbage"
                    else json.dumps({"keys": [k.public_jwk() for k in idp.keys]}).encode()
                )
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", f"public, max-age={idp.max_age}")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        if not self.issuer:
            self.issuer = f"{self.url}/"
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode != "hang":
            self._release.set()
            self._release = threading.Event()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- tokens --------------------------------------------------------------------------
    def token(
        self,
        sub: str = "user-1",
        key: SigningKey | None = None,
        ttl_s: int = 600,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub,
                                   "iat": now, "exp": now + ttl_s}  # fmt: skip
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})  # fmt: skip


def hs256_token(issuer: str, sub: str = "user-1", ttl_s: int = 600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + ttl_s}
    payload.update(claims)
    return jwt.encode(payload, TEST_HS256_SECRET, algorithm="HS256")


def issuers_toml(*tables: dict[str, Any]) -> str:
    """A JWT_ISSUERS_FILE with one [[issuer]] table per dict."""
    lines: list[str] = []
    for table in tables:
        lines.append("[[issuer]]")
        lines.extend(f"{name} = {json.dumps(value)}" for name, value in table.items())
        lines.append("")
    return "\n".join(lines)
