"""Mock AI providers for the test-suite.

``MockProvider(flavor)`` runs a small aiohttp server in a background thread (its own event
loop) on ``127.0.0.1`` and an ephemeral port.  Each flavor speaks the real wire format of a
provider family, closely enough that the official SDKs accept it (see
``tests/test_mock_providers.py``):

``openai``
    ``POST /v1/chat/completions`` (JSON or SSE ``chat.completion.chunk`` + ``[DONE]``),
    ``/v1/completions``, ``/v1/embeddings`` (float or base64), ``/v1/responses`` (JSON or
    SSE), ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/audio/speech`` (binary),
    ``POST /v1/audio/transcriptions`` and ``/translations`` (multipart in, JSON out),
    ``/v1/images/generations``, ``/v1/moderations``, plus OpenRouter's ``GET /api/v1/key``
    and Cohere's native ``POST /v2/chat`` (JSON or its SSE events).  The
    same routes answer without ``/v1`` and under ``/openai``, ``/api``, ``/inference`` and
    ``/compatibility`` (groq, openrouter, fireworks, cohere style), so one mock serves every
    OpenAI-compatible provider.
``anthropic``
    ``POST /v1/messages`` (JSON or the real SSE event sequence),
    ``POST /v1/messages/count_tokens``, ``GET /v1/models``, ``GET /v1/models/{id}``.
``gemini``
    ``POST /{v1,v1beta}/models/{model}:generateContent``, ``:streamGenerateContent`` (SSE
    with ``?alt=sse``, a streamed JSON array without), ``:countTokens``, ``:embedContent``,
    ``GET /{v1,v1beta}/models`` and ``/models/{model}``.
``generic``
    Echoes any request as JSON ``{method, path, query, headers, body_len}``;
    ``POST /v1/text-to-speech/{voice}[/stream]`` and ``/v1/speak`` answer binary audio;
    ``POST /v1/listen`` answers the byte length and sha256 of the raw body.

Behaviour switches are chosen by the request's ``model`` (JSON body or multipart field;
for gemini the model in the path), or by a ``mock=`` query parameter (any flavor; the only
way for ``generic``).  A ``provider/`` prefix is ignored (``openai/mock-slow`` works).
See ``SWITCHES``.  A credential (``Authorization``, ``x-api-key``, ``x-goog-api-key``,
``xi-api-key``, ``key=``) containing ``mock-401`` or ``mock-429`` triggers that error on any
route, which lets key verification / rotation tests use a "bad" key.

Every response carries ``x-request-id: req_mock_<n>`` (``request-id`` too for anthropic),
``x-mock-flavor``, a ``set-cookie`` (so tests can assert the relay strips it) and the
provider's usual rate-limit headers.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

Flavor = Literal["openai", "anthropic", "gemini", "generic"]
FLAVORS: Final[tuple[Flavor, ...]] = ("openai", "anthropic", "gemini", "generic")

# --- behaviour switches ---------------------------------------------------------------
#: Streams SLOW_EVENTS body events SLOW_INTERVAL_S apart (send times in ``.streams``).
MOCK_SLOW: Final = "mock-slow"
#: Streams a body event every LONG_INTERVAL_S for LONG_DURATION_S (disconnect tests).
MOCK_LONG: Final = "mock-long"
#: The provider's 401 error JSON.
MOCK_401: Final = "mock-401"
#: 429 with ``Retry-After: 7``, the provider's rate-limit headers and error JSON.
MOCK_429: Final = "mock-429"
#: Never sends response headers; sleeps until cancelled (``.hang_cancellations``).
MOCK_HANG: Final = "mock-hang"
#: Sends BREAK_AFTER_EVENTS SSE events then aborts the TCP connection.
MOCK_BREAK: Final = "mock-break"
#: ``302`` with ``Location: REDIRECT_LOCATION``.
MOCK_REDIRECT: Final = "mock-redirect"
#: Answers a ``stream: true`` request with plain ``application/json``.
MOCK_JSON_FOR_STREAM: Final = "mock-json-for-stream"
#: A ~2 MiB JSON answer (the reply text is BIG_TEXT).
MOCK_BIG: Final = "mock-big"
#: 200 JSON whose Content-Length promises more bytes than are sent, then a TCP abort.
MOCK_SHORT_BODY: Final = "mock-short-body"
SWITCHES: Final = frozenset(
    {
        MOCK_SLOW,
        MOCK_LONG,
        MOCK_401,
        MOCK_429,
        MOCK_HANG,
        MOCK_BREAK,
        MOCK_REDIRECT,
        MOCK_JSON_FOR_STREAM,
        MOCK_BIG,
        MOCK_SHORT_BODY,
    }
)
_STREAMING_SWITCHES: Final = frozenset({MOCK_SLOW, MOCK_LONG, MOCK_BREAK})

SLOW_EVENTS: Final = 30
SLOW_INTERVAL_S: Final = 0.02
LONG_INTERVAL_S: Final = 0.05
LONG_DURATION_S: Final = 60.0
BREAK_AFTER_EVENTS: Final = 3
RETRY_AFTER_S: Final = "7"
REDIRECT_LOCATION: Final = "http://127.0.0.1:1/evil"
MOCK_COOKIE: Final = "mock_session=mock-cookie-value; Path=/; HttpOnly"

REPLY_TOKENS: Final[tuple[str, ...]] = ("Hello", "!", " This", " is", " a", " mock", " reply", ".")
REPLY_TEXT: Final = "".join(REPLY_TOKENS)
BIG_TEXT: Final = ("0123456789abcdefghijklmnopqrstuvwxyz-BIG-" * 52000)[: 2 * 1024 * 1024]

#: Fake MP3 bytes: an ID3 tag, an MPEG frame sync and every byte value (0x00 .. 0xff).
AUDIO_BYTES: Final = (
    b"ID3\x04\x00\x00\x00\x00\x00\x00"
    + b"\xff\xfb\x90\x64\x00"
    + bytes(range(256)) * 16
    + b"\x00\xff"
)

EMBEDDING_DIM: Final = 8
_CREATED: Final = 1_700_000_000

OPENAI_MODELS: Final = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "tts-1", "whisper-1")
ANTHROPIC_MODELS: Final = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
)
GEMINI_MODELS: Final = (
    ("gemini-2.0-flash", "Gemini 2.0 Flash"),
    ("gemini-1.5-pro", "Gemini 1.5 Pro"),
    ("text-embedding-004", "Text Embedding 004"),
)


# --- recorded data ---------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedRequest:
    """One request as the mock received it."""

    index: int
    request_id: str
    method: str
    path: str  # raw request path, query excluded, exactly as sent (not decoded)
    raw_query: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    body: bytes
    received_at: float  # time.monotonic()
    client_port: int | None  # the peer's TCP port: one value per upstream connection

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8")

    def multipart(self) -> dict[str, tuple[str | None, bytes]]:
        """Parts of a multipart/form-data body: ``{name: (filename, content)}``."""
        return parse_multipart(self.headers.get("content-type", ""), self.body)


@dataclass
class StreamRecord:
    """One streaming response sent by the mock."""

    request_index: int
    path: str
    switch: str | None
    started_at: float
    sent_at: list[float] = field(default_factory=list)  # time.monotonic() as each event is sent
    completed: bool = False  # every event and the end of the body were sent
    disconnected: bool = False  # the client went away mid-stream
    broken: bool = False  # mock-break aborted the connection on purpose

    @property
    def events_sent(self) -> int:
        return len(self.sent_at)


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    if not content_type.lower().startswith("multipart/"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return parts
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return parts


# --- wire helpers --------------------------------------------------------------------
def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sse(data: Any, event: str | None = None, *, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else _dumps(data)
    text = (f"event: {event}\n" if event else "") + f"data: {payload}"
    return (text + ("\r\n\r\n" if crlf else "\n\n")).encode()


def _json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_dumps(obj).encode(),
        content_type="application/json",
        headers=headers,
    )


def _token_estimate(body: bytes) -> int:
    return max(1, len(body) // 4)


@dataclass
class _Stream:
    """A stream description: ``head`` events, ``count`` body events, ``tail`` events."""

    content_type: str
    body: Callable[[int, bool], bytes]  # (index, is_last) -> event bytes
    count: int
    head: list[bytes] = field(default_factory=list)
    tail: list[bytes] | Callable[[], list[bytes]] = field(default_factory=list)
    interval: float = 0.0


@dataclass
class _Call:
    request: web.Request
    record: RecordedRequest
    payload: Any  # parsed JSON body, or None
    form: dict[str, tuple[str | None, bytes]]
    switch: str | None
    request_id: str

    @property
    def wants_stream(self) -> bool:
        return isinstance(self.payload, dict) and self.payload.get("stream") is True

    @property
    def model(self) -> str:
        if isinstance(self.payload, dict) and isinstance(self.payload.get("model"), str):
            return str(self.payload["model"])
        return "mock-model"


_Handler = Callable[[_Call], Awaitable[web.StreamResponse]]
# web.RequestKey exists from aiohttp 3.12 on; plain str keys warn there
_REQUEST_ID_KEY: Any = (
    web.RequestKey("mock_request_id", str) if hasattr(web, "RequestKey") else "mock_request_id"
)
_T = TypeVar("_T")

_OPENAI_PREFIX = re.compile(r"^(?:/openai|/api|/inference|/compatibility)?(?:/v1)?(?=/)")
_GEMINI_ROUTE = re.compile(
    r"^/(?:v1|v1beta|v1alpha)/(models|tunedModels)(?:/([^:/]+))?(?::(\w+))?$"
)


class MockProvider:
    """A mock provider server running in a background thread."""

    def __init__(self, flavor: Flavor, host: str = "127.0.0.1", port: int = 0) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
        self.flavor: Flavor = flavor
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._streams: list[StreamRecord] = []
        self._disconnects = 0
        self._active_streams = 0
        self._hang_cancellations = 0
        self._active_hangs = 0
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"mock {self.flavor} is not started")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> MockProvider:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mock-{self.flavor}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"mock {self.flavor} did not start within 10 s")
        if failure:
            raise RuntimeError(f"mock {self.flavor} failed to start") from failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._add_common_headers)
        # handler_cancellation: a client disconnect cancels the handler task, which is how
        # the mock notices (and counts) cancelled streams and hangs.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        port = server.sockets[0].getsockname()[1]
        self._url = f"http://{self.host}:{port}"

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> MockProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MockProvider({self.flavor!r}, url={self._url!r})"

    # -- recorded data (thread-safe snapshots) ----------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError(f"mock {self.flavor} has received no request")
            return self._requests[-1]

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.path.endswith(path_suffix) and (method is None or r.method == method.upper())
        ]

    @property
    def streams(self) -> list[StreamRecord]:
        with self._lock:
            return [replace(s, sent_at=list(s.sent_at)) for s in self._streams]

    @property
    def disconnects(self) -> int:
        """Streaming responses whose client went away mid-stream."""
        with self._lock:
            return self._disconnects

    @property
    def active_streams(self) -> int:
        with self._lock:
            return self._active_streams

    @property
    def hang_cancellations(self) -> int:
        """``mock-hang`` requests whose client gave up (the handler was cancelled)."""
        with self._lock:
            return self._hang_cancellations

    @property
    def active_hangs(self) -> int:
        with self._lock:
            return self._active_hangs

    def clear(self) -> None:
        """Forget recorded requests, streams and counters (live counters are kept)."""
        with self._lock:
            self._requests.clear()
            self._streams.clear()
            self._disconnects = 0
            self._hang_cancellations = 0

    def wait_for(
        self, predicate: Callable[[], _T], timeout: float = 5.0, interval: float = 0.005
    ) -> _T:
        """Poll ``predicate()`` until it is truthy and return its value.

        Raises AssertionError after ``timeout`` seconds.  Blocking: from async tests use
        ``await mock.async_wait_for(...)``.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"mock {self.flavor}: condition not met within {timeout} s "
                    f"(requests={len(self.requests)}, active_streams={self.active_streams}, "
                    f"disconnects={self.disconnects})"
                )
            time.sleep(interval)

    async def async_wait_for(
        self, predicate: Callable[[], _T], timeout: float = 5.0, interval: float = 0.005
    ) -> _T:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"mock {self.flavor}: condition not met within {timeout} s")
            await asyncio.sleep(interval)

    # -- request handling -------------------------------------------------------------
    async def _add_common_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        request_id = request.get(_REQUEST_ID_KEY, "req_mock_0")
        headers = response.headers
        headers.setdefault("x-request-id", request_id)
        headers.setdefault("x-mock-flavor", self.flavor)
        if "set-cookie" not in headers:
            headers.add("Set-Cookie", MOCK_COOKIE)
        if self.flavor == "openai":
            headers.setdefault("x-ratelimit-limit-requests", "10000")
            headers.setdefault("x-ratelimit-remaining-requests", "9999")
            headers.setdefault("x-ratelimit-reset-requests", "6ms")
            headers.setdefault("openai-processing-ms", "1")
        elif self.flavor == "anthropic":
            headers.setdefault("request-id", request_id)
            headers.setdefault("anthropic-ratelimit-requests-limit", "4000")
            headers.setdefault("anthropic-ratelimit-requests-remaining", "3999")
            headers.setdefault("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:00Z")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        index = next(self._counter)
        request_id = f"req_mock_{index}"
        request[_REQUEST_ID_KEY] = request_id
        body = await request.read()
        target = request.message.path
        path, _, raw_query = target.partition("?")
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record = RecordedRequest(
            index=index,
            request_id=request_id,
            method=request.method,
            path=path,
            raw_query=raw_query,
            query=MultiDictProxy(MultiDict(parse_qsl(raw_query, keep_blank_values=True))),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            received_at=time.monotonic(),
            client_port=peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else None,
        )
        with self._lock:
            self._requests.append(record)

        payload: Any = None
        content_type = request.headers.get("content-type", "")
        if body and "json" in content_type.lower():
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                payload = None
        form = parse_multipart(content_type, body)
        call = _Call(request, record, payload, form, None, request_id)

        handler, path_model = self._route(request.method, path)
        call.switch = self._switch(call, path_model)
        if handler is None:
            return self._not_found(call)
        if call.switch == MOCK_401:
            return self._error(call, 401)
        if call.switch == MOCK_429:
            return self._error(call, 429)
        if call.switch == MOCK_REDIRECT:
            return web.Response(status=302, headers={"Location": REDIRECT_LOCATION}, text="")
        if call.switch == MOCK_HANG:
            return await self._hang()
        if call.switch == MOCK_SHORT_BODY:
            return await self._short_body(call)
        return await handler(call)

    async def _short_body(self, call: _Call) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        response.content_length = 1000
        await response.prepare(call.request)
        await response.write(b'{"id": "cut-short", "object": ')
        transport = call.request.transport
        if transport is not None:
            transport.abort()
        return response

    def _switch(self, call: _Call, path_model: str | None) -> str | None:
        candidates: list[str] = []
        for header in ("authorization", "x-api-key", "x-goog-api-key", "xi-api-key"):
            value = call.request.headers.get(header, "")
            for name in (MOCK_401, MOCK_429):
                if name in value:
                    return name
        for key in call.record.query.getall("key", []):
            for name in (MOCK_401, MOCK_429):
                if name in key:
                    return name
        candidates.extend(call.record.query.getall("mock", []))
        if path_model:
            candidates.append(path_model)
        if isinstance(call.payload, dict):
            model = call.payload.get("model")
            if isinstance(model, str):
                candidates.append(model)
        if "model" in call.form:
            candidates.append(call.form["model"][1].decode("utf-8", "replace"))
        for candidate in candidates:
            name = candidate.rsplit("/", 1)[-1].strip()
            if name in SWITCHES:
                return name
        return None

    def _route(self, method: str, path: str) -> tuple[_Handler | None, str | None]:
        if self.flavor == "openai":
            return self._route_openai(method, path), None
        if self.flavor == "anthropic":
            return self._route_anthropic(method, path), None
        if self.flavor == "gemini":
            return self._route_gemini(method, path)
        return self._route_generic(method, path), None

    async def _hang(self) -> web.StreamResponse:
        with self._lock:
            self._active_hangs += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            with self._lock:
                self._hang_cancellations += 1
            raise
        finally:
            with self._lock:
                self._active_hangs -= 1
        raise AssertionError("unreachable")  # pragma: no cover

    # -- streaming engine ---------------------------------------------------------------
    def _stream_shape(self, call: _Call, stream: _Stream) -> _Stream:
        """Apply mock-slow / mock-long to a normal stream description."""
        if call.switch == MOCK_SLOW:
            stream.count, stream.interval = SLOW_EVENTS, SLOW_INTERVAL_S
        elif call.switch == MOCK_LONG:
            stream.count, stream.interval = int(LONG_DURATION_S / LONG_INTERVAL_S), LONG_INTERVAL_S
        elif call.switch == MOCK_BREAK:
            stream.count = max(stream.count, BREAK_AFTER_EVENTS + 5)
        return stream

    async def _send_stream(self, call: _Call, stream: _Stream) -> web.StreamResponse:
        stream = self._stream_shape(call, stream)
        record = StreamRecord(call.record.index, call.record.path, call.switch, time.monotonic())
        response = web.StreamResponse(
            status=200, headers={"Content-Type": stream.content_type, "Cache-Control": "no-cache"}
        )
        break_after = BREAK_AFTER_EVENTS if call.switch == MOCK_BREAK else None
        with self._lock:
            self._streams.append(record)
            self._active_streams += 1

        async def send(chunk: bytes) -> None:
            # stamped just before the write: an event can never arrive before its stamp
            with self._lock:
                record.sent_at.append(time.monotonic())
            await response.write(chunk)
            if break_after is not None and len(record.sent_at) >= break_after:
                with self._lock:
                    record.broken = True
                transport = call.request.transport
                if transport is not None:
                    transport.abort()
                # connection_lost cancels this handler; wait for it
                await asyncio.sleep(3600)

        try:
            await response.prepare(call.request)
            for chunk in stream.head:
                await send(chunk)
            for i in range(stream.count):
                if i and stream.interval:
                    await asyncio.sleep(stream.interval)
                await send(stream.body(i, i == stream.count - 1))
            for chunk in stream.tail() if callable(stream.tail) else stream.tail:
                await send(chunk)
            await response.write_eof()
            with self._lock:
                record.completed = True
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            with self._lock:
                if not record.broken:
                    record.disconnected = True
                    self._disconnects += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            with self._lock:
                self._active_streams -= 1
        return response

    def _generic_stream(self) -> _Stream:
        return _Stream(
            content_type="text/event-stream",
            body=lambda i, _last: _sse({"n": i, "text": f"tok{i} "}),
            count=len(REPLY_TOKENS),
            tail=[_sse({"done": True}, "done")],
        )

    def _maybe_stream(
        self, call: _Call, make_stream: Callable[[], _Stream] | None = None
    ) -> Awaitable[web.StreamResponse] | None:
        """A streaming answer when the switch forces one on a non-streaming route."""
        if call.switch in _STREAMING_SWITCHES:
            return self._send_stream(call, make_stream() if make_stream else self._generic_stream())
        return None

    # -- errors ---------------------------------------------------------------------------
    def _error(self, call: _Call, status: int) -> web.Response:
        headers: dict[str, str] = {}
        if status == 429:
            headers["Retry-After"] = RETRY_AFTER_S
        body: Any
        error: dict[str, Any]
        if self.flavor == "openai":
            if status == 401:
                body = {
                    "error": {
                        "message": "Incorrect API key provided: sk-test-****. You can find your "
                        "API key at https://platform.openai.com/account/api-keys.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
            else:
                headers["x-ratelimit-remaining-requests"] = "0"
                headers["x-ratelimit-reset-requests"] = "7s"
                body = {
                    "error": {
                        "message": "Rate limit reached for requests. Please try again in 7s.",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                }
        elif self.flavor == "anthropic":
            if status == 401:
                error = {"type": "authentication_error", "message": "invalid x-api-key"}
            else:
                headers["anthropic-ratelimit-requests-remaining"] = "0"
                headers["anthropic-ratelimit-requests-reset"] = "2030-01-01T00:00:07Z"
                error = {
                    "type": "rate_limit_error",
                    "message": "This request would exceed the rate limit for your organization.",
                }
            body = {"type": "error", "error": error}
        elif self.flavor == "gemini":
            if status == 401:
                error = {
                    "code": 401,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "UNAUTHENTICATED",
                }
            else:
                error = {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                }
            body = {"error": error}
        else:
            if status == 429:
                headers["x-ratelimit-remaining"] = "0"
            body = {
                "error": {
                    "status": "invalid_api_key" if status == 401 else "too_many_requests",
                    "message": "Invalid API key" if status == 401 else "Too many requests",
                }
            }
        return _json_response(body, status, headers)

    def _not_found(self, call: _Call) -> web.Response:
        method, path = call.record.method, call.record.path
        body: Any
        if self.flavor == "openai":
            body = {
                "error": {
                    "message": f"Invalid URL ({method} {path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        elif self.flavor == "anthropic":
            body = {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}
        elif self.flavor == "gemini":
            body = {
                "error": {
                    "code": 404,
                    "message": f"{method} {path} not found",
                    "status": "NOT_FOUND",
                }
            }
        else:
            body = {"error": "not found"}
        return _json_response(body, 404)

    # ==================================================================================
    # openai
    # ==================================================================================
    def _route_openai(self, method: str, path: str) -> _Handler | None:
        match = _OPENAI_PREFIX.match(path)
        rest = path[match.end() :] if match else path
        routes: dict[tuple[str, str], _Handler] = {
            ("POST", "/chat/completions"): self._openai_chat,
            ("POST", "/completions"): self._openai_completions,
            ("POST", "/embeddings"): self._openai_embeddings,
            ("POST", "/responses"): self._openai_responses,
            ("GET", "/models"): self._openai_models,
            ("POST", "/audio/speech"): self._openai_speech,
            ("POST", "/audio/transcriptions"): self._openai_transcription,
            ("POST", "/audio/translations"): self._openai_transcription,
            ("POST", "/images/generations"): self._openai_images,
            ("POST", "/moderations"): self._openai_moderations,
            ("GET", "/key"): self._openrouter_key,  # OpenRouter: GET /api/v1/key
            ("POST", "/v2/chat"): self._cohere_chat,  # Cohere's native v2 chat
        }
        handler = routes.get((method, rest))
        if handler is None and method == "GET" and rest.startswith("/models/"):
            handler = self._openai_model
        return handler

    def _openai_usage(self, call: _Call, completion_tokens: int) -> dict[str, int]:
        prompt = _token_estimate(call.record.body)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    async def _openai_chat(self, call: _Call) -> web.StreamResponse:
        completion_id = f"chatcmpl-mock{call.record.index}"
        model = call.model
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT
        if (call.wants_stream or call.switch in _STREAMING_SWITCHES) and call.switch not in (
            MOCK_JSON_FOR_STREAM,
            MOCK_BIG,
        ):
            options = call.payload.get("stream_options") if isinstance(call.payload, dict) else None
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            tokens = list(REPLY_TOKENS)

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                obj: dict[str, Any] = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": _CREATED,
                    "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
                if include_usage:
                    obj["usage"] = None
                return obj

            def body(i: int, _last: bool) -> bytes:
                token = tokens[i] if i < len(tokens) else f"tok{i} "
                return _sse(chunk({"content": token}))

            stream = _Stream(
                content_type="text/event-stream; charset=utf-8",
                head=[_sse(chunk({"role": "assistant", "content": "", "refusal": None}))],
                body=body,
                count=len(tokens),
            )
            stream = self._stream_shape(call, stream)
            tail = [_sse(chunk({}, "stop"))]
            if include_usage:
                final = chunk({})
                final["choices"] = []
                final["usage"] = self._openai_usage(call, stream.count)
                tail.append(_sse(final))
            tail.append(b"data: [DONE]\n\n")
            stream.tail = tail
            return await self._send_stream(call, stream)
        return _json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._openai_usage(call, len(REPLY_TOKENS)),
                "service_tier": "default",
            }
        )

    async def _openai_completions(self, call: _Call) -> web.StreamResponse:
        completion_id = f"cmpl-mock{call.record.index}"
        model = call.model
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT

        def obj(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": _CREATED,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }

        if (call.wants_stream or call.switch in _STREAMING_SWITCHES) and call.switch not in (
            MOCK_JSON_FOR_STREAM,
            MOCK_BIG,
        ):
            tokens = list(REPLY_TOKENS)
            return await self._send_stream(
                call,
                _Stream(
                    content_type="text/event-stream; charset=utf-8",
                    body=lambda i, _last: _sse(
                        obj(tokens[i] if i < len(tokens) else f"tok{i} ", None)
                    ),
                    count=len(tokens),
                    tail=[_sse(obj("", "stop")), b"data: [DONE]\n\n"],
                ),
            )
        result = obj(text, "stop")
        result["usage"] = self._openai_usage(call, len(REPLY_TOKENS))
        return _json_response(result)

    async def _openai_embeddings(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        payload = call.payload if isinstance(call.payload, dict) else {}
        inputs = payload.get("input", "")
        items = (
            inputs
            if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
            else [inputs]
        )
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(items):
            seed = len(_dumps(item))
            vector = [round(((seed + index + k) % 17) / 17 - 0.5, 6) for k in range(EMBEDDING_DIM)]
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = _token_estimate(call.record.body)
        return _json_response(
            {
                "object": "list",
                "data": data,
                "model": call.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _openai_responses(self, call: _Call) -> web.StreamResponse:
        response_id = f"resp_mock{call.record.index}"
        message_id = f"msg_mock{call.record.index}"
        model = call.model
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT
        input_tokens = _token_estimate(call.record.body)

        def response_obj(status: str, output_text: str | None) -> dict[str, Any]:
            output: list[dict[str, Any]] = []
            if output_text is not None:
                output.append(
                    {
                        "type": "message",
                        "id": message_id,
                        "status": "completed",
                        "role": "assistant",
                        "content": [
                            {"type": "output_text", "text": output_text, "annotations": []}
                        ],
                    }
                )
            done = status == "completed"
            return {
                "id": response_id,
                "object": "response",
                "created_at": _CREATED,
                "status": status,
                "error": None,
                "incomplete_details": None,
                "instructions": None,
                "max_output_tokens": None,
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "store": True,
                "temperature": 1.0,
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": len(REPLY_TOKENS),
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + len(REPLY_TOKENS),
                }
                if done
                else None,
                "user": None,
                "metadata": {},
            }

        if (call.wants_stream or call.switch in _STREAMING_SWITCHES) and call.switch not in (
            MOCK_JSON_FOR_STREAM,
            MOCK_BIG,
        ):
            seq = itertools.count()
            tokens = list(REPLY_TOKENS)

            def ev(kind: str, **fields: Any) -> bytes:
                return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

            part = {"type": "output_text", "text": "", "annotations": []}
            item = {
                "type": "message",
                "id": message_id,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            head = [
                ev("response.created", response=response_obj("in_progress", None)),
                ev("response.in_progress", response=response_obj("in_progress", None)),
                ev("response.output_item.added", output_index=0, item=item),
                ev(
                    "response.content_part.added",
                    item_id=message_id,
                    output_index=0,
                    content_index=0,
                    part=part,
                ),
            ]
            sent: list[str] = []

            def body(i: int, _last: bool) -> bytes:
                token = tokens[i] if i < len(tokens) else f"tok{i} "
                sent.append(token)
                return ev(
                    "response.output_text.delta",
                    item_id=message_id,
                    output_index=0,
                    content_index=0,
                    delta=token,
                    logprobs=[],
                )

            stream = self._stream_shape(
                call,
                _Stream(
                    content_type="text/event-stream; charset=utf-8",
                    head=head,
                    body=body,
                    count=len(tokens),
                ),
            )

            def tail_events() -> list[bytes]:
                # built lazily so that the final text holds every token sent
                full = "".join(sent)
                done_part = {"type": "output_text", "text": full, "annotations": []}
                done_item = dict(item, status="completed", content=[done_part])
                return [
                    ev(
                        "response.output_text.done",
                        item_id=message_id,
                        output_index=0,
                        content_index=0,
                        text=full,
                        logprobs=[],
                    ),
                    ev(
                        "response.content_part.done",
                        item_id=message_id,
                        output_index=0,
                        content_index=0,
                        part=done_part,
                    ),
                    ev("response.output_item.done", output_index=0, item=done_item),
                    ev("response.completed", response=response_obj("completed", full)),
                ]

            stream.tail = tail_events
            return await self._send_stream(call, stream)
        return _json_response(response_obj("completed", text))

    async def _openai_models(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        return _json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": _CREATED, "owned_by": "system"}
                    for m in OPENAI_MODELS
                ],
            }
        )

    async def _openai_model(self, call: _Call) -> web.StreamResponse:
        match = _OPENAI_PREFIX.match(call.record.path)
        rest = call.record.path[match.end() :] if match else call.record.path
        model_id = rest[len("/models/") :]
        return _json_response(
            {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "system"}
        )

    async def _openai_speech(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        return web.Response(body=AUDIO_BYTES, content_type="audio/mpeg")

    async def _openai_transcription(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        _filename, content = call.form.get("file", (None, b""))
        return _json_response(
            {
                "text": f"mock transcription of {len(content)} bytes",
                "file_size": len(content),
                "file_sha256": hashlib.sha256(content).hexdigest(),
                "usage": {"type": "duration", "seconds": 1},
            }
        )

    async def _openai_images(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        return _json_response(
            {"created": _CREATED, "data": [{"b64_json": base64.b64encode(AUDIO_BYTES).decode()}]}
        )

    async def _openai_moderations(self, call: _Call) -> web.StreamResponse:
        return _json_response(
            {
                "id": f"modr-mock{call.record.index}",
                "model": call.model,
                "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
            }
        )

    async def _openrouter_key(self, call: _Call) -> web.StreamResponse:
        return _json_response(
            {
                "data": {
                    "label": "sk-or-v1-mock...",
                    "usage": 0,
                    "limit": None,
                    "is_free_tier": False,
                }
            }
        )

    async def _cohere_chat(self, call: _Call) -> web.StreamResponse:
        """Cohere v2 chat (``POST /v2/chat``): its own JSON and SSE event names."""
        chat_id = f"mock-cohere-{call.record.index}"
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT
        input_tokens = _token_estimate(call.record.body)

        def usage(output: int) -> dict[str, Any]:
            units = {"input_tokens": input_tokens, "output_tokens": output}
            return {"billed_units": units, "tokens": units}

        if (call.wants_stream or call.switch in _STREAMING_SWITCHES) and call.switch not in (
            MOCK_JSON_FOR_STREAM,
            MOCK_BIG,
        ):
            tokens = list(REPLY_TOKENS)

            def body(i: int, _last: bool) -> bytes:
                token = tokens[i] if i < len(tokens) else f"tok{i} "
                return _sse(
                    {
                        "type": "content-delta",
                        "index": 0,
                        "delta": {"message": {"content": {"text": token}}},
                    },
                    "content-delta",
                )

            stream = self._stream_shape(
                call,
                _Stream(
                    content_type="text/event-stream",
                    head=[
                        _sse(
                            {
                                "id": chat_id,
                                "type": "message-start",
                                "delta": {"message": {"role": "assistant", "content": []}},
                            },
                            "message-start",
                        ),
                        _sse(
                            {
                                "type": "content-start",
                                "index": 0,
                                "delta": {"message": {"content": {"type": "text", "text": ""}}},
                            },
                            "content-start",
                        ),
                    ],
                    body=body,
                    count=len(tokens),
                ),
            )
            stream.tail = [
                _sse({"type": "content-end", "index": 0}, "content-end"),
                _sse(
                    {
                        "type": "message-end",
                        "delta": {"finish_reason": "COMPLETE", "usage": usage(stream.count)},
                    },
                    "message-end",
                ),
            ]
            return await self._send_stream(call, stream)
        return _json_response(
            {
                "id": chat_id,
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
                "usage": usage(len(REPLY_TOKENS)),
            }
        )

    # ==================================================================================
    # anthropic
    # ==================================================================================
    def _route_anthropic(self, method: str, path: str) -> _Handler | None:
        if method == "POST" and path == "/v1/messages":
            return self._anthropic_messages
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self._anthropic_count_tokens
        if method == "GET" and path == "/v1/models":
            return self._anthropic_models
        if method == "GET" and path.startswith("/v1/models/"):
            return self._anthropic_model
        return None

    async def _anthropic_messages(self, call: _Call) -> web.StreamResponse:
        message_id = f"msg_mock{call.record.index}"
        model = call.model
        input_tokens = _token_estimate(call.record.body)
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT
        if (call.wants_stream or call.switch in _STREAMING_SWITCHES) and call.switch not in (
            MOCK_JSON_FOR_STREAM,
            MOCK_BIG,
        ):
            tokens = list(REPLY_TOKENS)

            def body(i: int, _last: bool) -> bytes:
                token = tokens[i] if i < len(tokens) else f"tok{i} "
                return _sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": token},
                    },
                    "content_block_delta",
                )

            stream = self._stream_shape(
                call,
                _Stream(
                    content_type="text/event-stream; charset=utf-8",
                    head=[
                        _sse(
                            {
                                "type": "message_start",
                                "message": {
                                    "id": message_id,
                                    "type": "message",
                                    "role": "assistant",
                                    "model": model,
                                    "content": [],
                                    "stop_reason": None,
                                    "stop_sequence": None,
                                    "usage": {
                                        "input_tokens": input_tokens,
                                        "cache_creation_input_tokens": 0,
                                        "cache_read_input_tokens": 0,
                                        "output_tokens": 1,
                                    },
                                },
                            },
                            "message_start",
                        ),
                        _sse(
                            {
                                "type": "content_block_start",
                                "index": 0,
                                "content_block": {"type": "text", "text": ""},
                            },
                            "content_block_start",
                        ),
                        _sse({"type": "ping"}, "ping"),
                    ],
                    body=body,
                    count=len(tokens),
                ),
            )
            stream.tail = [
                _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                _sse(
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": stream.count},
                    },
                    "message_delta",
                ),
                _sse({"type": "message_stop"}, "message_stop"),
            ]
            return await self._send_stream(call, stream)
        return _json_response(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": len(REPLY_TOKENS),
                },
            }
        )

    async def _anthropic_count_tokens(self, call: _Call) -> web.StreamResponse:
        return _json_response({"input_tokens": _token_estimate(call.record.body)})

    @staticmethod
    def _anthropic_model_obj(model_id: str, name: str, created: str) -> dict[str, Any]:
        return {"type": "model", "id": model_id, "display_name": name, "created_at": created}

    async def _anthropic_models(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        data = [self._anthropic_model_obj(*m) for m in ANTHROPIC_MODELS]
        return _json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            }
        )

    async def _anthropic_model(self, call: _Call) -> web.StreamResponse:
        model_id = call.record.path[len("/v1/models/") :]
        for known in ANTHROPIC_MODELS:
            if known[0] == model_id:
                return _json_response(self._anthropic_model_obj(*known))
        return _json_response(self._anthropic_model_obj(model_id, model_id, "2025-01-01T00:00:00Z"))

    # ==================================================================================
    # gemini
    # ==================================================================================
    def _route_gemini(self, method: str, path: str) -> tuple[_Handler | None, str | None]:
        match = _GEMINI_ROUTE.match(path)
        if match is None:
            return None, None
        _collection, model, action = match.groups()
        if model is None:
            return (self._gemini_models if method == "GET" and action is None else None), None
        if action is None:
            return (self._gemini_model if method == "GET" else None), model
        if method != "POST":
            return None, model
        handlers: dict[str, _Handler] = {
            "generateContent": self._gemini_generate,
            "streamGenerateContent": self._gemini_generate,
            "countTokens": self._gemini_count_tokens,
            "embedContent": self._gemini_embed,
            "batchEmbedContents": self._gemini_embed,
        }
        return handlers.get(action), model

    def _gemini_model_name(self, call: _Call) -> tuple[str, str]:
        match = _GEMINI_ROUTE.match(call.record.path)
        assert match is not None
        return match.group(2) or "", match.group(3) or ""

    def _gemini_chunk(
        self, model: str, response_id: str, text: str, *, final: bool, prompt_tokens: int, out: int
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if final:
            candidate["finishReason"] = "STOP"
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "totalTokenCount": prompt_tokens,
        }
        if out:
            usage["candidatesTokenCount"] = out
            usage["totalTokenCount"] = prompt_tokens + out
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id,
        }

    async def _gemini_generate(self, call: _Call) -> web.StreamResponse:
        model, action = self._gemini_model_name(call)
        response_id = f"mockresp{call.record.index}"
        prompt_tokens = _token_estimate(call.record.body)
        streaming_route = action == "streamGenerateContent"
        force_json = call.switch in (MOCK_JSON_FOR_STREAM, MOCK_BIG)
        if (streaming_route or call.switch in _STREAMING_SWITCHES) and not force_json:
            tokens = list(REPLY_TOKENS)
            sse = call.record.query.get("alt") == "sse" or not streaming_route

            def chunk(i: int, last: bool) -> dict[str, Any]:
                token = tokens[i] if i < len(tokens) else f"tok{i} "
                return self._gemini_chunk(
                    model,
                    response_id,
                    token,
                    final=last,
                    prompt_tokens=prompt_tokens,
                    out=i + 1 if last else 0,
                )

            if sse:
                stream = _Stream(
                    content_type="text/event-stream",
                    body=lambda i, last: _sse(chunk(i, last), crlf=True),
                    count=len(tokens),
                )
            else:
                # Without alt=sse Gemini streams one JSON array, element by element.
                def array_body(i: int, last: bool) -> bytes:
                    text = ("[" if i == 0 else ",\r\n") + json.dumps(chunk(i, last), indent=2)
                    return (text + ("\n]" if last else "\n")).encode()

                stream = _Stream(
                    content_type="application/json; charset=UTF-8",
                    body=array_body,
                    count=len(tokens),
                )
            return await self._send_stream(call, stream)
        text = BIG_TEXT if call.switch == MOCK_BIG else REPLY_TEXT
        result = self._gemini_chunk(
            model,
            response_id,
            text,
            final=True,
            prompt_tokens=prompt_tokens,
            out=len(REPLY_TOKENS),
        )
        if (
            streaming_route
            and call.switch == MOCK_JSON_FOR_STREAM
            and call.record.query.get("alt") != "sse"
        ):
            return _json_response([result])
        return _json_response(result)

    async def _gemini_count_tokens(self, call: _Call) -> web.StreamResponse:
        return _json_response({"totalTokens": _token_estimate(call.record.body)})

    async def _gemini_embed(self, call: _Call) -> web.StreamResponse:
        _model, action = self._gemini_model_name(call)
        vector = [0.125 * (k % 5) - 0.25 for k in range(EMBEDDING_DIM)]
        if action == "batchEmbedContents":
            requests = call.payload.get("requests", []) if isinstance(call.payload, dict) else []
            return _json_response({"embeddings": [{"values": vector} for _ in requests]})
        return _json_response({"embedding": {"values": vector}})

    @staticmethod
    def _gemini_model_obj(model: str, display: str) -> dict[str, Any]:
        return {
            "name": f"models/{model}",
            "version": "001",
            "displayName": display,
            "description": f"Mock {display}",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "temperature": 1.0,
            "topP": 0.95,
            "topK": 40,
        }

    async def _gemini_models(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        return _json_response({"models": [self._gemini_model_obj(*m) for m in GEMINI_MODELS]})

    async def _gemini_model(self, call: _Call) -> web.StreamResponse:
        model, _action = self._gemini_model_name(call)
        display = dict(GEMINI_MODELS).get(model, model)
        return _json_response(self._gemini_model_obj(model, display))

    # ==================================================================================
    # generic
    # ==================================================================================
    def _route_generic(self, method: str, path: str) -> _Handler | None:
        if method == "POST" and (path.startswith("/v1/text-to-speech/") or path == "/v1/speak"):
            return self._generic_audio
        if method == "POST" and path == "/v1/listen":
            return self._generic_listen
        return self._generic_echo

    async def _generic_echo(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        record = call.record
        headers: dict[str, str] = {}
        for name in record.headers:
            headers[name.lower()] = ", ".join(record.headers.getall(name))
        query: dict[str, list[str]] = {}
        for name, value in record.query.items():
            query.setdefault(name, []).append(value)
        result: dict[str, Any] = {
            "method": record.method,
            "path": record.path,
            "query": query,
            "headers": headers,
            "body_len": len(record.body),
        }
        if call.switch == MOCK_BIG:
            result["padding"] = BIG_TEXT
        return _json_response(result)

    async def _generic_audio(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        if call.record.path.endswith("/stream"):
            # ElevenLabs-style streaming audio: chunked binary body
            quarter = len(AUDIO_BYTES) // 4 + 1
            chunks = [AUDIO_BYTES[i : i + quarter] for i in range(0, len(AUDIO_BYTES), quarter)]
            return await self._send_stream(
                call,
                _Stream(content_type="audio/mpeg", body=lambda i, _l: chunks[i], count=len(chunks)),
            )
        return web.Response(body=AUDIO_BYTES, content_type="audio/mpeg")

    async def _generic_listen(self, call: _Call) -> web.StreamResponse:
        streaming = self._maybe_stream(call)
        if streaming is not None:
            return await streaming
        body = call.record.body
        digest = hashlib.sha256(body).hexdigest()
        return _json_response(
            {
                "byte_length": len(body),
                "sha256": digest,
                "content_type": call.record.headers.get("content-type"),
                "metadata": {"request_id": call.request_id, "sha256": digest},
                "results": {
                    "channels": [{"alternatives": [{"transcript": REPLY_TEXT, "confidence": 0.99}]}]
                },
            }
        )


@dataclass
class MockProviders:
    """The four mocks used by the relay tests."""

    openai: MockProvider
    anthropic: MockProvider
    gemini: MockProvider
    generic: MockProvider

    @classmethod
    def create(cls) -> MockProviders:
        return cls(
            openai=MockProvider("openai"),
            anthropic=MockProvider("anthropic"),
            gemini=MockProvider("gemini"),
            generic=MockProvider("generic"),
        )

    def all(self) -> list[MockProvider]:
        return [self.openai, self.anthropic, self.gemini, self.generic]

    def start(self) -> MockProviders:
        started: list[MockProvider] = []
        try:
            for mock in self.all():
                mock.start()
                started.append(mock)
        except BaseException:
            for mock in started:
                mock.stop()
            raise
        return self

    def stop(self) -> None:
        for mock in self.all():
            mock.stop()

    def clear(self) -> None:
        for mock in self.all():
            mock.clear()

    def by_flavor(self, flavor: Flavor) -> MockProvider:
        return {
            "openai": self.openai,
            "anthropic": self.anthropic,
            "gemini": self.gemini,
            "generic": self.generic,
        }[flavor]
