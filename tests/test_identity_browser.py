"""Headless Chromium: the browser client with ``getToken`` (the app's own sign-in JWT, SPEC §10).

A page on a second loopback origin imports the relay's ``/client.js`` cross-origin and
builds ``new RelayClient({ baseUrl, getToken })``; its ``getToken`` fetches a fresh JWT,
minted per call by a test identity provider (``providers/idp.py``), from a ``/token``
endpoint on the page's own origin. The relay (``JWT_ONLY=true``: no ``POST /users`` at all)
verifies it against the IdP's JWKS on loopback. The page wraps ``fetch`` to record the
credential headers each request carried.

Skips without ``/usr/bin/chromium`` unless ``REQUIRE_BROWSER=1`` (see ``test_browser.py``,
whose fixtures and helpers this module reuses).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import test_browser
from conftest import identity_relay
from providers.idp import AUDIENCE, IdP, issuers_toml, new_key
from providers.mock import MockProviders
from providers.relay import Relay
from test_browser import _assert_incremental, _watch_console

# test_browser's Chromium fixtures (skipped, or failed with REQUIRE_BROWSER=1, without it).
browser_required = test_browser.browser_required
browser = test_browser.browser

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

USER_KEY = "sk-fake-openai-idtoken-7777"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>byok-relay getToken test</title>
<link rel="icon" href="data:,"></head>
<body><script type="module">
import { RelayClient, RelayError, extractText } from '__RELAY__/client.js'

const MESSAGES = [{ role: 'user', content: 'Say hello' }]
// Every request the client makes, with the credential headers it carried.
const sent = []
const spyFetch = (url, init = {}) => {
  const h = init.headers || {}
  sent.push({
    url: String(url),
    authorization: h.authorization ?? null,
    relayToken: h['x-relay-token'] ?? null
  })
  return fetch(url, init)
}
let getTokenCalls = 0
// What an app does with Auth0 / Clerk / Firebase: ask its identity SDK, per call.
const getToken = async () => {
  getTokenCalls++
  const r = await fetch('/token?sub=' + encodeURIComponent(window.sub), { cache: 'no-store' })
  if (!r.ok) throw new Error('token endpoint answered HTTP ' + r.status)
  return r.text()
}
const describe = (e) => ({
  error: String(e && e.message || e),
  name: e && e.name,
  status: e && e.status,
  code: e && e.code,
  isRelayError: e instanceof RelayError,
  cause: e && e.cause ? String(e.cause.message || e.cause) : null
})
async function attempt (fn) {
  try { return { ok: await fn() } } catch (e) { return describe(e) }
}

window.signedIn = async (relayUrl, sub) => {
  window.sub = sub
  const out = { localStorageBefore: localStorage.length, steps: [] }
  const relay = new RelayClient({ baseUrl: relayUrl, getToken, fetch: spyFetch })
  const step = async (name, fn) => {
    const calls = getTokenCalls
    const requests = sent.length
    out[name] = await attempt(fn)
    out.steps.push({ name, getTokenCalls: getTokenCalls - calls, requests: sent.length - requests })
  }
  await step('store', () => relay.storeKey('openai', '__KEY__'))
  await step('keys', () => relay.listKeys())
  await step('stream', async () => {
    const t0 = performance.now()
    const times = []
    let text = ''
    for await (const ev of relay.streamChat({ model: 'openai/mock-slow', messages: MESSAGES })) {
      const t = extractText(ev.json)
      if (t) { times.push(performance.now() - t0); text += t }
    }
    return { text, times }
  })
  await step('models', () => relay.models().then((m) => typeof m))  // needs no credential
  await step('register', () => relay.register())
  await step('rotate', () => relay.rotateToken())
  await step('revoke', () => relay.revokeToken())
  out.sent = sent.splice(0)
  out.tokenProperty = relay.token
  out.localStorageAfter = Object.keys(localStorage)
  out.sessionStorageAfter = Object.keys(sessionStorage)
  return out
}

// getToken fails (signed out, SDK error ...): every call fails before anything is sent.
window.signedOut = async (relayUrl) => {
  const failing = {
    throws: () => { throw new Error('login_required') },
    rejects: async () => { throw new Error('token endpoint answered HTTP 401') },
    empty: async () => '',
    nothing: async () => null
  }
  const out = {}
  for (const [label, fn] of Object.entries(failing)) {
    const relay = new RelayClient({ baseUrl: relayUrl, getToken: fn, fetch: spyFetch })
    out[label] = {
      store: await attempt(() => relay.storeKey('openai', '__KEY__')),
      keys: await attempt(() => relay.listKeys()),
      stream: await attempt(async () => {
        const body = { model: 'openai/mock-slow', messages: MESSAGES }
        for await (const ev of relay.streamChat(body)) void ev
      }),
      chat: await attempt(() => relay.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES }))
    }
  }
  out.sent = sent.splice(0)
  out.localStorageAfter = Object.keys(localStorage)
  return out
}

document.documentElement.dataset.ready = '1'
</script></body></html>
"""


class TokenOrigin:
    """The app's own origin: serves the page and ``GET /token?sub=…`` (a fresh JWT per
    call, each distinct thanks to its ``jti``); remembers every token it handed out."""

    def __init__(self, idp: IdP, relay_url: str) -> None:
        self.minted: list[str] = []
        page = PAGE.replace("__RELAY__", relay_url).replace("__KEY__", USER_KEY).encode()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/":
                    self._send(page, "text/html; charset=utf-8")
                elif url.path == "/token":
                    sub = parse_qs(url.query).get("sub", [""])[0]
                    if not sub:
                        self.send_error(401)
                        return
                    token = idp.token(sub=sub, jti=uuid.uuid4().hex)
                    origin.minted.append(token)
                    self._send(token.encode(), "text/plain")
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    provider = IdP([new_key("RS256")]).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def id_relay(
    mocks: MockProviders, idp: IdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    directory: Path = tmp_path_factory.mktemp("identity-browser")
    issuers = directory / "issuers.toml"
    table = {"issuer": idp.issuer, "audience": AUDIENCE, "jwks_url": idp.jwks_url}
    issuers.write_text(issuers_toml(table))
    # JWT_ONLY: POST /users is closed, the client must never need it.
    with identity_relay(mocks, directory, issuers, JWT_ONLY="true") as server:
        yield server


@pytest.fixture
def app_origin(idp: IdP, id_relay: Relay) -> Iterator[TokenOrigin]:
    origin = TokenOrigin(idp, str(id_relay.url).rstrip("/"))
    relay = urlsplit(str(id_relay.url))
    assert origin.url != f"{relay.scheme}://{relay.netloc}"
    try:
        yield origin
    finally:
        origin.stop()


async def _open(browser: Any, origin: str) -> tuple[Any, Any, list[str]]:
    context = await browser.new_context()
    page = await context.new_page()
    errors = _watch_console(page)
    await page.goto(origin + "/")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    return context, page, errors


# --- tests -----------------------------------------------------------------------------


async def test_get_token_is_asked_before_every_request_and_never_stored(
    browser: Any, id_relay: Relay, mocks: MockProviders, app_origin: TokenOrigin
) -> None:
    context, page, errors = await _open(browser, app_origin.url)
    sub = f"browser-user-{time.monotonic_ns()}"
    out = await page.evaluate(
        "([u, s]) => window.signedIn(u, s)", [str(id_relay.url).rstrip("/"), sub]
    )

    # the user was created on first use (JWT_ONLY: no POST /users), stored a key, saw it
    assert out["store"] == {"ok": {"ok": True, "provider": "openai"}}, out["store"]
    keys = out["keys"]["ok"]
    assert keys["providers"] == ["openai"] and keys["keys"][0]["hint"] == "7777"
    _assert_incremental(out["stream"]["ok"], "streamed chat with a getToken credential")

    # one getToken call per request that needs a credential, none for one that does not
    steps = {s["name"]: (s["getTokenCalls"], s["requests"]) for s in out["steps"]}
    assert steps["store"] == (1, 1) and steps["keys"] == (1, 1) and steps["stream"] == (1, 1)
    assert steps["models"] == (0, 1) and out["models"] == {"ok": "object"}

    # each request carried the token just minted for it, as a Bearer, and no relay token
    sent = out["sent"]
    assert len(app_origin.minted) == 3 and len(set(app_origin.minted)) == 3
    credentialed = [s for s in sent if s["authorization"] is not None]
    assert [s["authorization"] for s in credentialed] == [f"Bearer {t}" for t in app_origin.minted]
    assert [urlsplit(s["url"]).path for s in credentialed] == ["/keys/openai", "/keys", "/relay"]
    assert all(s["relayToken"] is None for s in sent)
    assert [urlsplit(s["url"]).path for s in sent if s["authorization"] is None] == ["/models"]

    # relay-token operations are refused locally, clearly, and send nothing
    for name, what in (("register", "register()"), ("rotate", "rotateToken()"),
                       ("revoke", "revokeToken()")):  # fmt: skip
        refused = out[name]
        assert refused["isRelayError"] is True and refused["status"] == 0, refused
        assert refused["code"] == "not_with_get_token" and what in refused["error"], refused
        assert steps[name] == (0, 0), (name, steps[name])

    # nothing persisted in the browser
    assert out["localStorageBefore"] == 0
    assert out["localStorageAfter"] == [] and out["sessionStorageAfter"] == []
    assert out["tokenProperty"] is None

    # the provider saw the user's key, never the sign-in token
    (upstream,) = [r for r in mocks.openai.requests if r.path.endswith("/chat/completions")]
    assert upstream.headers.get("authorization") == f"Bearer {USER_KEY}"
    upstream_headers = json.dumps(dict(upstream.headers))
    assert not any(t in upstream_headers for t in app_origin.minted)
    assert upstream.json()["model"] == "mock-slow" and upstream.json()["stream"] is True

    assert not [e for e in errors if "pageerror" in e], errors
    await context.close()


async def test_a_failing_get_token_sends_nothing(
    browser: Any, id_relay: Relay, mocks: MockProviders, app_origin: TokenOrigin
) -> None:
    context, page, errors = await _open(browser, app_origin.url)
    out = await page.evaluate("(u) => window.signedOut(u)", str(id_relay.url).rstrip("/"))

    for label, cause in (("throws", "login_required"), ("rejects", "HTTP 401")):
        for call, failure in out[label].items():
            assert failure.get("isRelayError") is True and failure["status"] == 0, (label, call)
            assert failure["code"] == "get_token_failed", (label, call, failure)
            assert "getToken() failed" in failure["error"] and cause in failure["error"]
            assert "not sent" in failure["error"] and cause in failure["cause"]
    for label, shown in (("empty", "an empty string"), ("nothing", "null")):
        for call, failure in out[label].items():
            assert failure.get("isRelayError") is True and failure["status"] == 0, (label, call)
            assert failure["code"] == "no_token", (label, call, failure)
            assert f"getToken() returned {shown}" in failure["error"], failure
            assert "signed in" in failure["error"]

    # no request left the page: none reached the relay, let alone a provider
    assert out["sent"] == []
    assert mocks.openai.requests == [] and mocks.anthropic.requests == []
    assert out["localStorageAfter"] == []
    assert not [e for e in errors if "pageerror" in e], errors
    await context.close()
