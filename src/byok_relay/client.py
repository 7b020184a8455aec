"""Async Python client for a byok-relay server (Team/B2B pattern).

A backend that serves many end users keeps one relay token per user (registered with the
app's ``APP_SECRET`` when the relay requires one) and sends AI requests through the relay on
their behalf; the users' provider keys never touch the backend.

Example::

    async with RelayClient("https://relay.example.com", app_id="acme", app_secret=secret) as relay:
        token = await relay.register()              # keep it with your user record
        await relay.store_key("openai", user_key)
        async for event in relay.stream_chat("openai/gpt-4o-mini", messages):
            print(event.text, end="")

    # later, one client (one connection pool) for many users:
    user_relay = relay.for_token(stored_token)
    answer = await user_relay.chat("claude-3-5-haiku-latest", messages, max_tokens=512)

``stream()`` is an async generator: break out of it (or ``aclose()`` it) and the connection is
closed at once, which makes the relay cancel the upstream request.
"""

from __future__ import annotations

import codecs
import json as _json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import aiohttp

__all__ = [
    "TOKEN_HEADER",
    "RelayClient",
    "RelayError",
    "SSEEvent",
    "extract_text",
    "parse_sse",
]

TOKEN_HEADER = "x-relay-token"
_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=300)


class RelayError(Exception):
    """A non-2xx answer from the relay (or a provider's error passed through by it), an
    ``event: error`` inside a stream, or (status 0) a network failure before any answer."""

    def __init__(
        self,
        status: int,
        message: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.headers: dict[str, str] = dict(headers) if headers is not None else {}

    @property
    def request_id(self) -> str | None:
        """The relay's ``X-Relay-Request-Id`` for the failed request, when known."""
        for k, v in self.headers.items():
            if k.lower() == "x-relay-request-id":
                return v
        return None

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"

    def __repr__(self) -> str:
        return f"RelayError(status={self.status!r}, message={self.message!r})"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One Server-Sent Event."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """``data`` parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return _json.loads(self.data)

    def json_or_none(self) -> Any:
        """``data`` parsed as JSON, or ``None`` when it is not JSON."""
        try:
            return _json.loads(self.data)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        """The text delta this event carries (OpenAI-style, Anthropic or Gemini), or ``''``."""
        return extract_text(self.json_or_none())


def _error_message(body: Any, status: int) -> str:
    b = body
    if isinstance(b, list) and b:
        b = b[0]
    if isinstance(b, dict):
        err = b.get("error")
        if isinstance(err, str) and err:
            return err
        if isinstance(err, dict):
            for field in ("message", "type"):
                v = err.get(field)
                if isinstance(v, str) and v:
                    return v
        for field in ("message", "detail"):
            v = b.get(field)
            if isinstance(v, str) and v:
                return v
    if isinstance(b, str) and b.strip():
        return b.strip()[:500]
    return f"HTTP {status}"


def _loads_or_text(text: str) -> Any:
    if not text:
        return None
    try:
        return _json.loads(text)
    except ValueError:
        return text


def extract_text(data: Any) -> str:
    """The text carried by one streamed event's JSON, or by a whole non-streamed answer:
    OpenAI-style chat chunks/completions, Anthropic Messages events/messages, Gemini candidates."""
    if not isinstance(data, dict):
        return ""
    typ = data.get("type")
    if typ == "content_block_delta":
        delta = data.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            return cast(str, delta["text"])
        return ""
    if typ == "message" and isinstance(data.get("content"), list):
        return "".join(
            b["text"]
            for b in data["content"]
            if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    if typ == "response.output_text.delta" and isinstance(data.get("delta"), str):
        return cast(str, data["delta"])
    choices = data.get("choices")
    if isinstance(choices, list) and choices:
        c = choices[0]
        if not isinstance(c, dict):
            return ""
        for container in ("delta", "message"):
            part = c.get(container)
            if isinstance(part, dict) and isinstance(part.get("content"), str):
                return cast(str, part["content"])
        if isinstance(c.get("text"), str):
            return cast(str, c["text"])
        return ""
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        content = candidates[0].get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            return "".join(
                p["text"]
                for p in parts
                if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
            )
    return ""


class _SSEParser:
    """Incremental WHATWG event-stream parser: ``\\n``, ``\\r\\n`` and ``\\r`` line ends (also
    split across chunks), multi-line data, comments, ``event``/``id``/``retry`` fields."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._id: str | None = None
        self._retry: int | None = None
        self._ready: list[SSEEvent] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += self._decoder.decode(chunk)
        if self._first and self._buf:
            self._buf = self._buf.removeprefix("\ufeff")
            self._first = False
        self._drain(final=False)
        return self._take()

    def close(self) -> list[SSEEvent]:
        self._buf += self._decoder.decode(b"", final=True)
        if self._first:
            self._buf = self._buf.removeprefix("\ufeff")
        self._drain(final=True)
        if self._buf:
            self._line(self._buf)
            self._buf = ""
        self._line("")  # lenient: dispatch a last event that lacked its blank line
        return self._take()

    def _take(self) -> list[SSEEvent]:
        out, self._ready = self._ready, []
        return out

    def _drain(self, final: bool) -> None:
        buf = self._buf
        n = len(buf)
        start = 0
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n":
                self._line(buf[start:i])
                start = i + 1
            elif ch == "\r":
                if i + 1 < n:
                    self._line(buf[start:i])
                    if buf[i + 1] == "\n":
                        i += 1
                    start = i + 1
                elif final:
                    self._line(buf[start:i])
                    start = n
                else:
                    break  # a lone trailing CR may be the first half of CRLF
            i += 1
        self._buf = buf[start:]

    def _line(self, line: str) -> None:
        if line == "":
            if self._has_data:
                self._ready.append(
                    SSEEvent(
                        event=self._event or "message",
                        data="\n".join(self._data),
                        id=self._id,
                        retry=self._retry,
                    )
                )
            self._event = ""
            self._data = []
            self._has_data = False
            return
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)


async def parse_sse(
    chunks: AsyncIterable[bytes], *, stop_on_done: bool = True
) -> AsyncIterator[SSEEvent]:
    """Parse an event stream from an async iterable of byte chunks (e.g.
    ``response.content.iter_any()``). Stops at ``data: [DONE]`` unless ``stop_on_done`` is false."""
    parser = _SSEParser()
    async for chunk in chunks:
        for ev in parser.feed(chunk):
            if stop_on_done and ev.data == "[DONE]":
                return
            yield ev
    for ev in parser.close():
        if stop_on_done and ev.data == "[DONE]":
            return
        yield ev


class RelayClient:
    """Async client for one relay user (one token) over a shared aiohttp session.

    ``session``: pass your own ``aiohttp.ClientSession`` to share a connection pool (it is then
    not closed by :meth:`close`); otherwise one is created on first use and closed by
    :meth:`close` / ``async with``.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        app_id: str | None = None,
        app_secret: str | None = None,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.app_id = app_id
        self.app_secret = app_secret
        self.expires_at: int | None = None
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout or _DEFAULT_TIMEOUT

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the aiohttp session given to RelayClient is closed")
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def for_token(self, token: str) -> RelayClient:
        """A client for another user's token sharing this client's session (Team/B2B pattern).
        The returned client never closes the shared session."""
        other = RelayClient(
            self.base_url,
            token=token,
            app_id=self.app_id,
            app_secret=self.app_secret,
            session=self._get_session(),
            timeout=self._timeout,
        )
        return other

    # -- plumbing --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @staticmethod
    def _relay_path(path: str | None) -> str:
        """``None`` → ``/relay`` (unified route); ``"openai/v1/chat/completions"`` →
        ``/relay/openai/v1/chat/completions``; a path starting with ``/`` is used as is."""
        if not path:
            return "/relay"
        if path.startswith("/") or path.startswith(("http://", "https://")):
            return path
        return "/relay/" + path

    def _headers(self, extra: Mapping[str, str] | None, auth: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        if auth and self.token:
            headers[TOKEN_HEADER] = self.token
        if extra:
            headers.update(extra)
        return headers

    @staticmethod
    async def _raise_for(resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        try:
            text = await resp.text(errors="replace")
        except (aiohttp.ClientError, UnicodeDecodeError):
            text = ""
        body = _loads_or_text(text)
        raise RelayError(resp.status, _error_message(body, resp.status), body, resp.headers)

    async def _call(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        data: Any = None,
    ) -> Any:
        session = self._get_session()
        kwargs: dict[str, Any] = {"headers": self._headers(headers, auth), "allow_redirects": False}
        if params:
            kwargs["params"] = dict(params)
        if data is not None:
            kwargs["data"] = data
        elif json_body is not None:
            kwargs["json"] = json_body
        try:
            async with session.request(method, self._url(path), **kwargs) as resp:
                await self._raise_for(resp)
                text = await resp.text(errors="replace")
                return _loads_or_text(text)
        except aiohttp.ClientError as exc:
            raise RelayError(0, f"network error talking to the relay: {exc}") from exc

    # -- users and tokens ------------------------------------------------------------------

    async def register(self, app_id: str | None = None) -> str:
        """``POST /users``: create a relay user and keep its token (also returned)."""
        aid = app_id or self.app_id
        if not aid:
            raise ValueError("register() needs an app_id (pass it here or to RelayClient)")
        headers = {"authorization": f"Bearer {self.app_secret}"} if self.app_secret else None
        data = await self._call("POST", "/users", {"app_id": aid}, headers=headers, auth=False)
        return self._take_token(data, "POST /users")

    def _take_token(self, data: Any, route: str) -> str:
        """Keep the token (and its expiry) from a {token, expires_at} answer."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            raise RelayError(200, f"relay answered {route} without a token", data)
        self.token = token
        exp = data.get("expires_at")
        self.expires_at = int(exp) if isinstance(exp, int | float) else None
        return token

    async def ensure_token(self) -> str:
        """The current token, registering first when there is none."""
        if self.token:
            return self.token
        return await self.register()

    async def rotate_token(self) -> str:
        """``POST /tokens/rotate``: new token for the same user (keys kept); the old one dies."""
        data = await self._call("POST", "/tokens/rotate")
        return self._take_token(data, "POST /tokens/rotate")

    async def revoke_token(self, token_id: str | None = None) -> Any:
        """With a scoped token's id: ``DELETE /tokens/{id}``. Without: ``POST
        /tokens/revoke``, kill the current token (and its scoped tokens) and forget it."""
        if token_id is not None:
            return await self._call("DELETE", f"/tokens/{quote(token_id, safe='')}")
        data = await self._call("POST", "/tokens/revoke")
        self.token = None
        self.expires_at = None
        return data

    async def delete_user(self) -> Any:
        """``DELETE /users``: erase the user, every key and their request log; forget the token."""
        data = await self._call("DELETE", "/users")
        self.token = None
        self.expires_at = None
        return data

    # -- spend control (SPEC §9) --------------------------------------------------------

    async def create_scoped_token(
        self,
        *,
        label: str | None = None,
        providers: list[str] | None = None,
        models: list[str] | None = None,
        origins: list[str] | None = None,
        ips: list[str] | None = None,
        ttl_s: int | None = None,
        budget: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """``POST /tokens``: a scoped token ({token, id, label, scope, expires_at}) for a
        browser session — the Team/B2B pattern: the backend keeps the relay token and
        hands each session e.g. a 15-minute, origin-bound token. Not stored here."""
        fields = {
            "label": label, "providers": providers, "models": models, "origins": origins,
            "ips": ips, "ttl_s": ttl_s, "budget": dict(budget) if budget else None,
        }  # fmt: skip
        body = {k: v for k, v in fields.items() if v is not None}
        return dict(await self._call("POST", "/tokens", body))

    async def list_tokens(self) -> list[dict[str, Any]]:
        """``GET /tokens``: the live scoped tokens with their usage (never their secrets)."""
        data = await self._call("GET", "/tokens")
        return list(data["tokens"])

    async def get_budget(self) -> dict[str, Any]:
        """``GET /budget``: {budget, usage} of the current window."""
        return dict(await self._call("GET", "/budget"))

    async def set_budget(self, budget: Mapping[str, Any] | None) -> Any:
        """``PUT /budget`` (e.g. {"window": "day", "tokens": 200000}); None: ``DELETE``."""
        if budget is None:
            return await self._call("DELETE", "/budget")
        return await self._call("PUT", "/budget", dict(budget))

    # -- keys ------------------------------------------------------------------------------

    async def store_key(self, provider: str, key: str, base_url: str | None = None) -> Any:
        """``POST /keys/{provider}``: store or replace the user's key (``base_url`` for
        providers that take one, e.g. ``openai-compatible``)."""
        body: dict[str, str] = {"key": key}
        if base_url is not None:
            body["base_url"] = base_url
        return await self._call("POST", f"/keys/{quote(provider, safe='')}", body)

    async def list_keys(self) -> dict[str, Any]:
        """``GET /keys``: ``{"providers": [...], "keys": [{provider, hint, ...}]}``."""
        data = await self._call("GET", "/keys")
        if isinstance(data, dict):
            return cast(dict[str, Any], data)
        return {"providers": [], "keys": []}

    async def delete_key(self, provider: str) -> Any:
        """``DELETE /keys/{provider}``: ``{"ok": true, "deleted": bool}``."""
        return await self._call("DELETE", f"/keys/{quote(provider, safe='')}")

    async def rotate_key(self, provider: str, key: str) -> Any:
        """``POST /keys/{provider}/rotate``: verified with the provider before it replaces."""
        return await self._call("POST", f"/keys/{quote(provider, safe='')}/rotate", {"key": key})

    async def verify_key(self, provider: str) -> Any:
        """``POST /keys/{provider}/verify``: ``{"ok": bool, "status": int}``."""
        return await self._call("POST", f"/keys/{quote(provider, safe='')}/verify")

    async def stats(self) -> Any:
        """``GET /stats``: the caller's usage."""
        return await self._call("GET", "/stats")

    async def models(self) -> Any:
        """``GET /models``: routing table and model allowlist."""
        return await self._call("GET", "/models", auth=False)

    # -- relaying --------------------------------------------------------------------------

    async def request(
        self,
        path: str | None,
        json_body: Any = None,
        method: str = "POST",
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request through the relay and return the parsed JSON answer (text when
        the answer is not JSON). ``path``: ``None`` → ``POST /relay`` (unified route);
        ``"openai/v1/chat/completions"`` → ``/relay/openai/v1/chat/completions``; ``"/x"`` as is."""
        return await self._call(
            method, self._relay_path(path), json_body, headers=headers, params=params
        )

    async def stream(
        self,
        path: str | None,
        json_body: Any = None,
        method: str = "POST",
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        stop_on_done: bool = True,
        raise_on_error: bool = True,
    ) -> AsyncGenerator[SSEEvent, None]:
        """Send a streaming request and yield the answer's SSE events as they arrive.

        A JSON (non-SSE) answer is yielded as one ``message`` event. An ``event: error`` raises
        :class:`RelayError` (unless ``raise_on_error`` is false). Stopping early (``break``,
        ``aclose()``, cancellation) closes the connection so the relay cancels upstream."""
        session = self._get_session()
        hdrs = {"accept": "text/event-stream"}
        hdrs.update(self._headers(headers, auth=True))
        kwargs: dict[str, Any] = {"headers": hdrs, "allow_redirects": False}
        if params:
            kwargs["params"] = dict(params)
        if json_body is not None:
            kwargs["json"] = json_body
        try:
            resp = await session.request(method, self._url(self._relay_path(path)), **kwargs)
        except aiohttp.ClientError as exc:
            raise RelayError(0, f"network error talking to the relay: {exc}") from exc
        completed = False
        try:
            await self._raise_for(resp)
            ctype = resp.headers.get("content-type", "").lower()
            if "text/event-stream" not in ctype:
                yield SSEEvent(data=await resp.text(errors="replace"))
                completed = True
                return
            async for ev in parse_sse(resp.content.iter_any(), stop_on_done=stop_on_done):
                if raise_on_error and ev.event == "error":
                    body = ev.json_or_none()
                    raise RelayError(
                        502,
                        _error_message(body if body is not None else ev.data, 502),
                        body if body is not None else ev.data,
                        resp.headers,
                    )
                yield ev
            completed = resp.content.at_eof()
        except aiohttp.ClientError as exc:
            raise RelayError(0, f"stream from the relay broke: {exc}") from exc
        finally:
            if completed:
                resp.release()
            else:
                resp.close()  # drop the connection: the relay cancels the upstream request

    async def chat(self, model: str, messages: list[Any] | None = None, **extra: Any) -> Any:
        """Non-streamed request through the unified route ``POST /relay``; ``extra`` fields pass
        through unchanged (``max_tokens`` for Anthropic, ``contents`` for Gemini, …)."""
        body: dict[str, Any] = {"model": model, **extra}
        if messages is not None:
            body["messages"] = messages
        return await self.request(None, body)

    def stream_chat(
        self, model: str, messages: list[Any] | None = None, **extra: Any
    ) -> AsyncGenerator[SSEEvent, None]:
        """Streamed request through ``POST /relay`` with ``stream: true``."""
        body: dict[str, Any] = {"model": model, **extra, "stream": True}
        if messages is not None:
            body["messages"] = messages
        return self.stream(None, body)
