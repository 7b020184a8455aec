"""`byok-relay mcp` (SPEC §12): the real command as a subprocess, driven by the MCP SDK's own
stdio client (``mcp.client.stdio.stdio_client`` + ``ClientSession``) against a real relay
and the mock providers. Every tool end to end; relay errors as MCP tool errors with the
relay's message; the relay token, the app secret and provider keys in no tool result and
nowhere in the server's stderr."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult
from providers.mock import REPLY_TEXT, MockProviders
from providers.relay import Relay, fake_secret, free_port, http_client

TOOLS = {"health", "register", "store_key", "list_keys", "delete_key", "chat", "request", "usage"}
OPENAI_KEY = "sk-test-mcp-openai-0000000001"
ANTHROPIC_KEY = "sk-ant-test-mcp-0000000002"
GOOGLE_KEY = "AIza-test-mcp-google-0000000003"
ELEVEN_KEY = "xi-test-mcp-eleven-0000000004"
KEYS = (OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, ELEVEN_KEY)
# A syntactically valid relay token that no relay issued.
UNKNOWN_TOKEN = "byok_rt_" + "A" * 43


def _command() -> list[str]:
    script = Path(sys.executable).with_name("byok-relay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "byok_relay"]


class McpRun:
    """One `byok-relay mcp` process: its session, every result it gave, its stderr."""

    def __init__(self, session: ClientSession, stderr_path: Path) -> None:
        self.session = session
        self.stderr_path = stderr_path
        self.results: list[CallToolResult] = []

    async def call(self, name: str, **arguments: Any) -> CallToolResult:
        result = await self.session.call_tool(name, arguments)
        self.results.append(result)
        return result

    async def ok(self, name: str, **arguments: Any) -> Any:
        """Call a tool that must succeed; its structured result (or its text)."""
        result = await self.call(name, **arguments)
        assert not result.is_error, f"{name} failed: {text_of(result)}"
        if result.structured_content is not None:
            data = result.structured_content
            return data["result"] if set(data) == {"result"} and name == "chat" else data
        return text_of(result)

    async def error(self, name: str, **arguments: Any) -> str:
        """Call a tool that must fail with an MCP tool error; its message."""
        result = await self.call(name, **arguments)
        assert result.is_error, f"{name} should have failed: {text_of(result)}"
        return text_of(result)

    def wire(self) -> str:
        """Everything the client received from tool calls, as JSON text."""
        return "\n".join(r.model_dump_json() for r in self.results)

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", errors="replace")


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


@contextlib.asynccontextmanager
async def mcp_server(relay_url: str, tmp: Path, **env: str) -> AsyncIterator[McpRun]:
    command = _command()
    params = StdioServerParameters(
        command=command[0],
        args=[*command[1:], "mcp"],
        env={"RELAY_URL": relay_url, "PYTHONUNBUFFERED": "1", **env},
        cwd=str(tmp),
    )
    stderr_path = tmp / f"mcp-stderr-{len(list(tmp.glob('mcp-stderr-*')))}.log"
    with stderr_path.open("w", encoding="utf-8") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=60) as session,
        ):
            await session.initialize()
            yield McpRun(session, stderr_path)


def assert_no_secrets(run: McpRun, *secrets: str) -> None:
    wire, stderr = run.wire(), run.stderr()
    for secret in secrets:
        assert secret not in wire, "a secret reached a tool result"
        assert secret not in stderr, "a secret reached the MCP server's stderr"


def relay_error(relay: Relay, method: str, path: str, token: str | None, **kw: Any) -> str:
    """The relay's own `error` message for a request (to compare the tool error with)."""
    headers = {"x-relay-token": token} if token else {}
    response = http_client().request(method, relay.url + path, headers=headers, **kw)
    assert response.status_code >= 400
    return str(response.json()["error"])


# --- the whole flow -------------------------------------------------------------------
async def test_every_tool_end_to_end(relay: Relay, mocks: MockProviders, tmp_path: Path) -> None:
    token_file = tmp_path / "conf" / "token"
    async with mcp_server(relay.url, tmp_path, RELAY_TOKEN_FILE=str(token_file)) as run:
        listed = await run.session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(t.description for t in listed.tools)

        health = await run.ok("health")
        assert health["ok"] is True and "openai" in health["providers"]
        assert (await run.ok("health", deep=True))["checks"]["database"] == "ok"

        assert "call the register tool first" in await run.error("list_keys")

        reg = await run.ok("register", app_id="mcp-test")
        assert token_file.exists(), reg
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token.startswith("byok_rt_") and reg["token"] == token[:12] + "..."
        assert reg["saved_to"] == str(token_file) and reg["app_id"] == "mcp-test"
        assert "replace=true" in await run.error("register")

        for provider, key in (("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY),
                              ("google", GOOGLE_KEY), ("elevenlabs", ELEVEN_KEY)):  # fmt: skip
            assert await run.ok("store_key", provider=provider, key=key) == {
                "ok": True,
                "provider": provider,
            }
        keys = await run.ok("list_keys")
        assert sorted(keys["providers"]) == ["anthropic", "elevenlabs", "google", "openai"]
        assert {k["provider"]: k["hint"] for k in keys["keys"]}["openai"] == OPENAI_KEY[-4:]

        # chat: one body per wire format, the answer's text back, the stored key upstream
        assert await run.ok("chat", model="openai/gpt-4o-mini", prompt="Hi", max_tokens=50,
                            system="Be brief.") == REPLY_TEXT  # fmt: skip
        sent = mocks.openai.last_request
        assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert sent.json()["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
        assert sent.json()["max_completion_tokens"] == 50 and "stream" not in sent.json()

        assert await run.ok("chat", model="anthropic/claude-3-5-haiku-20241022",
                            prompt="Hi", system="Be brief.") == REPLY_TEXT  # fmt: skip
        sent = mocks.anthropic.last_request
        assert sent.headers["x-api-key"] == ANTHROPIC_KEY
        body = sent.json()
        assert body["model"] == "claude-3-5-haiku-20241022" and body["system"] == "Be brief."
        assert body["max_tokens"] == 1024 and body["messages"] == [
            {"role": "user", "content": "Hi"}
        ]

        history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        assert await run.ok("chat", model="google/gemini-2.0-flash", messages=history,
                            prompt="Again", temperature=0.5) == REPLY_TEXT  # fmt: skip
        sent = mocks.gemini.last_request
        assert sent.path.endswith("/models/gemini-2.0-flash:generateContent")
        assert sent.headers["x-goog-api-key"] == GOOGLE_KEY
        assert sent.json() == {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello"}]},
                {"role": "user", "parts": [{"text": "Again"}]},
            ],
            "generationConfig": {"temperature": 0.5},
        }
        # a bare name routed by the relay's patterns
        assert await run.ok("chat", model="claude-3-5-haiku-20241022", prompt="x") == REPLY_TEXT
        assert mocks.anthropic.last_request.json()["max_tokens"] == 1024

        # request: any route, JSON in and out
        models = await run.ok("request", path="/models")
        assert "anthropic" in models["providers"]
        listed_upstream = await run.ok("request", path="/relay/openai/v1/models")
        assert listed_upstream["object"] == "list"
        completion = await run.ok(
            "request",
            path="/relay/openai/v1/chat/completions",
            method="POST",
            body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        assert completion["choices"][0]["message"]["content"] == REPLY_TEXT
        # the generic mock echoes the headers it got, the injected key among them
        echo = await run.ok("request", path="/relay/elevenlabs/v1/voices", query={"a": "b"})
        assert echo["headers"]["xi-api-key"] == "[redacted]" and echo["query"] == {"a": ["b"]}
        scoped = await run.ok("request", path="/tokens", method="POST", body={"ttl_s": 600})
        assert scoped["token"].startswith("byok_st_") and scoped["token"].endswith("...")
        assert len(scoped["token"]) == len("byok_st_") + 4 + 3

        usage = await run.ok("usage")
        assert {"total", "last_7d", "error_count", "providers", "top_models"} <= set(usage)

        # rotate through request: the session follows the new token (and the file does too)
        rotated = await run.ok("request", path="/tokens/rotate", method="POST")
        assert rotated["token"].endswith("...") and "now uses the new token" in rotated["note"]
        new_token = token_file.read_text().strip()
        assert new_token != token and rotated["token"] == new_token[:12] + "..."
        assert "openai" in (await run.ok("list_keys"))["providers"]
        assert relay_error(relay, "GET", "/keys", token)  # the old token is dead

        assert await run.ok("delete_key", provider="openai") == {"ok": True, "deleted": True}
        assert "openai" not in (await run.ok("list_keys"))["providers"]
        no_key = relay_error(relay, "POST", "/relay", new_token,
                             json={"model": "openai/gpt-4o-mini", "messages": []})  # fmt: skip
        message = await run.error("chat", model="openai/gpt-4o-mini", prompt="Hi")
        assert no_key in message and "relay answered 400" in message

    # a new server process finds the saved token
    async with mcp_server(relay.url, tmp_path, RELAY_TOKEN_FILE=str(token_file)) as again:
        providers = (await again.ok("list_keys"))["providers"]
        assert sorted(providers) == ["anthropic", "elevenlabs", "google"]

    for r in (run, again):
        assert_no_secrets(r, token, new_token, *KEYS)
    stderr = run.stderr()
    assert "byok-relay mcp" in stderr and "token: none" in stderr
    assert "failed" in stderr  # tool errors are logged, scrubbed


# --- relay errors ---------------------------------------------------------------------
async def test_relay_errors_are_tool_errors(relay: Relay, register: Any, tmp_path: Path) -> None:
    user = register(relay)
    async with mcp_server(relay.url, tmp_path, RELAY_TOKEN=user.token) as run:
        assert (await run.ok("list_keys"))["providers"] == []
        expected = relay_error(relay, "POST", "/keys/nope", user.token, json={"key": OPENAI_KEY})
        message = await run.error("store_key", provider="nope", key=OPENAI_KEY)
        assert "Unsupported provider" in expected and expected in message
        assert "relay answered 400" in message
        bad = relay_error(relay, "POST", "/keys/openai", user.token, json={"key": "short"})
        assert bad in await run.error("store_key", provider="openai", key="short")
        unroutable = relay_error(relay, "POST", "/relay", user.token,
                                 json={"model": "nope-model-x", "messages": []})  # fmt: skip
        assert unroutable in await run.error("chat", model="nope-model-x", prompt="Hi")
        assert "path must be a path on the relay" in await run.error(
            "request", path="http://127.0.0.1:1/steal"
        )
        assert "already has a relay token" in await run.error("register")
        # erasing the user through request: the session forgets the dead token
        assert (await run.ok("request", path="/users", method="DELETE"))["ok"] is True
        assert "call the register tool first" in await run.error("usage")
    assert_no_secrets(run, user.token, OPENAI_KEY)

    async with mcp_server(relay.url, tmp_path, RELAY_TOKEN=UNKNOWN_TOKEN) as run:
        expected = relay_error(relay, "GET", "/keys", UNKNOWN_TOKEN)
        message = await run.error("list_keys")
        assert expected in message and "relay answered 401" in message
        assert (await run.ok("health"))["ok"] is True
    assert_no_secrets(run, UNKNOWN_TOKEN)

    port = free_port()  # nothing listens there
    async with mcp_server(f"http://127.0.0.1:{port}", tmp_path, RELAY_TOKEN=UNKNOWN_TOKEN) as run:
        assert f"cannot reach the relay at http://127.0.0.1:{port}" in await run.error("health")
    assert_no_secrets(run, UNKNOWN_TOKEN)


async def test_app_secret_register_and_app_usage(start_relay: Any, tmp_path: Path) -> None:
    secret = fake_secret("mcp-app")
    server = start_relay(APP_SECRET=secret)
    async with mcp_server(server.url, tmp_path) as run:
        expected = relay_error(server, "POST", "/users", None, json={"app_id": "x"})
        assert expected in await run.error("register", app_id="x")
        assert "RELAY_APP_SECRET" in await run.error("usage", app_id="x")
    async with mcp_server(server.url, tmp_path, RELAY_APP_SECRET=secret,
                          RELAY_APP_ID="mcp-app") as run:  # fmt: skip
        reg = await run.ok("register")
        assert reg["app_id"] == "mcp-app" and reg["saved_to"] is None
        assert "memory only" in reg["note"] and reg["token"].startswith("byok_rt_")
        await run.ok("store_key", provider="openai", key=OPENAI_KEY)
        assert await run.ok("chat", model="gpt-4o-mini", prompt="Hi") == REPLY_TEXT
        stats = await run.ok("usage", app_id="mcp-app")
        assert stats["app_id"] == "mcp-app" and "total" in stats
        assert "usage" in (await run.ok("request", path="/budget"))
    assert_no_secrets(run, secret, OPENAI_KEY)


# --- the command itself ----------------------------------------------------------------
def _run_cli(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "VIRTUAL_ENV") if k in os.environ}
    return subprocess.run(
        [*_command(), "mcp"],
        env={**base, **env},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_mcp_extra_it_says_what_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "mcp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'mcp\'", name="mcp")\n'
    )
    done = _run_cli(tmp_path, PYTHONPATH=str(shadow.parent))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'byok-relay[mcp]'" in lines[0], done.stderr


def test_bad_relay_url_is_one_line(tmp_path: Path) -> None:
    done = _run_cli(tmp_path, RELAY_URL="ftp://relay.example")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "byok-relay: invalid configuration: RELAY_URL must be an http(s) URL such as "
        "http://127.0.0.1:3000"
    )


@pytest.mark.parametrize("value", ["", "\n"])
def test_empty_token_file_means_no_token(tmp_path: Path, value: str) -> None:
    from byok_relay.mcp_server import McpConfig

    path = tmp_path / "token"
    path.write_text(value)
    config = McpConfig.from_env({"RELAY_TOKEN_FILE": str(path)})
    assert config.token is None and config.token_source == "none"
    config = McpConfig.from_env({"RELAY_TOKEN_FILE": str(path), "RELAY_TOKEN": "byok_rt_x"})
    assert config.token == "byok_rt_x" and config.token_source == "RELAY_TOKEN"


def test_scrubbing() -> None:
    from byok_relay.mcp_server import Secrets, mask_token

    secrets = Secrets()
    secrets.add(OPENAI_KEY)
    scrubbed = secrets.scrub(
        {"a": [f"key={OPENAI_KEY}", UNKNOWN_TOKEN], "token": "eyJhbGciOi.x.y", OPENAI_KEY: 1}
    )
    assert json.dumps(scrubbed) == json.dumps(
        {"a": ["key=[redacted]", mask_token(UNKNOWN_TOKEN)], "token": "[redacted]",
         "[redacted]": 1}
    )  # fmt: skip
    assert mask_token(UNKNOWN_TOKEN) == "byok_rt_AAAA..."
