"""The browser client as an npm package (``clients/js/``, SPEC §12).

One source: ``src/byok_relay/static/client.js`` is the file the relay serves at
``GET /client.js`` (inside the Python package, so every wheel carries it);
``clients/js/client.js`` is a committed copy that ``npm run sync`` and ``prepack`` refresh.
Checked here: the copy is byte-identical to the served file, a wheel contains it, a real
``npm pack`` ships it (even from a stale copy, through prepack) and installs by name, the
versions of the two packages agree, the hand-written TypeScript declarations type-check a
usage file (and reject misuse), Node's own test runner passes ``clients/js/test/`` against a
real relay in front of the mock providers, and Chromium imports the package file as an ES
module.

Needs ``node``/``npm`` and ``npm ci`` in ``clients/js`` (for TypeScript; ``.ci/run`` does
it): without them these tests skip, or fail under ``CI=true`` / ``REQUIRE_SERVICES=1``
(tests/backends.py). The Chromium test follows ``test_browser.py`` (``REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import test_browser
from backends import service_missing
from providers.mock import REPLY_TEXT, MockProviders
from providers.relay import Relay, User, http_client, register_user
from test_browser import _watch_console

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "clients" / "js"
SERVED = ROOT / "src" / "byok_relay" / "static" / "client.js"
TSC = PKG / "node_modules" / "typescript" / "bin" / "tsc"

OPENAI_KEY = "sk-test-js-openai-STORED-4711"
ANTHROPIC_KEY = "sk-ant-test-js-STORED-4712"

browser_required = test_browser.browser_required
browser = test_browser.browser


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_missing(f"{name} is not installed (Node.js 18+ and npm)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def node() -> str:
    return _tool("node")


@pytest.fixture(scope="module")
def npm() -> str:
    return _tool("npm")


@pytest.fixture(scope="module")
def tsc(node: str) -> list[str]:
    if not TSC.exists():
        service_missing("clients/js/node_modules has no TypeScript: run `npm ci` in clients/js")
    return [node, str(TSC)]


def _run(
    cmd: list[str], cwd: Path, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_COLOR": "1", **env}
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _package_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PKG / "package.json").read_text())
    return data


def _repo_copy(dest: Path, client_js: bytes | None = None) -> Path:
    """The package and the served file in a scratch tree laid out like the repository."""
    pkg = dest / "clients" / "js"
    pkg.mkdir(parents=True)
    for name in ("package.json", "client.d.ts", "README.md"):
        shutil.copy2(PKG / name, pkg / name)
    shutil.copytree(PKG / "scripts", pkg / "scripts")
    shutil.copytree(PKG / "test" / "types", pkg / "test" / "types")
    (pkg / "client.js").write_bytes(client_js if client_js is not None else SERVED.read_bytes())
    static = dest / "src" / "byok_relay" / "static"
    static.mkdir(parents=True)
    shutil.copy2(SERVED, static / "client.js")
    return pkg


# --- one source of truth ------------------------------------------------------------------


def test_the_package_file_is_the_served_file(relay: Relay) -> None:
    served = http_client().get(f"{relay.url}/client.js")
    assert served.status_code == 200
    assert "javascript" in served.headers["content-type"]
    assert served.content == SERVED.read_bytes()
    assert (PKG / "client.js").read_bytes() == SERVED.read_bytes(), (
        "clients/js/client.js differs from src/byok_relay/static/client.js: "
        "run `npm run sync` in clients/js"
    )


def test_sync_script_checks_and_copies(node: str, tmp_path: Path) -> None:
    pkg = _repo_copy(tmp_path, client_js=b"// stale copy\n")
    check = _run([node, "scripts/sync-client.mjs", "--check"], pkg)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "npm run sync" in check.stderr
    assert (pkg / "client.js").read_bytes() == b"// stale copy\n"  # --check changes nothing
    sync = _run([node, "scripts/sync-client.mjs"], pkg)
    assert sync.returncode == 0, sync.stderr
    assert (pkg / "client.js").read_bytes() == SERVED.read_bytes()
    assert _run([node, "scripts/sync-client.mjs", "--check"], pkg).returncode == 0


def _python_version() -> str:
    """The Python package's version: pyproject.toml's, or (dynamic) byok_relay.__version__."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    if "version" in project:
        return str(project["version"])
    assert "version" in project.get("dynamic", []), "pyproject.toml sets no version"
    init = (ROOT / "src" / "byok_relay" / "__init__.py").read_text()
    match = re.search(r"^__version__ = \"([^\"]+)\"$", init, re.M)
    assert match, "src/byok_relay/__init__.py sets no __version__"
    return match.group(1)


def test_versions_agree() -> None:
    version = _python_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert _package_json()["version"] == version, (
        "clients/js/package.json's version differs from the Python package's"
    )
    lock = json.loads((PKG / "package-lock.json").read_text())
    assert lock["version"] == lock["packages"][""]["version"] == version


def test_package_json() -> None:
    meta = _package_json()
    assert meta["name"] == "byok-relay-client"
    assert meta["type"] == "module"
    assert meta["license"] == "Apache-2.0"
    assert "dependencies" not in meta and "peerDependencies" not in meta, "no runtime deps"
    assert meta["types"] == "./client.d.ts"
    assert meta["exports"]["."] == {"types": "./client.d.ts", "default": "./client.js"}
    assert meta["scripts"]["prepack"] == "node scripts/sync-client.mjs"
    # every devDependency pinned exactly, and the lockfile agrees
    lock = json.loads((PKG / "package-lock.json").read_text())
    for name, spec in meta["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"{name} is not pinned: {spec}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == spec


def test_wheel_contains_the_client(tmp_path: Path) -> None:
    """`pip install` (a wheel) carries the file the npm package ships."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "src" / "byok_relay",
        src / "byok_relay",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path / "wheel"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(tmp_path)],
        tmp_path,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = out.glob("byok_relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("byok_relay/static/client.js") == (PKG / "client.js").read_bytes()


# --- npm pack -------------------------------------------------------------------------------


def test_npm_pack_dry_run_lists_only_the_package_files(npm: str) -> None:
    result = _run([npm, "pack", "--dry-run", "--json", "--ignore-scripts"], PKG)
    assert result.returncode == 0, result.stderr
    (info,) = json.loads(result.stdout)
    files = {f["path"] for f in info["files"]}
    expected = {"package.json", "client.js", "client.d.ts", "README.md"}
    if (PKG / "LICENSE").exists():  # a copy of the repository's, made by npm run sync
        expected.add("LICENSE")
        if (ROOT / "LICENSE").exists():
            assert (PKG / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert files == expected
    assert info["name"] == "byok-relay-client" and info["version"] == _package_json()["version"]


def test_npm_pack_ships_the_served_file_and_installs_by_name(
    node: str, npm: str, tmp_path: Path
) -> None:
    """A real `npm pack` from a stale copy: prepack refreshes it; the tarball installs and
    imports by the package name in a fresh project."""
    pkg = _repo_copy(tmp_path / "repo", client_js=b"// stale copy\n")
    license_text = (
        (ROOT / "LICENSE").read_bytes() if (ROOT / "LICENSE").exists() else b"Apache-2.0 stand-in\n"
    )
    (tmp_path / "repo" / "LICENSE").write_bytes(license_text)
    packed = _run([npm, "pack", "--json", "--pack-destination", str(tmp_path)], pkg)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/client.js")
        assert member is not None
        assert member.read() == SERVED.read_bytes()
        member = archive.extractfile("package/LICENSE")
        assert member is not None and member.read() == license_text
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    installed = _run(
        [npm, "install", "--no-audit", "--no-fund", "--offline", str(tarball)], app, timeout=120
    )
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import R, { RelayClient, RelayError, parseSSE, extractText } from 'byok-relay-client';"
        "const c = new RelayClient({ baseUrl: 'http://relay.invalid/', storage: null });"
        "console.log(JSON.stringify({ same: R === RelayClient, base: c.baseUrl,"
        " err: new RelayError(0, 'x').name, fns: [typeof parseSSE, typeof extractText] }))"
    )
    ran = _run([node, "--input-type=module", "-e", probe], app)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "same": True,
        "base": "http://relay.invalid",
        "err": "RelayError",
        "fns": ["function", "function"],
    }


# --- TypeScript -------------------------------------------------------------------------------


def test_declarations_type_check_a_typescript_app(tsc: list[str]) -> None:
    result = _run([*tsc, "-p", "test/types"], PKG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_declarations_that_lose_a_type_fail_the_check(tsc: list[str], tmp_path: Path) -> None:
    """The usage file's @ts-expect-error lines bite: loosen one declaration, tsc fails."""
    pkg = _repo_copy(tmp_path)
    dts = pkg / "client.d.ts"
    text = dts.read_text()
    assert "ensureToken(): Promise<string>" in text
    dts.write_text(text.replace("ensureToken(): Promise<string>", "ensureToken(): Promise<any>"))
    result = _run([*tsc, "-p", "test/types"], pkg)
    assert result.returncode != 0
    assert "Unused '@ts-expect-error' directive" in result.stdout


# --- Node's test runner against a real relay --------------------------------------------


@pytest.fixture
def js_user(relay: Relay) -> User:
    return register_user(relay, app_id="js-package-test")


def test_node_test_runner_against_the_relay(
    node: str, relay: Relay, js_user: User, mocks: MockProviders
) -> None:
    result = _run(
        [node, "--test", "--test-reporter=tap", "clients/js/test/client.test.js"],
        ROOT,
        RELAY_URL=relay.url,
        RELAY_TOKEN=js_user.token,
        TEST_OPENAI_KEY=OPENAI_KEY,
        TEST_ANTHROPIC_KEY=ANTHROPIC_KEY,
        MOCK_REPLY_TEXT=REPLY_TEXT,
    )
    out = result.stdout
    assert result.returncode == 0, out[-6000:] + result.stderr[-2000:]
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$", out, re.M))
    assert summary["fail"] == "0" and summary["cancelled"] == "0", summary
    assert summary["skipped"] == "0", f"tests skipped: {summary}"
    assert int(summary["pass"]) == int(summary["tests"]) >= 15, summary

    # the relay put the user's stored keys on the upstream requests ...
    chats = mocks.openai.requests_to("/v1/chat/completions")
    responses = mocks.openai.requests_to("/v1/responses")
    messages = mocks.anthropic.requests_to("/v1/messages")
    assert chats and responses and messages
    for request in chats + responses:
        assert request.headers.get("authorization") in (
            f"Bearer {OPENAI_KEY}",
            "Bearer sk-test-mock-401-js",  # the error test's own user
        )
    assert all(r.headers.get("x-api-key") == ANTHROPIC_KEY for r in messages)
    # ... and the relay token never reached a provider
    for mock in mocks.all():
        for request in mock.requests:
            assert js_user.token not in request.raw_query
            for name, value in request.headers.items():
                assert js_user.token not in value, f"relay token in {name} to {mock.flavor}"
    # the abort test's stream was cancelled upstream
    assert any(s.switch == "mock-long" for s in mocks.openai.streams)
    mocks.openai.wait_for(
        lambda: any(s.switch == "mock-long" and s.disconnected for s in mocks.openai.streams)
    )


# --- Chromium -----------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>byok-relay-client in Chromium</title>
<link rel="icon" href="data:,">
<script type="importmap">{"imports": {"byok-relay-client": "/client.js"}}</script>
</head><body><script type="module">
import RelayClientDefault, { RelayClient, RelayError, extractText } from 'byok-relay-client'

window.scenario = async (relayUrl, key) => {
  const out = { sameDefault: RelayClientDefault === RelayClient }
  try {
    const relay = new RelayClient({ baseUrl: relayUrl, appId: 'npm-package-browser' })
    const token = await relay.ensureToken()
    out.storedToken = localStorage.getItem('byok-relay-token') === token
    await relay.storeKey('openai', key)
    out.providers = (await relay.listKeys()).providers
    out.pieces = []
    for await (const t of relay.streamText({ model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'Say hello' }] })) out.pieces.push(t)
    try {
      await relay.storeKey('no-such-provider', key)
    } catch (e) {
      out.error = { isRelayError: e instanceof RelayError, status: e.status }
    }
    await relay.deleteUser()
    out.tokenAfter = relay.token
  } catch (e) {
    out.failure = String(e && e.message || e)
  }
  return out
}
document.documentElement.dataset.ready = '1'
</script></body></html>
"""


class _PackageOrigin(http.server.BaseHTTPRequestHandler):
    """Serves the test page and clients/js/client.js, as a static host or CDN would."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/":
            body, kind = PAGE.encode(), "text/html; charset=utf-8"
        elif path == "/client.js":
            body, kind = (PKG / "client.js").read_bytes(), "text/javascript"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def package_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PackageOrigin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_chromium_imports_the_package_file(
    browser: Any, relay: Relay, mocks: MockProviders, package_origin: str
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    errors = _watch_console(page)
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlsplit(request.url).hostname or ""))
    await page.goto(package_origin + "/")
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    out = await page.evaluate(
        "([url, key]) => window.scenario(url, key)", [relay.url.rstrip("/"), OPENAI_KEY]
    )
    await context.close()

    assert "failure" not in out, f"{out.get('failure')} (console: {errors})"
    assert out["sameDefault"] is True
    assert out["storedToken"] is True
    assert out["providers"] == ["openai"]
    assert "".join(out["pieces"]) == REPLY_TEXT and len(out["pieces"]) > 1
    assert out["error"] == {"isRelayError": True, "status": 400}
    assert out["tokenAfter"] is None
    assert mocks.openai.last_request.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
    assert hosts == {"127.0.0.1"}, hosts
    # the one console error is Chromium logging the deliberate 400 (no-such-provider)
    assert [e for e in errors if "status of 400" not in e] == [], errors
