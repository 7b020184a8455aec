"""`GET /docs` (Swagger UI shipped inside the package), its files, `GET /openapi.json`'s
examples, and the landing page `GET /`, against a real relay.

* Over HTTP: content types, cache headers, the CSPs, gzip/ETag, an allow-list that no
  path trick gets around, `/` as HTML while other unknown paths stay JSON 404, every
  documented example valid against its own schema, and the examples of routes that
  return plain dicts still shaped like what the relay answers.
* In headless Chromium (Debian's, as tests/test_browser.py: skipped when absent unless
  REQUIRE_BROWSER=1): `/docs` renders every operation of /openapi.json with its fields
  and example values, "Try it out" reaches the relay, and `/` links work, while every
  request is recorded and anything not for 127.0.0.1 is refused and fails the test.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import socket
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from providers.relay import Register, Relay, StartRelay, error_of, http_client
from test_browser import CHROMIUM, LAUNCH_ARGS
from test_browser import browser as browser
from test_browser import browser_required as browser_required

import byok_relay

HTTP = http_client()
STATIC = files("byok_relay") / "static"
VENDOR = STATIC / "vendor" / "swagger-ui"
ROOT = Path(__file__).resolve().parents[1]

#: What the landing page links to (relative links, resolved against the relay's URL).
LANDING_LINKS = {"/demo", "/docs", "/openapi.json", "/health", "/skill", "/llms.txt", "/client.js"}

EXPECTED_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".md": "text/markdown",
    "": "text/plain",
}


def _ctype(r: Any) -> str:
    return str(r.headers.get("content-type", "")).split(";")[0].strip()


def _vendor_files() -> dict[str, bytes]:
    found = {f.name: f.read_bytes() for f in VENDOR.iterdir() if f.is_file()}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "README.md"} <= set(found)
    return found


def _csp(header: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


# --- the landing page and unknown paths ------------------------------------------------------


def test_landing_page_is_html_with_the_links(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/")
    assert r.status_code == 200, r.text[:300]
    assert _ctype(r) == "text/html"
    assert r.headers["content-type"].lower().endswith("charset=utf-8")
    text = r.text
    assert "<title>byok-relay</title>" in text
    assert f'<span id="version">{byok_relay.__version__}</span>' in text
    assert "{{version}}" not in text
    hrefs = set(re.findall(r'<a href="([^"]+)"', text))
    assert {"/" + h for h in hrefs} == LANDING_LINKS, hrefs
    # Nothing from another host; no script at all.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "absolute URL in /"
    assert "<script" not in text.lower()
    csp = _csp(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert "script-src" not in csp  # falls back to 'none'
    assert len(csp["style-src"]) == 1 and csp["style-src"][0].startswith("'sha256-")
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/nope", "/index.html", "/docs/", "/docs/assets", "/docs/assets/", "/static/docs.html"],
)
def test_other_unknown_paths_stay_json_404(relay: Relay, path: str) -> None:
    error_of(HTTP.get(f"{relay.url}{path}"), 404)


def test_landing_page_is_get_only(relay: Relay) -> None:
    r = HTTP.post(f"{relay.url}/")
    error_of(r, 405)
    assert "GET" in r.headers["allow"]


# --- /docs and its files ---------------------------------------------------------------------


def test_docs_page_loads_only_its_own_files(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/docs")
    assert r.status_code == 200
    assert _ctype(r) == "text/html"
    text = r.text
    scripts = re.findall(r'<script src="([^"]+)"', text)
    styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', text)
    assert scripts == ["docs/assets/swagger-ui-bundle.js", "docs/assets/docs.js"]
    assert styles == ["docs/assets/swagger-ui.css"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "absolute URL in /docs"
    assert "<script>" not in text  # no inline script: the CSP would refuse it
    csp = _csp(r.headers["content-security-policy"])
    for directive in ("script-src", "style-src", "connect-src"):
        assert csp[directive] == ["'self'"], (directive, csp)
    assert csp["default-src"] == ["'none'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["frame-ancestors"] == ["'none'"]
    header = r.headers["content-security-policy"]
    assert "unsafe-eval" not in header and "unsafe-inline" not in header
    start = HTTP.get(f"{relay.url}/docs/assets/docs.js").text
    assert "validatorUrl: null" in start  # no badge image from validator.swagger.io
    assert "queryConfigEnabled: false" in start  # ?url= cannot load another document


@pytest.mark.parametrize("name", sorted([*_vendor_files(), "docs.js"]))
def test_docs_assets_are_served_with_their_content_type(relay: Relay, name: str) -> None:
    expected = _vendor_files().get(name) or (STATIC / name).read_bytes()
    r = HTTP.get(f"{relay.url}/docs/assets/{name}")
    assert r.status_code == 200, r.text[:300]
    suffix = "." + name.rsplit(".", 1)[1] if "." in name else ""
    assert _ctype(r) == EXPECTED_TYPES[suffix], (name, r.headers["content-type"])
    assert r.content == expected  # httpx undoes the gzip
    assert r.headers["cache-control"] == "public, max-age=86400"
    assert re.fullmatch(r'"[0-9a-f]{20}(-gz)?"', r.headers["etag"])
    assert r.headers["x-content-type-options"] == "nosniff"


def test_docs_assets_gzip_and_revalidation(relay: Relay) -> None:
    url = f"{relay.url}/docs/assets/swagger-ui-bundle.js"
    raw = _vendor_files()["swagger-ui-bundle.js"]
    plain = HTTP.get(url, headers={"accept-encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(raw)
    zipped = HTTP.get(url, headers={"accept-encoding": "gzip, deflate"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(raw) // 2
    assert zipped.content == raw
    assert "Accept-Encoding" in zipped.headers["vary"]
    refused = HTTP.get(url, headers={"accept-encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers
    # The ETag names the representation: the gzip one differs from the plain one.
    assert plain.headers["etag"] != zipped.headers["etag"]
    for sent in (plain, zipped):
        enc = sent.headers.get("content-encoding", "identity")
        again = HTTP.get(url, headers={"if-none-match": sent.headers["etag"],
                                       "accept-encoding": enc})  # fmt: skip
        assert again.status_code == 304, enc
        assert again.content == b""
        assert again.headers["etag"] == sent.headers["etag"]
    stale = HTTP.get(url, headers={"if-none-match": '"0000"', "accept-encoding": "identity"})
    assert stale.status_code == 200 and stale.content == raw


def _raw_get(relay: Relay, target: str) -> tuple[int, bytes]:
    """Send the request target exactly as written (HTTP clients normalise `..`)."""
    host, port = urlsplit(str(relay.url)).hostname, urlsplit(str(relay.url)).port
    assert host == "127.0.0.1" and port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/docs/assets/../../app.py",
        "/docs/assets/../docs.html",
        "/docs/assets/..%2F..%2Fapp.py",
        "/docs/assets/..%2f..%2f..%2fpyproject.toml",
        "/docs/assets/%2e%2e%2fdocs.html",
        "/docs/assets/%2E%2E%2F%2E%2E%2Fapi%2Fassets.py",
        "/docs/assets/..%5C..%5Capp.py",
        "/docs/assets/..",
        "/docs/assets/.",
        "/docs/assets/docs.html",
        "/docs/assets/index.html",
        "/docs/assets/client.js",
        "/docs/assets/swagger-ui.css%00.js",
        "/docs/assets/swagger-ui.css.map",
        "/docs/assets/SWAGGER-UI.CSS",
        "/docs/assets/%2Fetc%2Fpasswd",
        "/docs/assets//etc/passwd",
        "/docs/assets/vendor/swagger-ui/LICENSE",
    ],
)
def test_docs_assets_refuse_everything_off_the_list(relay: Relay, target: str) -> None:
    status, body = _raw_get(relay, target)
    assert status in (400, 404), (target, status, body[:200])
    text = body.decode("utf-8", "replace")
    assert '"error"' in text, text[:200]  # the relay's JSON refusal, not a file
    for leak in ("build_app", "[project]", "root:", "<!doctype", "asset_files", "RelayClient"):
        assert leak not in text, (target, leak)


def test_vendor_folder_is_package_data_and_documented() -> None:
    """The wheel must carry the viewer (pyproject's package-data), its README must name
    the version the bundle really is, and the license must ship with it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["byok_relay"]
    pkg = ROOT / "src" / "byok_relay"
    for path in [*(pkg / "static" / "vendor").rglob("*"), pkg / "static" / "docs.js"]:
        if path.is_file():
            rel = path.relative_to(pkg).as_posix()
            assert any(fnmatch.fnmatchcase(rel, g) and rel.count("/") == g.count("/")
                       for g in globs), f"{rel} is not in package-data {globs}"  # fmt: skip
    bundle = _vendor_files()["swagger-ui-bundle.js"].decode()
    version = re.search(r'PACKAGE_VERSION:"([0-9.]+)"', bundle)
    assert version, "the bundle no longer says its version"
    readme = _vendor_files()["README.md"].decode()
    assert f"**{version[1]}**" in readme
    assert f"swagger-ui-dist-{version[1]}.tgz" in readme
    assert "Apache License" in _vendor_files()["LICENSE"].decode()


# --- /openapi.json: every route with fields and examples ------------------------------------


@pytest.fixture(scope="module")
def openapi(relay: Relay) -> dict[str, Any]:
    r = HTTP.get(f"{relay.url}/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def _resolve(node: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return _resolve(schemas[ref.removeprefix("#/components/schemas/")], schemas)
        return {k: _resolve(v, schemas) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, schemas) for v in node]
    return node


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def _media(op: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, media type, media object) of the request body and every answer."""
    found = [("body", t, m) for t, m in op.get("requestBody", {}).get("content", {}).items()]
    for status, answer in op["responses"].items():
        found += [(status, t, m) for t, m in answer.get("content", {}).items()]
    return found


def _examples_of(media: dict[str, Any]) -> list[Any]:
    out = [media["example"]] if "example" in media else []
    return out + [e["value"] for e in media.get("examples", {}).values()]


def _generated_example_is_complete(schema: dict[str, Any]) -> bool:
    """Every leaf of the schema has its own example, so a viewer can build a whole
    example body from them (through objects, arrays and nullable unions)."""
    if "examples" in schema or "example" in schema:
        return True
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return bool(options) and all(_generated_example_is_complete(s) for s in options)
    if schema.get("type") == "array":
        return _generated_example_is_complete(schema.get("items", {}))
    props = schema.get("properties")
    if props:
        return all(_generated_example_is_complete(p) for p in props.values())
    return False


def test_every_operation_has_examples(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    missing = []
    for method, path, op in _operations(openapi):
        assert op.get("operationId"), (method, path)
        assert op.get("summary"), (method, path)
        for param in op.get("parameters", []):
            if "example" not in param:
                missing.append(f"{method} {path} parameter {param['name']}")
        for where, mtype, media in _media(op):
            if mtype == "*/*" or mtype == "text/html":
                continue
            schema = _resolve(media.get("schema", {}), schemas)
            if not _examples_of(media) and not _generated_example_is_complete(schema):
                missing.append(f"{method} {path} {where} {mtype}")
    assert not missing, "no example: " + "; ".join(missing)
    ids = [op["operationId"] for _, _, op in _operations(openapi)]
    assert len(ids) == len(set(ids))


def test_examples_match_their_schemas(openapi: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # comes with openapi-spec-validator
    schemas = openapi["components"]["schemas"]
    pairs: list[tuple[str, dict[str, Any], Any]] = []
    for method, path, op in _operations(openapi):
        for where, mtype, media in _media(op):
            schema = _resolve(media.get("schema", {}), schemas)
            pairs += [(f"{method} {path} {where} {mtype}", schema, e) for e in _examples_of(media)]
        for param in op.get("parameters", []):
            if "example" in param:
                where = f"{method} {path} {param['name']}"
                pairs.append((where, param["schema"], param["example"]))
    # and every field-level example in the component schemas
    for name, schema in schemas.items():
        for prop, sub in schema.get("properties", {}).items():
            resolved = _resolve(sub, schemas)
            pairs += [(f"{name}.{prop}", resolved, e) for e in sub.get("examples", [])]
    assert len(pairs) > 60, len(pairs)
    wrong = [
        f"{where}: {err.message}"
        for where, schema, example in pairs
        for err in jsonschema.Draft202012Validator(schema).iter_errors(example)
    ]
    assert not wrong, wrong


def test_request_body_examples_are_accepted_by_the_relay(
    relay: Relay, register: Register, openapi: dict[str, Any]
) -> None:
    """The example a reader copies from /docs works: each management body example,
    sent to the relay, is not refused as invalid (400)."""
    user = register(app_id="docs-examples")
    user.store_key("openai")  # rotate and verify need a stored key
    schemas = openapi["components"]["schemas"]
    tried = []
    with user.client() as c:
        for method, path, op in _operations(openapi):
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None or path.startswith("/relay") or path == "/users":
                continue
            body = _examples_of(content) or [_example_from(_resolve(content["schema"], schemas))]
            concrete = re.sub(r"\{provider\}", "openai", path)
            if "{" in concrete:
                continue
            r = c.request(method, concrete, json=body[0])
            assert r.status_code != 400, (method, path, body[0], r.text)
            assert r.status_code < 500, (method, path, r.text)
            tried.append((method, path))
    assert {("POST", "/keys/{provider}"), ("POST", "/tokens"), ("PUT", "/budget")} <= set(tried)
    r = HTTP.post(f"{relay.url}/users", json=_example_from(_resolve(
        openapi["paths"]["/users"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        schemas)))  # fmt: skip
    assert r.status_code == 200, r.text


def _example_from(schema: dict[str, Any]) -> Any:
    """What a viewer shows as the example body: each property's first example."""
    if "examples" in schema:
        return copy.deepcopy(schema["examples"][0])
    if schema.get("anyOf"):
        return _example_from(schema["anyOf"][0])
    if schema.get("type") == "array":
        return [_example_from(schema.get("items", {}))]
    return {k: _example_from(v) for k, v in schema.get("properties", {}).items()}


def test_plain_dict_answers_look_like_their_examples(
    relay: Relay, register: Register, openapi: dict[str, Any]
) -> None:
    """Routes without a response model are documented by an example: its top-level
    fields must be the ones the relay really answers."""
    user = register(app_id="docs-shapes")
    with user.client() as c:
        assert c.put("/budget", json={"window": "day", "requests": 10}).status_code == 200
        answers = {
            ("GET", "/stats"): c.get("/stats"),
            ("GET", "/budget"): c.get("/budget"),
            ("GET", "/models"): c.get("/models"),
        }
        minted = c.post("/tokens", json={"ttl_s": 60})
        answers[("POST", "/tokens/revoke")] = c.post("/tokens/revoke")
    with register(app_id="docs-shapes-erased").client() as c:
        answers[("DELETE", "/users")] = c.delete("/users")
    assert minted.status_code == 201
    assert "201" in openapi["paths"]["/tokens"]["post"]["responses"]
    for (method, path), r in answers.items():
        assert r.status_code == 200, (path, r.text)
        example = openapi["paths"][path][method.lower()]["responses"]["200"]["content"][
            "application/json"
        ]["example"]
        assert set(example) == set(r.json()), (method, path)
    usage = answers[("GET", "/budget")].json()["usage"]
    example = openapi["paths"]["/budget"]["get"]["responses"]["200"]["content"]["application/json"][
        "example"
    ]
    assert set(example["usage"]) == set(usage)


# --- in Chromium -----------------------------------------------------------------------------

# Chromium as tests/test_browser.py launches it (the same fixtures).


class Watched:
    """A page whose every request is recorded; any not for 127.0.0.1 is aborted (and
    fails the test), as are console errors and CSP violations."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[str] = []
        self.refused: list[str] = []
        self.errors: list[str] = []
        self.page: Any = None

    async def open(self, browser: Any) -> Any:
        context = await browser.new_context()
        context.on("request", lambda req: self.requests.append(req.url))

        async def only_loopback(route: Any) -> None:
            if urlsplit(route.request.url).hostname == self.host:
                await route.continue_()
            else:
                self.refused.append(route.request.url)
                await route.abort("blockedbyclient")

        await context.route("**/*", only_loopback)
        await context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
        )
        page = await context.new_page()
        page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error"
            else None,
        )  # fmt: skip
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page = page
        return page

    def assert_clean(self) -> None:
        assert self.requests, "no request recorded"
        hosts = {urlsplit(u).hostname for u in self.requests}
        assert hosts == {self.host}, f"requests left {self.host}: {sorted(hosts)}"
        assert not self.refused, f"requests to other hosts: {self.refused}"
        assert not self.errors, f"the page logged errors: {self.errors}"


def _flat(text: str) -> str:
    """Rendered text with Swagger UI's word-break characters removed, spaces squeezed."""
    return re.sub(r"\s+", " ", text.replace("\u200b", "").replace("\xad", ""))


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_docs_page_renders_every_operation_offline(
    browser: Any, relay: Relay, openapi: dict[str, Any]
) -> None:
    watched = Watched()
    page = await watched.open(browser)
    base = str(relay.url).rstrip("/")
    resp = await page.goto(base + "/docs")
    assert resp is not None and resp.status == 200
    documented = {(m, p) for m, p, _ in _operations(openapi)}
    await page.wait_for_function(
        "n => document.querySelectorAll('.opblock').length >= n", arg=len(documented)
    )
    assert await page.title() == "byok-relay API"
    shown = await page.eval_on_selector_all(
        ".opblock",
        """els => els.map(el => [
            el.querySelector('.opblock-summary-method').textContent,
            el.querySelector('.opblock-summary-path').textContent])""",
    )
    rendered = {(m.strip().upper(), _flat(p).strip()) for m, p in shown}
    assert rendered == documented, (documented - rendered, rendered - documented)

    text = _flat(await page.inner_text("body"))
    for words in (
        "POST /users",
        "POST /keys/{provider}",
        "DELETE /keys/{provider}",
        "POST /relay/{provider}/{path}",
        "GET /health",
        "PUT /budget",
        "Register a user and get a relay token",
    ):
        assert words in text, words
    # Fields of request bodies, their descriptions and example values, and answers.
    for words in (
        '"app_id": "my-app"',
        "Your application's id",
        '"key": "sk-proj-your-own-openai-key"',
        "Upstream base URL, only for providers that take one.",
        "openai-compatible: your own upstream",  # the second example, offered
        '"origins": [ "https://app.example" ]',
        '"window": "day"',
        '"model": "openai/gpt-4o-mini"',
        '"token": "byok_rt_EXAMPLE-not-a-real-token-000000000000"',
        '"error": "Missing relay token',
        '"top_models"',
    ):
        assert words in text, words
    # The schema section lists the models with their fields.
    assert "ScopedTokenRequest" in text and "StoreKeyRequest" in text

    # "Try it out" on GET /health reaches the relay (connect-src 'self').
    health = page.locator(".opblock-get", has=page.locator('[data-path="/health"]'))
    await health.get_by_role("button", name="Try it out").click()
    await health.get_by_role("button", name="Execute").click()
    answer = health.locator(".live-responses-table tr.response .response-col_status").first
    await answer.wait_for()
    assert (await answer.inner_text()).strip() == "200"
    assert '"ok": true' in _flat(await health.locator(".live-responses-table").inner_text())

    own = {urlsplit(u).path for u in watched.requests}
    assert {"/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
            "/docs/assets/docs.js", "/openapi.json", "/health"} <= own, own  # fmt: skip
    watched.assert_clean()
    if os.environ.get("DOCS_SCREENSHOT"):  # e.g. DOCS_SCREENSHOT=docs.png, to look at it
        await page.screenshot(path=os.environ["DOCS_SCREENSHOT"], full_page=False)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_landing_page_links_work(browser: Any, relay: Relay) -> None:
    watched = Watched()
    page = await watched.open(browser)
    base = str(relay.url).rstrip("/")
    resp = await page.goto(base + "/")
    assert resp is not None and resp.status == 200
    assert await page.title() == "byok-relay"
    text = _flat(await page.inner_text("body"))
    assert f"Version {byok_relay.__version__}" in text
    # The inline <style> applied: its CSP hash is right (a wrong one would be refused).
    width = await page.evaluate("getComputedStyle(document.body).maxWidth")
    assert width == "672px", width
    links = await page.eval_on_selector_all("a", "els => els.map(a => a.href)")
    assert {urlsplit(h).path for h in links} == LANDING_LINKS
    assert {urlsplit(h).netloc for h in links} == {urlsplit(base).netloc}
    for href in links:
        r = await page.request.get(href)
        assert r.status == 200, (href, r.status)
    # Following a link as a user does: the docs link opens the rendered docs.
    await page.get_by_role("link", name="API docs").click()
    await page.wait_for_selector(".opblock")
    assert urlsplit(page.url).path == "/docs"
    watched.assert_clean()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_docs_page_under_a_public_name_asks_no_validator(
    browser_required: None, relay: Relay
) -> None:
    """Swagger UI shows its validator badge (an image from validator.swagger.io that
    carries the document's URL) only when the document is not on localhost: reach the
    relay under a public-looking name (mapped to 127.0.0.1 inside Chromium only) and
    check that the page still asks nothing of any other host."""
    from playwright.async_api import async_playwright

    name = "relay.docs-test.example"
    port = urlsplit(str(relay.url)).port
    args = [*LAUNCH_ARGS, f"--host-resolver-rules=MAP {name} 127.0.0.1"]
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=args, timeout=60_000)
        try:
            watched = Watched(host=name)
            page = await watched.open(b)
            resp = await page.goto(f"http://{name}:{port}/docs")
            assert resp is not None and resp.status == 200
            await page.wait_for_selector(".opblock")
            assert await page.locator(".opblock").count() > 20
            assert await page.locator("text=/openapi.json").count() >= 1
            watched.assert_clean()
        finally:
            await b.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_docs_page_refuses_an_outside_document(browser: Any, relay: Relay) -> None:
    """?url= cannot point the page at another host's document (queryConfigEnabled off):
    it still shows this relay's API, and asks no other host for anything."""
    watched = Watched()
    page = await watched.open(browser)
    base = str(relay.url).rstrip("/")
    await page.goto(base + "/docs?url=https://attacker.example/evil.json&configUrl=//x.example/c")
    await page.wait_for_selector(".opblock")
    assert "Register a user and get a relay token" in await page.inner_text("body")
    watched.assert_clean()


def test_every_instance_answers_the_same_etags(relay: Relay, start_relay: StartRelay) -> None:
    """Behind a load balancer, a copy revalidated against another instance stays valid:
    same bytes, same ETag (the gzip carries no timestamp)."""
    other = start_relay()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js"):
        for enc in ("gzip", "identity"):
            headers = {"accept-encoding": enc}
            a = HTTP.get(f"{relay.url}/docs/assets/{name}", headers=headers)
            b = HTTP.get(f"{other.url}/docs/assets/{name}", headers=headers)
            assert a.headers["etag"] == b.headers["etag"], (name, enc)
            assert a.content == b.content
