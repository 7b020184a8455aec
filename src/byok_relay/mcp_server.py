"""``byok-relay mcp``: the relay as a Model Context Protocol server over stdio (SPEC §12).

An MCP client (Claude Desktop, Claude Code, Cursor, ...) starts ``byok-relay mcp`` and talks
JSON-RPC over its stdin/stdout; the tools call a relay's HTTP API with :class:`RelayClient`.
Built on the official ``mcp`` Python SDK (2.x: ``mcp.server.mcpserver.MCPServer``, the
successor of v1's ``FastMCP``); install it with ``pip install 'byok-relay[mcp]'``.

Configuration (environment only; see docs/integrations.md):

``RELAY_URL``
    The relay's base URL (default ``http://127.0.0.1:3000``).
``RELAY_TOKEN``
    The relay token the tools use. Optional: the ``register`` tool can create a user.
``RELAY_TOKEN_FILE``
    Optional file for the token: read at start when ``RELAY_TOKEN`` is unset, and where
    ``register`` (and a token rotated through ``request``) saves the new token, mode 0600.
    Without it a token created by ``register`` lives in this process's memory only.
``RELAY_APP_ID`` / ``RELAY_APP_SECRET``
    The ``app_id`` that ``register`` uses by default (``byok-relay-mcp``), and the relay's
    ``APP_SECRET`` when it has one (needed by ``register`` there, and by ``usage`` for an app).

Secrets: the relay token is never part of a tool result, an error or a log line: results
show a masked prefix (``byok_rt_AbCd...``) only. Every string a tool returns is scrubbed of
the token, the app secret and every provider key this process was given, and of anything
shaped like a relay or scoped token. stdout is the protocol channel: logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from byok_relay import __version__
from byok_relay.client import RelayClient, RelayError, extract_text
from byok_relay.config import ConfigError

__all__ = ["McpConfig", "RelayTools", "Secrets", "build_server", "mask_token", "serve_stdio"]

log = logging.getLogger("byok_relay.mcp")

DEFAULT_RELAY_URL = "http://127.0.0.1:3000"
DEFAULT_APP_ID = "byok-relay-mcp"
#: Anthropic's Messages API requires max_tokens; used when the caller gives none.
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_TOKEN_SHAPE = re.compile(r"byok_(?:rt|st)_[A-Za-z0-9_-]{8,}")
_REDACTED = "[redacted]"
_MIN_SECRET = 6  # shorter strings are not scrubbed (they would match ordinary text)

P = ParamSpec("P")
T = TypeVar("T")


# --- secrets -------------------------------------------------------------------------
def mask_token(token: str) -> str:
    """A relay token's recognisable prefix and 4 characters (``byok_rt_AbCd...``): enough
    to tell tokens apart, never enough to use one. Other credentials (a JWT): 4 characters."""
    m = _TOKEN_SHAPE.match(token)
    keep = len("byok_rt_") + 4 if m else 4
    return token[:keep] + "..."


class Secrets:
    """Every secret this process has seen, scrubbed from whatever a tool returns."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= _MIN_SECRET:
            self._values.add(value)

    def text(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, _REDACTED)
        return _TOKEN_SHAPE.sub(lambda m: mask_token(m.group()), text)

    def scrub(self, data: Any) -> Any:
        """A copy of JSON-like ``data`` with every string scrubbed; a ``token`` field is
        masked whatever its shape."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, list | tuple):
            return [self.scrub(v) for v in data]
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for k, v in data.items():
                key = self.text(str(k))
                if key == "token" and isinstance(v, str) and v:
                    out[key] = mask_token(v) if _TOKEN_SHAPE.fullmatch(v) else _REDACTED
                else:
                    out[key] = self.scrub(v)
            return out
        return data


# --- configuration -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class McpConfig:
    relay_url: str
    token: str | None
    token_source: str  # "RELAY_TOKEN", "RELAY_TOKEN_FILE" or "none"
    token_file: Path | None
    app_id: str
    app_secret: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> McpConfig:
        """Read the configuration; :class:`ConfigError` (naming the variable) when invalid."""
        url = (environ.get("RELAY_URL") or DEFAULT_RELAY_URL).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("RELAY_URL must be an http(s) URL such as http://127.0.0.1:3000")
        if parts.query or parts.fragment:
            raise ConfigError("RELAY_URL must not carry a query or fragment")
        file_value = (environ.get("RELAY_TOKEN_FILE") or "").strip()
        token_file = Path(file_value).expanduser() if file_value else None
        token = (environ.get("RELAY_TOKEN") or "").strip() or None
        source = "RELAY_TOKEN" if token else "none"
        if token is None and token_file is not None and token_file.exists():
            token = _read_token_file(token_file)
            source = "RELAY_TOKEN_FILE" if token else "none"
        app_id = (environ.get("RELAY_APP_ID") or "").strip() or DEFAULT_APP_ID
        app_secret = (environ.get("RELAY_APP_SECRET") or "").strip() or None
        return cls(url, token, source, token_file, app_id, app_secret)


def _read_token_file(path: Path) -> str | None:
    try:
        text = path.read_text("utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"RELAY_TOKEN_FILE: cannot read {path}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("RELAY_TOKEN_FILE %s is readable by other users: chmod 600 it", path)
    return text or None


def _save_token_file(path: Path, token: str) -> None:
    """Write the token atomically with mode 0600 (never through a pre-existing temp file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# --- chat bodies ---------------------------------------------------------------------
Shape = Literal["openai", "anthropic", "gemini"]
_SHAPES: dict[str, Shape] = {"anthropic": "anthropic", "google": "gemini"}


def _shape_by_name(model: str) -> Shape:
    bare = model.rpartition("/")[2].lower()
    if model.lower().startswith("anthropic/") or bare.startswith("claude-"):
        return "anthropic"
    if model.lower().startswith("google/") or bare.startswith(("gemini-", "gemma-")):
        return "gemini"
    return "openai"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def chat_body(
    shape: Shape,
    provider: str | None,
    model: str,
    messages: list[dict[str, Any]],
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    """A non-streamed POST /relay body in the provider's own wire format."""
    systems = [system] if system else []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "system":
            systems.append(_text_of(m.get("content")))
        else:
            turns.append(m)
    body: dict[str, Any] = {"model": model}
    if shape == "gemini":
        body["contents"] = [
            {
                "role": "model" if m.get("role") in ("assistant", "model") else "user",
                "parts": m["parts"]
                if isinstance(m.get("parts"), list)
                else [{"text": _text_of(m.get("content"))}],
            }
            for m in turns
        ]
        if systems:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(systems)}]}
        config: dict[str, Any] = {}
        if max_tokens is not None:
            config["maxOutputTokens"] = max_tokens
        if temperature is not None:
            config["temperature"] = temperature
        if config:
            body["generationConfig"] = config
        return body
    if shape == "anthropic":
        body["messages"] = turns
        body["max_tokens"] = max_tokens if max_tokens is not None else ANTHROPIC_DEFAULT_MAX_TOKENS
        if systems:
            body["system"] = "\n\n".join(systems)
    else:
        body["messages"] = [{"role": "system", "content": s} for s in systems] + turns
        if max_tokens is not None:
            # OpenAI's current models refuse max_tokens; compatible providers expect it.
            body["max_completion_tokens" if provider == "openai" else "max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


# --- the tools -----------------------------------------------------------------------
def _tool(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn any unexpected exception into a scrubbed tool error (no traceback with a
    secret in it reaches the log or the client)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            tools = args[0]
            assert isinstance(tools, RelayTools)
            message = tools.secrets.text(f"{type(exc).__name__}: {exc}")
            log.error("tool %s failed unexpectedly: %s", fn.__name__, message)
            raise ToolError(f"internal error in the MCP server: {message}") from None

    return wrapper


class RelayTools:
    """The state of one MCP session: the relay client (and its token) and the secrets."""

    def __init__(self, config: McpConfig) -> None:
        self.config = config
        self.secrets = Secrets()
        self.secrets.add(config.token)
        self.secrets.add(config.app_secret)
        self.token_source = config.token_source
        self.relay = RelayClient(
            config.relay_url,
            token=config.token,
            app_id=config.app_id,
            app_secret=config.app_secret,
        )
        self._routing: dict[str, Any] | None = None

    async def close(self) -> None:
        await self.relay.close()

    # -- plumbing --------------------------------------------------------------------
    async def _relay(self, call: Awaitable[T]) -> T:
        """Await a relay call; a relay error becomes a tool error with the relay's message."""
        try:
            return await call
        except RelayError as exc:
            raise ToolError(self._describe(exc)) from None

    def _describe(self, exc: RelayError) -> str:
        if exc.status == 0:
            return self.secrets.text(
                f"cannot reach the relay at {self.config.relay_url}: {exc.message}"
            )
        text = f"relay answered {exc.status}: {exc.message}"
        if exc.request_id:
            text += f" (request id {exc.request_id})"
        return self.secrets.text(text)

    def _need_token(self) -> None:
        if not self.relay.token:
            raise ToolError(
                "no relay token: set RELAY_TOKEN (or RELAY_TOKEN_FILE) in this MCP server's "
                "environment, or call the register tool first"
            )

    def _result(self, data: Any) -> dict[str, Any]:
        clean = self.secrets.scrub(data)
        return clean if isinstance(clean, dict) else {"result": clean}

    def _adopt(self, token: str, source: str) -> str | None:
        """Use `token` for the rest of the session; save it when RELAY_TOKEN_FILE is set.
        Returns where it was saved."""
        self.secrets.add(token)
        self.relay.token = token
        self.token_source = source
        path = self.config.token_file
        if path is None:
            return None
        try:
            _save_token_file(path, token)
        except OSError as exc:
            log.error(
                "cannot save the relay token to RELAY_TOKEN_FILE %s: %s",
                path,
                exc.strerror or type(exc).__name__,
            )
            return None
        return str(path)

    def _forget(self) -> None:
        """The session's token is dead (revoked, user erased): drop it and its file."""
        token, self.relay.token = self.relay.token, None
        self.token_source = "none"
        path = self.config.token_file
        if token and path is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if path.read_text("utf-8").strip() == token:
                    path.unlink()

    def _where(self, saved_to: str | None) -> str:
        if saved_to:
            return (
                f"The token is saved to {saved_to} (mode 0600) and used for this "
                "session's calls; this server reads it again on start when RELAY_TOKEN "
                "is unset."
            )
        return (
            "The token is used for this session's calls and kept in this server's memory "
            "only: it is gone when the server stops, and with it access to the keys stored "
            "under it. Set RELAY_TOKEN_FILE to keep it across restarts."
        )

    async def _routing_table(self) -> dict[str, Any] | None:
        if self._routing is None:
            with contextlib.suppress(RelayError):
                data = await self.relay.models()
                if isinstance(data, dict):
                    self._routing = data
        return self._routing

    async def _provider_of(self, model: str) -> tuple[str | None, Shape]:
        """Which provider POST /relay sends `model` to (the relay's routing table), and
        the wire format its body takes."""
        table = await self._routing_table()
        provider: str | None = None
        if table is not None:
            names = {n for n in table.get("providers", []) if isinstance(n, str)}
            prefix, sep, rest = model.partition("/")
            if sep and rest and prefix.lower() in names:
                provider = prefix.lower()
            else:
                for entry in table.get("patterns", []):
                    glob = entry.get("pattern") if isinstance(entry, dict) else None
                    if isinstance(glob, str) and re.match(fnmatch.translate(glob), model, re.I):
                        provider = str(entry.get("provider"))
                        break
        if provider is None:
            return None, _shape_by_name(model)
        return provider, _SHAPES.get(provider, "openai")

    # -- tools -----------------------------------------------------------------------
    @_tool
    async def health(self, deep: bool = False) -> dict[str, Any]:
        params = {"deep": "1"} if deep else None
        data = await self._relay(self.relay.request("/health", method="GET", params=params))
        return self._result(data)

    @_tool
    async def register(self, app_id: str | None = None, replace: bool = False) -> dict[str, Any]:
        if self.relay.token and not replace:
            raise ToolError(
                f"this session already has a relay token ({mask_token(self.relay.token)}, "
                f"from {self.token_source}); registering creates a new user without any keys. "
                "Call register with replace=true to do that and switch to the new user."
            )
        aid = app_id or self.config.app_id
        token = await self._relay(self.relay.register(aid))
        saved_to = self._adopt(token, "register")
        return {
            "ok": True,
            "app_id": aid,
            "token": mask_token(token),
            "expires_at": self.relay.expires_at,
            "saved_to": saved_to,
            "note": self._where(saved_to),
        }

    @_tool
    async def store_key(
        self, provider: str, key: str, base_url: str | None = None
    ) -> dict[str, Any]:
        self.secrets.add(key)
        self._need_token()
        data = await self._relay(self.relay.store_key(provider, key, base_url))
        return self._result(data)

    @_tool
    async def list_keys(self) -> dict[str, Any]:
        self._need_token()
        return self._result(await self._relay(self.relay.list_keys()))

    @_tool
    async def delete_key(self, provider: str) -> dict[str, Any]:
        self._need_token()
        return self._result(await self._relay(self.relay.delete_key(provider)))

    @_tool
    async def chat(
        self,
        model: str,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        self._need_token()
        turns = list(messages or [])
        if prompt:
            turns.append({"role": "user", "content": prompt})
        if not turns:
            raise ToolError("chat needs a prompt or messages")
        provider, shape = await self._provider_of(model)
        body = chat_body(shape, provider, model, turns, system, max_tokens, temperature)
        body.update(extra or {})
        body.pop("stream", None)  # one answer, not an event stream
        answer = await self._relay(self.relay.request(None, body))
        text = extract_text(answer)
        if text:
            return self.secrets.text(text)
        dumped = json.dumps(self.secrets.scrub(answer), ensure_ascii=False)
        return f"(the answer carries no text) {dumped}"

    @_tool
    async def request(
        self,
        path: str,
        method: str = "GET",
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        verb = method.upper()
        if verb not in _METHODS:
            raise ToolError(f"method must be one of {', '.join(_METHODS)}")
        if not path.startswith("/") or path.startswith("//") or "\\" in path:
            raise ToolError(
                'path must be a path on the relay starting with "/", e.g. "/keys" '
                'or "/relay/openai/v1/models"'
            )
        if isinstance(body, dict) and isinstance(body.get("key"), str):
            self.secrets.add(body["key"])
        data = await self._relay(self.relay.request(path, body, verb, params=query))
        route = path.split("?", 1)[0].rstrip("/")
        token = data.get("token") if isinstance(data, dict) else None
        if verb == "POST" and route == "/tokens/rotate" and isinstance(token, str):
            saved_to = self._adopt(token, "POST /tokens/rotate")
            result = self._result(data)
            result["note"] = "This session now uses the new token. " + self._where(saved_to)
            return result
        if (verb, route) in (("POST", "/tokens/revoke"), ("DELETE", "/users")):
            self._forget()
        return self._result(data)

    @_tool
    async def usage(self, app_id: str | None = None) -> dict[str, Any]:
        if app_id is None:
            self._need_token()
            return self._result(await self._relay(self.relay.stats()))
        secret = self.config.app_secret
        if not secret:
            raise ToolError(
                "usage for an app (GET /stats/{app_id}) needs the relay's "
                "APP_SECRET in RELAY_APP_SECRET"
            )
        path = f"/stats/{quote(app_id, safe='')}"
        headers = {"authorization": f"Bearer {secret}"}
        data = await self._relay(self.relay.request(path, method="GET", headers=headers))
        return self._result(data)


# --- the server ----------------------------------------------------------------------
_INSTRUCTIONS = """\
Tools for a byok-relay server: it keeps each user's own AI provider keys (encrypted) and
relays requests to the providers with them. Typical flow: health -> register (only when no
token is configured) -> store_key -> chat (model "provider/model", e.g. "openai/gpt-4o-mini",
"anthropic/claude-3-5-haiku-latest", "google/gemini-2.0-flash") -> usage. Tokens and keys are
never shown back. Any other relay route: request (see GET /openapi.json)."""

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)


def build_server(tools: RelayTools) -> MCPServer:
    server = MCPServer(
        "byok-relay",
        title="byok-relay",
        instructions=_INSTRUCTIONS,
        version=__version__,
        log_level="INFO",
    )

    @server.tool(annotations=_READ)
    async def health(
        deep: Annotated[bool, Field(description="also check the database and key custody")] = False,
    ) -> dict[str, Any]:
        """Check that the relay is up (GET /health; deep=true also checks its database)."""
        return await tools.health(deep)

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
    async def register(
        app_id: Annotated[
            str | None, Field(description="the app's id (default RELAY_APP_ID or byok-relay-mcp)")
        ] = None,
        replace: Annotated[
            bool,
            Field(
                description="register although this session has a token, and switch to the new user"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Create a relay user (POST /users) and use its token for this session's calls. The
        token is never shown: only a masked prefix, and where it was saved (RELAY_TOKEN_FILE)."""
        return await tools.register(app_id, replace)

    @server.tool(annotations=ToolAnnotations(idempotent_hint=True, open_world_hint=False))
    async def store_key(
        provider: Annotated[
            str,
            Field(
                description='provider name, e.g. "openai", "anthropic", '
                '"google", "openai-compatible"'
            ),
        ],
        key: Annotated[str, Field(description="the user's own API key for that provider")],
        base_url: Annotated[
            str | None,
            Field(
                description="upstream base URL, only for providers taking one (openai-compatible)"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Store or replace the user's key for a provider (POST /keys/{provider}). The relay
        encrypts it and never returns it."""
        return await tools.store_key(provider, key, base_url)

    @server.tool(annotations=_READ)
    async def list_keys() -> dict[str, Any]:
        """Which providers have a stored key (GET /keys): names and last-4 hints, never keys."""
        return await tools.list_keys()

    @server.tool(
        annotations=ToolAnnotations(
            destructive_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    async def delete_key(
        provider: Annotated[str, Field(description="the provider whose key to forget")],
    ) -> dict[str, Any]:
        """Forget the user's key for a provider (DELETE /keys/{provider})."""
        return await tools.delete_key(provider)

    @server.tool(annotations=ToolAnnotations(open_world_hint=True))
    async def chat(
        model: Annotated[
            str,
            Field(
                description='"provider/model" (e.g. "openai/gpt-4o-mini", '
                '"anthropic/claude-3-5-haiku-latest", "google/gemini-2.0-'
                'flash") or a bare name the relay routes (gpt-*, claude-*, '
                "gemini-*; see GET /models)"
            ),
        ],
        prompt: Annotated[str | None, Field(description="the user message")] = None,
        messages: Annotated[
            list[dict[str, Any]] | None,
            Field(
                description="earlier turns as "
                '[{"role": "user"|"assistant", "content": "..."}], before prompt'
            ),
        ] = None,
        system: Annotated[str | None, Field(description="system instructions")] = None,
        max_tokens: Annotated[
            int | None,
            Field(
                description="answer length limit (Anthropic "
                f"default {ANTHROPIC_DEFAULT_MAX_TOKENS})",
                gt=0,
            ),
        ] = None,
        temperature: Annotated[float | None, Field(ge=0)] = None,
        extra: Annotated[
            dict[str, Any] | None,
            Field(description="more fields for the provider's own request body, merged in last"),
        ] = None,
    ) -> str:
        """Ask a model through the relay's unified route (POST /relay) with the user's stored
        key, and return the answer's text (OpenAI, Anthropic and Gemini answers alike). The
        body is built in the provider's own format."""
        return await tools.chat(model, prompt, messages, system, max_tokens, temperature, extra)

    @server.tool(annotations=ToolAnnotations(open_world_hint=True))
    async def request(
        path: Annotated[
            str,
            Field(description='a relay path, e.g. "/models", "/budget", "/relay/openai/v1/models"'),
        ],
        method: Annotated[
            Literal["GET", "POST", "PUT", "PATCH", "DELETE"], Field(description="HTTP method")
        ] = "GET",
        body: Annotated[Any, Field(description="JSON request body")] = None,
        query: Annotated[dict[str, str] | None, Field(description="query parameters")] = None,
    ) -> dict[str, Any]:
        """Call any relay route with the session's token, JSON in and out (an answer that is
        not a JSON object comes back as {"result": ...}). Tokens in answers are masked."""
        return await tools.request(path, method, body, query)

    @server.tool(annotations=_READ)
    async def usage(
        app_id: Annotated[
            str | None,
            Field(
                description="an app's aggregate instead of the caller's (needs RELAY_APP_SECRET)"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """The caller's usage from the relay's request log (GET /stats): totals, last 7/30
        days, errors, providers, top models, input/output tokens."""
        return await tools.usage(app_id)

    return server


async def _run(config: McpConfig) -> None:
    tools = RelayTools(config)
    server = build_server(tools)
    scheme_host = urlsplit(config.relay_url)
    if scheme_host.scheme == "http" and scheme_host.hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        log.warning("RELAY_URL is plain http to a remote host: the token travels unencrypted")
    log.info(
        "byok-relay mcp %s: relay %s, token: %s", __version__, config.relay_url, config.token_source
    )
    try:
        await server.run_stdio_async()
    finally:
        await tools.close()


def serve_stdio(environ: Mapping[str, str] | None = None) -> int:
    """Run the MCP server on stdin/stdout until the client closes stdin."""
    # Plain one-line records on stderr (stdout is the protocol). Configured before the SDK's
    # own basicConfig, which would pick a rich handler that wraps long lines when present.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = McpConfig.from_env(os.environ if environ is None else environ)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(config))
    return 0
