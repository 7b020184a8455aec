"""Real headless-Chromium tests of the browser client (``GET /client.js``) and the demo page.

* A page on a *second* loopback origin imports the relay's ``/client.js`` cross-origin,
  registers, stores fake keys and streams completions from the mock providers through the
  relay, sending the headers the official JS SDKs send (``x-stainless-*``,
  ``anthropic-dangerous-direct-browser-access``, ...): the CORS preflight must let them pass,
  and the text must arrive incrementally.
* The demo page (``GET /demo``) loads without console errors and chats with streaming + Stop.

Chromium comes from Debian (``.ci/install-browser.sh``); these tests skip when
``/usr/bin/chromium`` is absent, unless ``REQUIRE_BROWSER=1``, which turns that into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from providers.mock import REPLY_TOKENS, SLOW_EVENTS

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

#: What a mock-slow stream says: the reply tokens, then "tok<i> " up to SLOW_EVENTS.
SLOW_TEXT = "".join(
    REPLY_TOKENS[i] if i < len(REPLY_TOKENS) else f"tok{i} " for i in range(SLOW_EVENTS)
)
#: The start of what a mock-long stream says (it goes on for a minute).
LONG_TEXT = "".join(REPLY_TOKENS[i] if i < len(REPLY_TOKENS) else f"tok{i} " for i in range(2000))
#: What a normal (non-slow) mock stream says.
REPLY_TEXT = "".join(REPLY_TOKENS)


def _browser_unavailable() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (run .ci/install-browser.sh)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser_required() -> None:
    reason = _browser_unavailable()
    if reason is None:
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
async def browser(browser_required: None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            await b.close()


# --- the second origin -----------------------------------------------------------------

CROSS_ORIGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>byok-relay cross-origin test</title>
<link rel="icon" href="data:,"></head>
<body><pre id="log"></pre>
<script type="module">
import { RelayClient, RelayError, parseSSE, extractText } from '__RELAY__/client.js'

// Headers the official OpenAI / Anthropic JS SDKs add in a browser.
const STAINLESS = {
  'x-stainless-os': 'Linux',
  'x-stainless-lang': 'js',
  'x-stainless-package-version': '4.77.0',
  'x-stainless-arch': 'x64',
  'x-stainless-runtime': 'browser:chrome',
  'x-stainless-runtime-version': '131.0.0',
  'x-stainless-retry-count': '0',
  'x-stainless-timeout': '600'
}
const ANTHROPIC = {
  ...STAINLESS,
  'anthropic-version': '2023-06-01',
  'anthropic-dangerous-direct-browser-access': 'true'
}
const MESSAGES = [{ role: 'user', content: 'Say hello' }]

async function timed (iterable) {
  const t0 = performance.now()
  const times = []
  let text = ''
  let events = 0
  for await (const ev of iterable) {
    events++
    const t = extractText(ev.json)
    if (t) { times.push(performance.now() - t0); text += t }
  }
  return { text, times, events }
}

function describe (e) {
  return { error: String(e && e.message || e), name: e && e.name, status: e && e.status }
}

window.scenario = async (relayUrl) => {
  const out = { origin: location.origin }
  try {
    const relay = new RelayClient({ baseUrl: relayUrl, appId: 'browser-test' })
    out.hadToken = relay.token !== null
    const token = await relay.ensureToken()
    out.token = token
    out.storedToken = localStorage.getItem('byok-relay-token')
    out.sameTokenAgain = (await relay.ensureToken()) === token
    out.storeOpenai = await relay.storeKey('openai', 'sk-fake-openai-browser-0001')
    out.storeAnthropic = await relay.storeKey('anthropic', 'sk-ant-fake-browser-0002')
    out.keys = await relay.listKeys()
    // OpenAI wire format on the provider route, with the SDK's x-stainless-* headers.
    out.openai = await timed(relay.stream('openai/v1/chat/completions',
      { model: 'mock-slow', stream: true, messages: MESSAGES }, { headers: STAINLESS }))
    // Anthropic wire format, with anthropic-dangerous-direct-browser-access & co.
    out.anthropic = await timed(relay.stream('anthropic/v1/messages',
      { model: 'mock-slow', max_tokens: 64, stream: true, messages: MESSAGES },
      { headers: ANTHROPIC }))
    // The unified route.
    out.unified = await timed(relay.streamChat({ model: 'openai/mock-slow', messages: MESSAGES }))
    // Non-streamed request.
    out.chat = extractText(await relay.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES }))
    // Abort mid-stream (what the Stop button does).
    const ctrl = new AbortController()
    const partial = { n: 0, text: '' }
    try {
      for await (const ev of relay.stream('openai/v1/chat/completions',
        { model: 'mock-long', stream: true, messages: MESSAGES },
        { signal: ctrl.signal, headers: STAINLESS })) {
        const t = extractText(ev.json)
        if (t) { partial.n++; partial.text += t }
        // abort from outside the loop, while it awaits the next chunk (as a Stop button does)
        if (partial.n === 5) setTimeout(() => ctrl.abort(), 0)
      }
      partial.error = null
    } catch (e) {
      Object.assign(partial, describe(e))
    }
    out.aborted = partial
    // Errors come back as RelayError with the relay's JSON message.
    try {
      await relay.storeKey('no-such-provider', 'sk-fake-openai-browser-0003')
      out.badProvider = { error: null }
    } catch (e) {
      out.badProvider = { ...describe(e), isRelayError: e instanceof RelayError }
    }
    out.deleted = await relay.deleteKey('anthropic')
    out.keysAfter = await relay.listKeys()
  } catch (e) {
    out.failure = describe(e)
  }
  return out
}

// Spend control (SPEC §9). The owner, on this origin, mints a scoped token bound to another.
const OWNER = { appId: 'browser-scoped', storageKey: 'owner-token' }
async function attempt (fn) {
  try { return { ok: await fn() } } catch (e) {
    const retryAfter = e && e.headers && e.headers.get('retry-after')
    return { ...describe(e), code: e && e.body && e.body.code, retryAfter }
  }
}
window.mintScoped = async (relayUrl, origin) => {
  const owner = new RelayClient({ baseUrl: relayUrl, ...OWNER })
  await owner.ensureToken()
  await owner.storeKey('openai', 'sk-fake-openai-browser-0004')
  return owner.createScopedToken({
    label: 'tab', providers: ['openai'], origins: [origin], ttl_s: 900, budget: { requests: 2 }
  })
}
// Any page, with only the scoped token it was handed.
window.useScoped = async (relayUrl, token, what) => {
  const page = new RelayClient({ baseUrl: relayUrl, token })
  const chat = (model) => page.chat({ model, messages: MESSAGES, max_tokens: 16 })
  const out = {}
  for (const step of what) {
    if (step !== 'stream') out[step] = await attempt(() => chat(step).then(extractText))
    else {
      const body = { model: 'openai/mock-slow', messages: MESSAGES }
      out.stream = await attempt(() => timed(page.streamChat(body)))
    }
  }
  out.localStorageToken = localStorage.getItem('byok-relay-token')
  return out
}
window.ownerView = async (relayUrl, revokeId) => {
  const owner = new RelayClient({ baseUrl: relayUrl, ...OWNER })
  const out = { tokens: (await owner.listTokens()).tokens }
  out.budget = await owner.setBudget({ window: 'day', requests: 100 })
  out.budgetNow = await owner.getBudget()
  if (revokeId) {
    out.revoked = await owner.revokeToken(revokeId)
    out.tokensAfter = (await owner.listTokens()).tokens
  }
  out.ownerTokenKept = owner.token !== null
  return out
}

// parseSSE on a hand-made stream, split at every byte boundary.
window.parserCheck = async () => {
  const enc = new TextEncoder()
  const body = '\\uFEFFevent: a\\r\\ndata: {"x":1}\\r\\n\\r\\n' +
    ': keep-alive\\rdata: line1\\rdata:line2\\r\\r' +
    'id: 7\\ndata: h\\u00e9llo \\u2713\\n\\ndata: [DONE]\\n\\ndata: after\\n\\n'
  const bytes = enc.encode(body)
  const streamOf = (parts) => new ReadableStream({
    start (c) { for (const p of parts) if (p.length) c.enqueue(p); c.close() }
  })
  const collect = async (parts) => {
    const evs = []
    for await (const e of parseSSE(streamOf(parts))) evs.push([e.event, e.data, e.id])
    return JSON.stringify(evs)
  }
  const whole = await collect([bytes])
  let mismatches = 0
  for (let i = 0; i <= bytes.length; i++) {
    if (await collect([bytes.slice(0, i), bytes.slice(i)]) !== whole) mismatches++
  }
  const bytewise = await collect(Array.from(bytes, (b) => new Uint8Array([b])))
  return { whole: JSON.parse(whole), mismatches, bytewiseSame: bytewise === whole }
}

document.documentElement.dataset.ready = '1'
</script></body></html>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _page_origin(relay: Any) -> Iterator[str]:
    """Serve the cross-origin test page from a loopback origin of its own."""
    relay_url = str(relay.url).rstrip("/")
    page = CROSS_ORIGIN_PAGE.replace("__RELAY__", relay_url).encode()
    handler = type("Handler", (_PageHandler,), {"page": page})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        assert origin != f"{urlsplit(relay_url).scheme}://{urlsplit(relay_url).netloc}"
        yield origin
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def other_origin(relay: Any) -> Iterator[str]:
    with _page_origin(relay) as origin:
        yield origin


@pytest.fixture
def third_origin(relay: Any) -> Iterator[str]:
    with _page_origin(relay) as origin:
        yield origin


def _watch_console(page: Any) -> list[str]:
    errors: list[str] = []
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


def _assert_incremental(result: dict[str, Any], label: str) -> None:
    times = result["times"]
    assert result["text"] == SLOW_TEXT, f"{label}: final text differs from what the mock sent"
    distinct = sorted({round(t) for t in times})
    assert len(distinct) >= 8, f"{label}: text arrived in too few pieces: {distinct}"
    spread = times[-1] - times[0]
    assert spread >= 200, f"{label}: text arrived within {spread:.0f} ms: buffered, not streamed"


async def _wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


# --- tests -----------------------------------------------------------------------------


async def test_client_js_cross_origin_streaming(
    browser: Any, relay: Any, mocks: Any, other_origin: str
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    errors = _watch_console(page)
    await page.goto(other_origin + "/")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)

    streams_before = len(mocks.openai.streams)
    out = await page.evaluate("(url) => window.scenario(url)", str(relay.url).rstrip("/"))

    assert "failure" not in out, f"page scenario failed: {out.get('failure')} (console: {errors})"
    assert out["origin"] == other_origin
    # registered once, token kept in localStorage, reused
    assert out["hadToken"] is False
    assert out["token"] and out["storedToken"] == out["token"]
    assert out["sameTokenAgain"] is True
    assert out["storeOpenai"] == {"ok": True, "provider": "openai"}
    assert out["storeAnthropic"] == {"ok": True, "provider": "anthropic"}
    assert sorted(out["keys"]["providers"]) == ["anthropic", "openai"]
    hints = {k["provider"]: k["hint"] for k in out["keys"]["keys"]}
    assert hints == {"openai": "0001", "anthropic": "0002"}

    # the preflight allowed the SDK headers (else fetch would have failed), and the text
    # arrived piece by piece, as the mock sent it
    _assert_incremental(out["openai"], "openai route with x-stainless-* headers")
    _assert_incremental(out["anthropic"], "anthropic route with anthropic-dangerous-* headers")
    _assert_incremental(out["unified"], "unified /relay route")
    assert out["chat"] == REPLY_TEXT

    # the relay injected the user's key upstream and did not leak the relay token
    slow = [r for r in mocks.anthropic.requests if r.path == "/v1/messages"]
    assert slow, "the anthropic mock got no request"
    assert slow[-1].headers.get("x-api-key") == "sk-ant-fake-browser-0002"
    assert "x-relay-token" not in slow[-1].headers
    chats = [r for r in mocks.openai.requests if r.path.endswith("/chat/completions")]
    assert chats and chats[-1].headers.get("authorization") == "Bearer sk-fake-openai-browser-0001"
    assert all("x-relay-token" not in r.headers for r in chats)

    # Stop: aborting ends the iteration with an AbortError, early ...
    aborted = out["aborted"]
    assert aborted.get("name") == "AbortError", f"abort did not raise AbortError: {aborted}"
    assert 5 <= aborted["n"] < 20
    assert LONG_TEXT.startswith(aborted["text"])

    # ... and the relay cancels the upstream stream
    def upstream_cancelled() -> bool:
        streams = mocks.openai.streams[streams_before:]
        return any(s.switch == "mock-long" and s.disconnected for s in streams)

    assert await _wait_until(upstream_cancelled, 5.0), (
        "aborting in the browser did not cancel the upstream stream: "
        f"{mocks.openai.streams[streams_before:]}"
    )

    # errors are RelayError with the relay's JSON message
    bad = out["badProvider"]
    assert bad.get("isRelayError") is True and bad["status"] == 400, bad
    assert "provider" in bad["error"].lower()

    assert out["deleted"] == {"ok": True, "deleted": True}
    assert out["keysAfter"]["providers"] == ["openai"]
    assert not [e for e in errors if "pageerror" in e], errors
    await context.close()


async def _open(browser: Any, origin: str) -> tuple[Any, list[str]]:
    page = await (await browser.new_context()).new_page()
    errors = _watch_console(page)
    await page.goto(origin + "/")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    return page, errors


async def test_client_js_scoped_token_from_a_second_origin(
    browser: Any, relay: Any, mocks: Any, other_origin: str, third_origin: str
) -> None:
    """The owner's page mints an origin-bound scoped token; a page on that origin streams
    with it until its budget is spent; the owner's own origin may not use it; revoked, it
    stops working (SPEC §9)."""
    relay_url = str(relay.url).rstrip("/")
    owner_page, owner_errors = await _open(browser, other_origin)
    minted = await owner_page.evaluate(
        "([u, o]) => window.mintScoped(u, o)", [relay_url, third_origin]
    )
    assert minted["token"].startswith("byok_st_")
    assert minted["scope"]["origins"] == [third_origin]

    tab, tab_errors = await _open(browser, third_origin)
    steps = ["stream", "anthropic/claude-3-5-haiku-latest", "openai/gpt-4o-mini", "openai/gpt-4o"]
    used = await tab.evaluate(
        "([u, t, s]) => window.useScoped(u, t, s)", [relay_url, minted["token"], steps]
    )
    _assert_incremental(used["stream"]["ok"], "scoped token, unified route")
    other_provider = used["anthropic/claude-3-5-haiku-latest"]
    assert other_provider["status"] == 403 and "anthropic" in other_provider["error"]
    assert used["openai/gpt-4o-mini"] == {"ok": REPLY_TEXT}
    spent = used["openai/gpt-4o"]
    assert spent["status"] == 429 and spent["code"] == "budget_exceeded", spent
    assert spent["retryAfter"] is None  # a lifetime budget does not come back
    assert used["localStorageToken"] is None, "a handed-in token must not be persisted"
    upstream = [r for r in mocks.openai.requests if r.path.endswith("/chat/completions")]
    assert upstream[-1].headers.get("authorization") == "Bearer sk-fake-openai-browser-0004"

    # the owner's own origin is not the one the token is bound to
    elsewhere = await owner_page.evaluate(
        "([u, t]) => window.useScoped(u, t, ['openai/gpt-4o-mini'])", [relay_url, minted["token"]]
    )
    refused = elsewhere["openai/gpt-4o-mini"]
    assert refused["status"] == 403 and other_origin in refused["error"], refused

    view = await owner_page.evaluate(
        "([u, i]) => window.ownerView(u, i)", [relay_url, minted["id"]]
    )
    (listed,) = view["tokens"]
    assert listed["id"] == minted["id"] and listed["usage"]["requests"] == 2
    assert "token" not in listed
    assert view["budgetNow"]["budget"]["requests"] == 100
    assert view["budgetNow"]["usage"]["requests"] == 2
    assert view["revoked"] == {"ok": True, "deleted": True} and view["tokensAfter"] == []
    assert view["ownerTokenKept"] is True

    after = await tab.evaluate(
        "([u, t]) => window.useScoped(u, t, ['openai/gpt-4o-mini'])", [relay_url, minted["token"]]
    )
    assert after["openai/gpt-4o-mini"]["status"] == 401
    assert not [e for e in owner_errors + tab_errors if "pageerror" in e]


async def test_parse_sse_in_browser(browser: Any, other_origin: str) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(other_origin + "/")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    res = await page.evaluate("() => window.parserCheck()")
    assert res["whole"] == [
        ["a", '{"x":1}', None],
        ["message", "line1\nline2", None],
        ["message", "héllo ✓", "7"],
    ]
    assert res["mismatches"] == 0
    assert res["bytewiseSame"] is True
    await context.close()


async def test_demo_page(browser: Any, relay: Any, mocks: Any) -> None:
    base = str(relay.url).rstrip("/")
    context = await browser.new_context()
    page = await context.new_page()
    errors = _watch_console(page)

    resp = await page.goto(base + "/demo")
    assert resp is not None and resp.status == 200
    assert "text/html" in (resp.headers.get("content-type") or "")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    assert await page.title() == "byok-relay demo"
    assert errors == [], f"the demo page logged errors on load: {errors}"

    # register
    await page.click("#register")
    await page.wait_for_function(
        "() => document.getElementById('token-info').textContent.startsWith('Token ')"
    )
    token = await page.evaluate("() => localStorage.getItem('byok-relay-token')")
    assert token

    # paste a key
    await page.select_option("#key-provider", "openai")
    await page.fill("#key-value", "sk-fake-demo-key-9876")
    await page.click("#save-key")
    await page.wait_for_selector("#key-list li[data-provider='openai']")
    assert "9876" in await page.inner_text("#key-list li[data-provider='openai']")
    assert await page.input_value("#key-value") == ""

    # chat, streamed
    assert await page.input_value("#chat-provider") == "openai"
    await page.fill("#model", "mock-slow")
    await page.fill("#prompt", "Hello there")
    await page.click("#send")
    await page.wait_for_function(
        "() => document.documentElement.dataset.lastOutcome", timeout=15_000
    )
    assert await page.evaluate("() => document.documentElement.dataset.lastOutcome") == "done", (
        await page.inner_text("#chat-msg")
    )
    replies = await page.locator(".turn.assistant .body").all_inner_texts()
    assert replies == [SLOW_TEXT]
    last = mocks.openai.last_request
    assert last.json()["model"] == "mock-slow" and last.json()["stream"] is True

    # chat again (a reply that would last a minute) and press Stop mid-stream
    await page.evaluate("() => { delete document.documentElement.dataset.lastOutcome }")
    await page.fill("#model", "mock-long")
    await page.fill("#prompt", "And again")
    await page.click("#send")
    await page.wait_for_function(
        "() => { const b = document.querySelectorAll('.turn.assistant .body');"
        " return b.length === 2 && b[1].textContent.length > 10 }",
        timeout=15_000,
    )
    await page.click("#stop")
    await page.wait_for_function(
        "() => document.documentElement.dataset.lastOutcome", timeout=15_000
    )
    assert await page.evaluate("() => document.documentElement.dataset.lastOutcome") == "stopped"
    second = (await page.locator(".turn.assistant .body").all_inner_texts())[1]
    assert len(second) > 10 and LONG_TEXT.startswith(second)
    assert await _wait_until(lambda: any(s.disconnected for s in mocks.openai.streams), 5.0), (
        "Stop did not cancel the upstream stream"
    )
    # the conversation was sent as history
    sent = mocks.openai.last_request.json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]

    if os.environ.get("DEMO_SCREENSHOT"):  # e.g. DEMO_SCREENSHOT=/tmp/demo.png, to look at it
        await page.screenshot(path=os.environ["DEMO_SCREENSHOT"], full_page=True)

    # delete the key
    await page.click("#key-list li[data-provider='openai'] button")
    await page.wait_for_function(
        "() => !document.querySelector(\"#key-list li[data-provider='openai']\")"
    )
    assert "Deleted" in await page.inner_text("#keys-msg")

    unexpected = [e for e in errors if "pageerror" in e]
    assert unexpected == [], unexpected
    await context.close()


async def open_demo_registered(browser: Any, relay: Any) -> tuple[Any, list[str]]:
    """A new browser context on /demo, registered: the page and its console errors."""
    page = await (await browser.new_context()).new_page()
    errors = _watch_console(page)
    await page.goto(str(relay.url).rstrip("/") + "/demo")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    await page.click("#register")
    await page.wait_for_function(
        "() => document.getElementById('token-info').textContent.startsWith('Token ')"
    )
    return page, errors


async def send_prompt(page: Any, prompt: str) -> str:
    """Send one prompt from the demo's chat form; "done", "stopped" or "error"."""
    await page.evaluate("() => { delete document.documentElement.dataset.lastOutcome }")
    await page.fill("#prompt", prompt)
    await page.click("#send")
    await page.wait_for_function(
        "() => document.documentElement.dataset.lastOutcome", timeout=15_000
    )
    return str(await page.evaluate("() => document.documentElement.dataset.lastOutcome"))


async def test_demo_page_scoped_token(browser: Any, relay: Any, mocks: Any) -> None:
    """The demo mints a scoped token, chats with it and shows its remaining budget."""
    page, errors = await open_demo_registered(browser, relay)
    await page.fill("#key-value", "sk-fake-demo-scoped-5555")
    await page.click("#save-key")
    await page.wait_for_selector("#key-list li[data-provider='openai']")

    await page.fill("#scoped-requests", "2")
    await page.click("#mint")
    await page.wait_for_selector("#scoped-list li[data-token-id]")
    assert "Minted byok_st_" in await page.inner_text("#scoped-msg")
    assert await page.is_checked("#use-scoped")
    assert "2 of 2 requests left" in await page.inner_text("#scoped-list")

    async def send(prompt: str) -> str:
        return await send_prompt(page, prompt)

    assert await send("one") == "done"
    assert await send("two") == "done"
    assert await send("three") == "error"
    assert "This scoped token's budget is used up" in await page.inner_text("#chat-msg")
    # the list refreshes after each answer: the budget is spent
    await page.wait_for_function(
        "() => document.getElementById('scoped-list').textContent.includes('0 of 2 requests left')",
        timeout=10_000,
    )
    assert mocks.openai.last_request.headers.get("authorization") == (
        "Bearer sk-fake-demo-scoped-5555"
    )

    await page.click("#scoped-list li[data-token-id] button")
    await page.wait_for_function("() => !document.querySelector('#scoped-list li[data-token-id]')")
    assert "Revoked" in await page.inner_text("#scoped-msg")
    assert not await page.is_checked("#use-scoped")
    assert await send("four") == "done"  # back on the relay token
    assert not [e for e in errors if "pageerror" in e], errors
    await page.context.close()


@pytest.mark.parametrize(
    ("provider", "model", "mock_name"),
    [
        ("anthropic", "claude-3-5-haiku-latest", "anthropic"),
        ("google", "gemini-2.0-flash", "gemini"),
    ],
)
async def test_demo_page_other_formats(
    browser: Any, relay: Any, mocks: Any, provider: str, model: str, mock_name: str
) -> None:
    """The demo streams Anthropic (content_block_delta) and Gemini (candidates) answers."""
    base = str(relay.url).rstrip("/")
    context = await browser.new_context()
    page = await context.new_page()
    errors = _watch_console(page)
    await page.goto(base + "/demo")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    await page.click("#register")
    await page.wait_for_function(
        "() => document.getElementById('token-info').textContent.startsWith('Token ')"
    )
    await page.select_option("#key-provider", provider)
    await page.fill("#key-value", f"fake-{provider}-key-4321")
    await page.click("#save-key")
    await page.wait_for_selector(f"#key-list li[data-provider='{provider}']")
    assert await page.input_value("#chat-provider") == provider
    assert await page.input_value("#model") == model
    await page.fill("#prompt", "Hello there")
    await page.click("#send")
    await page.wait_for_function(
        "() => document.documentElement.dataset.lastOutcome", timeout=15_000
    )
    outcome = await page.evaluate("() => document.documentElement.dataset.lastOutcome")
    assert outcome == "done", await page.inner_text("#chat-msg")
    assert await page.locator(".turn.assistant .body").all_inner_texts() == [REPLY_TEXT]
    upstream = mocks.by_flavor(mock_name).last_request
    if provider == "google":
        assert upstream.path.endswith(f"/models/{model}:streamGenerateContent")
        assert upstream.query.get("alt") == "sse"
        assert upstream.json()["contents"] == [{"role": "user", "parts": [{"text": "Hello there"}]}]
    else:
        assert upstream.path == "/v1/messages"
        assert upstream.json()["model"] == model
    assert not [e for e in errors if "pageerror" in e], errors
    await context.close()
