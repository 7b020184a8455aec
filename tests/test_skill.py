"""SPEC §12: the coding-agent skill (`GET /skill`) and its index (`GET /llms.txt`).

The skill is tested by following it literally: it is fetched from a real relay (whose
providers are the mocks), every fenced code block is extracted and run in order against
that relay — bash blocks with bash, python blocks with this virtualenv's python, js
blocks with Node — substituting only what the skill itself tells the reader to substitute
(the user's own provider keys become obviously fake ones). Then the mock providers must
have seen those keys, never the relay token, and the outputs must be the answers.

Node runs the js blocks as a page on the app's origin would: `import … from
'<relay>/client.js'` is loaded over HTTP (a module-loader hook; browsers do this
natively) and fetch sends `Origin: https://app.example` (browsers add it themselves),
the origin the skill binds its scoped token to.

The rest: the package copy equals the repository's skills/byok-relay/SKILL.md, the
Agent Skills front matter, PUBLIC_URL, the Host / X-Forwarded-* fallback (believed only
with TRUSTED_PROXIES), hostile Host headers, content types and llms.txt's shape.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import StartRelay
from providers.mock import REPLY_TEXT, REPLY_TOKENS, MockProviders
from providers.relay import (
    INHERITED_ENV,
    TEST_ENCRYPTION_SECRET,
    Relay,
    http_client,
    relay_env,
)

from byok_relay.config import ConfigError, load_settings

HTTP = http_client()
REPO = Path(__file__).resolve().parents[1]
SKILL_FILE = REPO / "skills" / "byok-relay" / "SKILL.md"
PLACEHOLDER = "{{RELAY_URL}}"

#: What the skill tells the reader to substitute, and the obviously fake values used here.
OPENAI_KEY = "sk-test-skill-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-skill-0123456789"
SUBSTITUTE = {"sk-your-openai-key": OPENAI_KEY, "sk-ant-your-anthropic-key": ANTHROPIC_KEY}
APP_ORIGIN = "https://app.example"  # the skill's example origin, kept as it is

RUNNERS = {"bash": "bash", "sh": "bash", "python": "python", "js": "node", "javascript": "node"}
#: Languages of blocks that are not meant to run (none today; keep this short).
NOT_RUNNABLE = {"text"}

_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[ \t]*$")

# -- Node: http(s) module imports (as a browser does) and a page's Origin --------------
_LOADER = """\
const remote = (s) => s.startsWith('http://') || s.startsWith('https://')
export async function resolve (specifier, context, next) {
  if (remote(specifier)) return { url: specifier, shortCircuit: true }
  if (context.parentURL && remote(context.parentURL) && /^(\\.{1,2})?\\//.test(specifier)) {
    return { url: new URL(specifier, context.parentURL).href, shortCircuit: true }
  }
  return next(specifier, context)
}
export async function load (url, context, next) {
  if (!remote(url)) return next(url, context)
  const res = await fetch(url)
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`)
  return { format: 'module', source: await res.text(), shortCircuit: true }
}
"""
_PAGE = """\
import { register } from 'node:module'
register('./loader.mjs', import.meta.url)
const pageFetch = globalThis.fetch
globalThis.fetch = (input, init = {}) => {
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : {}))
  if (!headers.has('origin')) headers.set('origin', process.env.APP_ORIGIN)
  return pageFetch(input, { ...init, headers })
}
"""


@dataclass
class Block:
    lang: str
    code: str
    section: str  # the "## …" heading it sits under
    line: int

    def __str__(self) -> str:
        return f"```{self.lang} block at line {self.line} ({self.section})"


def code_blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    section = ""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = _FENCE.match(line)
        if m is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"unclosed code fence at line {start}"
        blocks.append(Block(m.group(1).lower(), "\n".join(body) + "\n", section, start))
        i += 1
    return blocks


def front_matter(markdown: str) -> dict[str, object]:
    assert markdown.startswith("---\n"), "SKILL.md must start with YAML front matter"
    head, sep, _ = markdown[4:].partition("\n---\n")
    assert sep, "front matter is not closed by ---"
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def _clean_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Follower:
    """Runs blocks in order in one working directory, carrying exported shell variables
    (e.g. RELAY_TOKEN) from each bash block to every later block."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / "state.sh"
        self.env_file = work / "env.bin"
        self.env = _clean_env()
        (work / "loader.mjs").write_text(_LOADER)
        (work / "page.mjs").write_text(_PAGE)

    def run(self, n: int, block: Block) -> subprocess.CompletedProcess[str]:
        runner = RUNNERS[block.lang]
        if runner == "bash":
            script = self.work / f"block{n}.sh"
            script.write_text(
                "set -eo pipefail\n"
                f"[ -f {self.state} ] && source {self.state}\n"
                f"{block.code}\n"
                f"export -p > {self.state}\n"
                f"env -0 > {self.env_file}\n"
            )
            args = ["bash", str(script)]
        elif runner == "python":
            script = self.work / f"block{n}.py"
            script.write_text(block.code)
            args = [sys.executable, str(script)]
        else:
            script = self.work / f"block{n}.mjs"
            script.write_text(block.code)
            args = ["node", "--import", "./page.mjs", str(script)]
        result = subprocess.run(
            args,
            cwd=self.work,
            env={**self.env, "APP_ORIGIN": APP_ORIGIN},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if runner == "bash" and result.returncode == 0:
            pairs = self.env_file.read_bytes().split(b"\0")
            self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
        return result


def _node_usable() -> bool:
    node = shutil.which("node")
    if node is None:
        return False
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major, minor = (int(x) for x in out.stdout.strip().lstrip("v").split(".")[:2])
    return (major, minor) >= (20, 6)  # module.register()


def _get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return HTTP.get(url, headers=headers)


# --------------------------------------------------------------------------- the skill
def test_repository_and_package_copies_are_identical() -> None:
    packaged = (files("byok_relay") / "static" / "SKILL.md").read_text("utf-8")
    assert packaged == SKILL_FILE.read_text("utf-8"), (
        "src/byok_relay/static/SKILL.md differs from skills/byok-relay/SKILL.md: "
        "cp skills/byok-relay/SKILL.md src/byok_relay/static/SKILL.md"
    )


def test_front_matter_is_agent_skills_format() -> None:
    text = SKILL_FILE.read_text("utf-8")
    meta = front_matter(text)
    assert meta["name"] == SKILL_FILE.parent.name == "byok-relay"
    name = str(meta["name"])
    assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", name) and len(name) <= 64
    description = meta["description"]
    assert isinstance(description, str) and 0 < len(description) <= 1024
    assert "Use when" in description  # says when to use it, not only what it is
    assert set(meta) <= {"name", "description", "license", "compatibility", "metadata",
                         "allowed-tools"}  # fmt: skip
    assert len(text.splitlines()) < 500  # the spec's advice for SKILL.md


def test_following_the_skill_literally_works(
    relay: Relay, mocks: MockProviders, tmp_path: Path
) -> None:
    r = _get(f"{relay.url}/skill")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/markdown; charset=utf-8"
    skill = r.text
    assert PLACEHOLDER not in skill and "not filled in" not in skill
    assert "not filled in" in SKILL_FILE.read_text("utf-8")
    assert f'base_url="{relay.url}/relay/openai/v1"' in skill
    assert front_matter(skill)["name"] == "byok-relay"

    # The only substitutions made are the ones the skill asks for, in its own words.
    told = next(p for p in skill.split("\n\n") if "substitute only" in p)
    for placeholder in [*SUBSTITUTE, APP_ORIGIN]:
        assert f"`{placeholder}`" in told, placeholder
    for placeholder, fake in SUBSTITUTE.items():
        skill = skill.replace(placeholder, fake)

    blocks = code_blocks(skill)
    unknown = [b for b in blocks if b.lang not in RUNNERS and b.lang not in NOT_RUNNABLE]
    assert not unknown, f"blocks in no runnable language (mark them ```text): {unknown}"
    runnable = [b for b in blocks if b.lang in RUNNERS]
    assert {RUNNERS[b.lang] for b in runnable} == {"bash", "python", "node"}
    assert len(blocks) - len(runnable) <= 2

    node = _node_usable()
    follower = Follower(tmp_path)
    outputs: list[tuple[Block, str]] = []
    not_run: list[Block] = []
    for n, block in enumerate(runnable):
        if RUNNERS[block.lang] == "node" and not node:
            not_run.append(block)
            continue
        result = follower.run(n, block)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{block} failed ({result.returncode}):\n{output[-3000:]}"
        outputs.append((block, result.stdout))

    token = follower.env.get("RELAY_TOKEN", "")
    assert token.startswith("byok_rt_"), "section 2 did not export RELAY_TOKEN"
    for block, out in outputs:
        assert token not in out, f"{block} printed the relay token"
        if not block.section.startswith("6."):  # only the errors section shows refusals
            assert '{"error":' not in out, f"{block} got a refusal:\n{out[-2000:]}"

    def out_of(section: str, lang: str | None = None) -> list[str]:
        return [o for b, o in outputs if b.section.startswith(section)
                and (lang is None or RUNNERS[b.lang] == lang)]  # fmt: skip

    assert '"ok":true' in out_of("1.")[0]
    stored = out_of("3.")[0]
    assert '{"ok":true,"provider":"openai"}' in stored
    assert '{"ok":true,"provider":"anthropic"}' in stored
    assert '"hint":"6789"' in stored and '"status":200' in stored
    # Section 4: every SDK / client.js / fetch example printed the streamed answer; the
    # curl ones printed the SSE events as they came.
    calls = [o for o in out_of("4.") if "data:" not in o]
    assert len(calls) >= (4 if node else 2)
    for out in calls:
        assert REPLY_TEXT in out
    sse = [o for o in out_of("4.", "bash")]
    assert sse and all(o.count("data:") >= len(REPLY_TOKENS) for o in sse)
    # Section 5: a scoped token minted (python, js), chatted with (js), listed and revoked.
    scoped = "\n".join(out_of("5."))
    assert '"window":"day"' in scoped
    if node:
        assert REPLY_TEXT in scoped and "1 live scoped token(s)" in scoped
    # Section 6: the error example names the missing key and what to do.
    errors = "\n".join(out_of("6."))
    assert 'No API key stored for provider \\"groq\\"' in errors or (
        'No API key stored for provider "groq"' in errors
    )
    assert "POST /keys/groq first" in errors

    # The providers saw the user's own keys, never the relay token.
    chats = mocks.openai.requests_to("/chat/completions")
    assert len(chats) >= (4 if node else 2)
    for request in mocks.openai.requests:
        assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    claude = mocks.anthropic.requests_to("/v1/messages")
    assert len(claude) >= 2
    for request in mocks.anthropic.requests:
        assert request.headers["x-api-key"] == ANTHROPIC_KEY
    for request in [*mocks.openai.requests, *mocks.anthropic.requests]:
        assert all(token not in v for v in request.headers.values())
        assert "x-relay-token" not in request.headers
    assert not mocks.by_flavor("openai").requests_to("/openai/v1/chat/completions")  # groq

    if not_run:
        msg = f"Node >= 20.6 not found: {len(not_run)} js blocks not run"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


# --------------------------------------------------------------------------- llms.txt
def test_llms_txt_indexes_the_skill(relay: Relay) -> None:
    r = _get(f"{relay.url}/llms.txt")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    lines = r.text.splitlines()
    assert lines[0] == "# byok-relay"
    first = next(line for line in lines[1:] if line.strip())
    assert first.startswith("> ")  # the summary blockquote
    docs = lines[lines.index("## Docs") + 1 :]
    links = re.findall(r"^- \[[^\]]+\]\(([^)\s]+)\)", "\n".join(docs), re.M)
    for path in ("/skill", "/openapi.json", "/docs"):
        assert f"{relay.url}{path}" in links
    for link in links:  # every link works
        assert _get(link).status_code == 200, link


def test_skill_routes_are_in_the_openapi_description(relay: Relay) -> None:
    paths = _get(f"{relay.url}/openapi.json").json()["paths"]
    assert "get" in paths["/skill"] and "get" in paths["/llms.txt"]


# --------------------------------------------------------------------------- base URL
def test_public_url_wins_over_the_request(start_relay: StartRelay) -> None:
    server = start_relay(PUBLIC_URL="https://relay.example.test/base/")
    r = _get(f"{server.url}/skill", {"host": "other.example"})
    assert "https://relay.example.test/base/relay/openai/v1" in r.text
    assert "other.example" not in r.text and f"127.0.0.1:{server.port}" not in r.text
    assert r.headers["cache-control"] == "public, max-age=300"
    assert "vary" not in r.headers
    llms = _get(f"{server.url}/llms.txt", {"host": "other.example"}).text
    assert "(https://relay.example.test/base/skill)" in llms
    assert "other.example" not in llms


def test_the_url_the_request_came_in_on(relay: Relay) -> None:
    r = _get(f"{relay.url}/skill", {"host": "Relay.Internal:8080"})
    assert 'base_url="http://relay.internal:8080/relay/openai/v1"' in r.text
    assert PLACEHOLDER not in r.text
    # derived from headers: never stored by a shared cache
    assert r.headers["cache-control"].startswith("private")
    assert "Host" in r.headers["vary"] and "X-Forwarded-Host" in r.headers["vary"]
    llms = _get(f"{relay.url}/llms.txt", {"host": "relay_internal"}).text
    assert "(http://relay_internal/skill)" in llms


def test_forwarded_headers_ignored_without_trusted_proxies(relay: Relay) -> None:
    headers = {"x-forwarded-host": "attacker.example", "x-forwarded-proto": "https"}
    r = _get(f"{relay.url}/skill", headers)
    assert "attacker.example" not in r.text
    assert f'base_url="{relay.url}/relay/openai/v1"' in r.text


@pytest.mark.parametrize(
    ("trusted", "forwarded_host", "expected"),
    [
        ("1", "relay.example.test", "https://relay.example.test"),
        # one hop: the entry our proxy appended, not the client's
        ("1", "attacker.example, relay.example.test", "https://relay.example.test"),
        ("127.0.0.0/8", "relay.example.test", "https://relay.example.test"),
        # the peer (127.0.0.1) is not one of the trusted proxies
        ("10.0.0.0/8", "relay.example.test", None),
    ],
)
def test_forwarded_headers_with_trusted_proxies(
    start_relay: StartRelay, trusted: str, forwarded_host: str, expected: str | None
) -> None:
    server = start_relay(TRUSTED_PROXIES=trusted)
    headers = {"x-forwarded-host": forwarded_host, "x-forwarded-proto": "https"}
    text = _get(f"{server.url}/skill", headers).text
    base = expected or server.url
    assert f'base_url="{base}/relay/openai/v1"' in text
    assert "attacker.example" not in text


def _raw_get(relay: Relay, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """A request with exactly these header bytes (HTTP clients refuse to send some)."""
    head = b"GET " + path.encode() + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    head += b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body.decode("utf-8", "replace")


HOSTILE_HOSTS = [
    b"evil.example](https://attacker.example)",
    b"evil.example/skill#",
    b"evil.example?x=1",
    b"user@attacker.example",
    b"attacker.example:80:90",
    b"<script>alert(1)</script>",
    b'attacker.example"onmouseover=x',
    b"attacker.example`code`",
    b"attacker.example\\path",
    b"[::1]](http://attacker.example)",
    "attacker.\u0435xample".encode(),  # a Cyrillic e
    b"a" * 300,
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS, ids=lambda h: h.decode("utf-8", "replace")[:30])
def test_hostile_host_header_cannot_inject(relay: Relay, host: bytes) -> None:
    status, skill = _raw_get(relay, "/skill", [(b"Host", host)])
    if status == 400:  # the HTTP parser refused it outright: fine too
        return
    assert status == 200
    assert "attacker" not in skill and "<script>" not in skill and "a" * 300 not in skill
    assert f"{PLACEHOLDER}/relay/openai/v1" in skill  # left for the reader to fill in
    assert "This copy is not filled in" in skill  # ... with the note that says how
    status, llms = _raw_get(relay, "/llms.txt", [(b"Host", host)])
    assert status == 200
    assert "attacker" not in llms and "<script>" not in llms
    assert "- [Coding-agent skill](/skill)" in llms  # relative links


def test_hostile_forwarded_headers_cannot_inject(start_relay: StartRelay) -> None:
    server = start_relay(TRUSTED_PROXIES="1")
    for headers in (
        [(b"X-Forwarded-Host", b"evil.example](https://attacker.example)")],
        [(b"X-Forwarded-Proto", b"javascript"), (b"X-Forwarded-Host", b"attacker.example")],
    ):
        status, skill = _raw_get(server, "/skill", [(b"Host", b"127.0.0.1"), *headers])
        assert status == 200
        assert "attacker" not in skill and "javascript:" not in skill
        assert f"{PLACEHOLDER}/relay/openai/v1" in skill


# --------------------------------------------------------------------------- PUBLIC_URL
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://relay.example.com", "https://relay.example.com"),
        ("https://relay.example.com/", "https://relay.example.com"),
        ("  http://127.0.0.1:3000//  ", "http://127.0.0.1:3000"),
        ("https://example.com/relay/", "https://example.com/relay"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("", None),
    ],
)
def test_public_url_accepted(value: str, expected: str | None) -> None:
    settings = load_settings(None, ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET, PUBLIC_URL=value)
    assert settings.PUBLIC_URL == expected


@pytest.mark.parametrize(
    "value",
    [
        "relay.example.com",
        "ftp://relay.example.com",
        "https://relay.example.com?x=1",
        "https://relay.example.com/#top",
        "https://user:pass@relay.example.com",
        "https://relay example.com",
        "https://relay.example.com/a(b)",
        "https://",
        "javascript:alert(1)",
    ],
)
def test_public_url_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^PUBLIC_URL: "):
        load_settings(None, ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET, PUBLIC_URL=value)


def test_bad_public_url_stops_serve(mocks: MockProviders, tmp_path: Path) -> None:
    env = relay_env(mocks, tmp_path, PUBLIC_URL="relay.example.com")
    result = subprocess.run(
        [sys.executable, "-m", "byok_relay", "serve", "--port", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "PUBLIC_URL" in result.stderr and "Traceback" not in result.stderr
