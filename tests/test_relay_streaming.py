"""SPEC §3 streaming over real HTTP: pass-through without buffering, binary bodies byte for
byte, cancellation on client disconnect, upstream failures (502 / 504 / mid-stream error).

Arrival times are compared with the mock's own send times (``StreamRecord.sent_at``); both
use ``time.monotonic()`` in this process (the mocks run in threads here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from providers.mock import (
    AUDIO_BYTES,
    BIG_TEXT,
    BREAK_AFTER_EVENTS,
    REPLY_TEXT,
    SLOW_EVENTS,
    SLOW_INTERVAL_S,
    MockProvider,
    MockProviders,
)
from providers.relay import (
    CHAT,
    CLAUDE,
    FAKE_KEY,
    GEMINI,
    Relay,
    User,
    register_user,
    start_relay_process,
)
from providers.relay import relay_env as build_relay_env
from providers.sse import SSEEvent, SSEParser, parse_sse_events


@dataclass
class Arrival:
    status: int
    headers: httpx.Headers
    events: list[SSEEvent]
    arrived_at: list[float]  # time.monotonic() when each event was complete at the client
    reads: int  # socket reads that carried data


def stream_events(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Arrival:
    """Send a request and record when each SSE event becomes complete at the client."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    arrived: list[float] = []
    reads = 0
    with client.stream(method, url, **kwargs) as response:
        for chunk in response.iter_raw():
            now = time.monotonic()
            if not chunk:
                continue
            reads += 1
            for event in parser.feed(chunk):
                events.append(event)
                arrived.append(now)
        events.extend(parser.close())
        return Arrival(response.status_code, response.headers, events, arrived, reads)


@pytest.fixture
def client(shared_user: User) -> Iterator[httpx.Client]:
    with shared_user.client() as c:
        yield c


# ------------------------------------------------------------------------- pass-through
# OpenAI-style streams ask for usage themselves: otherwise the relay adds the option and
# hides the extra chunk (SPEC §9; test_spend_usage.py), and one event less arrives.
_USAGE = {"stream_options": {"include_usage": True}}
SLOW_CASES = {
    "openai": (
        "openai",
        "/relay/openai/v1/chat/completions",
        {**CHAT, "model": "mock-slow", "stream": True, **_USAGE},
    ),
    "anthropic": (
        "anthropic",
        "/relay/anthropic/v1/messages",
        {**CLAUDE, "model": "mock-slow", "stream": True},
    ),
    "google": (
        "gemini",
        "/relay/google/v1beta/models/mock-slow:streamGenerateContent",
        GEMINI,
    ),
    "unified": (
        "openai",
        "/relay",
        {**CHAT, "model": "openai/mock-slow", "stream": True, **_USAGE},
    ),
}


@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_sse_events_arrive_as_the_provider_sends_them(
    case: str, client: httpx.Client, mocks: MockProviders
) -> None:
    flavor, path, body = SLOW_CASES[case]
    mock: MockProvider = getattr(mocks, flavor)
    got = stream_events(client, "POST", path, json=body)
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-accel-buffering"] == "no"

    (record,) = mock.streams
    assert record.completed and record.switch == "mock-slow"
    sent = record.sent_at
    assert len(sent) >= SLOW_EVENTS
    assert len(got.events) == len(sent), "every event the mock sent arrived, no more"

    lags = [a - s for a, s in zip(got.arrived_at, sent, strict=True)]
    assert min(lags) > -0.001, "an event cannot arrive before it was sent"
    # A buffering relay delivers everything after the last send (~0.6 s of sending).
    assert statistics.median(lags) < 0.1, f"median lag {statistics.median(lags):.3f} s"
    early = sum(1 for a in got.arrived_at if a < sent[-1])
    assert early >= 0.75 * len(sent), f"only {early}/{len(sent)} events before the last send"
    assert got.arrived_at[0] < sent[len(sent) // 2]
    # One event per read, more or less: the events were not coalesced on the way.
    assert got.reads >= SLOW_EVENTS // 2
    spread = got.arrived_at[-1] - got.arrived_at[0]
    assert spread >= 0.5 * (SLOW_EVENTS - 1) * SLOW_INTERVAL_S


def test_stream_body_is_passed_through_unchanged(
    client: httpx.Client, mocks: MockProviders, http: httpx.Client
) -> None:
    """The relayed SSE bytes equal a direct answer (modulo the per-request ids)."""
    body = {**CLAUDE, "stream": True}
    relayed = client.post("/relay/anthropic/v1/messages", json=body).text
    direct = http.post(mocks.anthropic.url + "/v1/messages", json=body).text
    first, second = (r.index for r in mocks.anthropic.requests)
    assert relayed.replace(f"msg_mock{first}", "X") == direct.replace(f"msg_mock{second}", "X")
    text = "".join(
        e.json()["delta"]["text"]
        for e in parse_sse_events(relayed)
        if e.event == "content_block_delta"
    )
    assert text == REPLY_TEXT


def test_gemini_array_stream_without_alt_sse_is_chunked_through(
    client: httpx.Client, mocks: MockProviders
) -> None:
    """A client that explicitly asks for the JSON-array stream (alt=json) gets it."""
    response = client.post(
        "/relay/google/v1/models/gemini-2.0-flash:streamGenerateContent?alt=json", json=GEMINI
    )
    assert response.status_code == 200
    assert mocks.gemini.last_request.query.getall("alt") == ["json"]
    chunks = response.json()
    assert isinstance(chunks, list)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == (
        REPLY_TEXT
    )


def test_json_answer_to_stream_request_stays_json(client: httpx.Client) -> None:
    response = client.post(
        "/relay/openai/v1/chat/completions",
        json={**CHAT, "model": "mock-json-for-stream", "stream": True},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == REPLY_TEXT


def test_big_json_answer_passes_whole(client: httpx.Client, mocks: MockProviders) -> None:
    response = client.post("/relay/openai/v1/chat/completions", json={**CHAT, "model": "mock-big"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["choices"][0]["message"]["content"] == BIG_TEXT


# ----------------------------------------------------------------------------- binary
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def audio_user(shared_user: User) -> User:
    shared_user.store_key("elevenlabs", "xi-test-FAKEKEY-0000000000")
    shared_user.store_key("deepgram", "dg-test-FAKEKEY-0000000000")
    return shared_user


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/relay/openai/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi"}),
        ("/relay/elevenlabs/v1/text-to-speech/voice123", {"text": "hi"}),
        ("/relay/elevenlabs/v1/text-to-speech/voice123/stream", {"text": "hi"}),
        ("/relay/deepgram/v1/speak", {"text": "hi"}),
    ],
)
def test_binary_response_byte_for_byte(path: str, body: dict[str, Any], audio_user: User) -> None:
    with audio_user.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    assert _sha(response.content) == _sha(AUDIO_BYTES)
    assert len(response.content) == len(AUDIO_BYTES)


@pytest.mark.parametrize("chunked", [False, True])
def test_binary_request_body_reaches_provider_byte_for_byte(
    chunked: bool, audio_user: User, mocks: MockProviders
) -> None:
    audio = bytes(range(256)) * 4096 + b"\r\n\x00--\xff"  # ~1 MiB, every byte value
    # chunked: no Content-Length, the way a browser streams a recording
    content = (audio[i : i + 65536] for i in range(0, len(audio), 65536)) if chunked else audio
    with audio_user.client() as client:
        response = client.post(
            "/relay/deepgram/v1/listen?model=nova-2&smart_format=true",
            content=content,
            headers={"content-type": "audio/wav"},
        )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["sha256"] == _sha(audio) and data["byte_length"] == len(audio)
    request = mocks.generic.last_request
    assert request.path == "/v1/listen"
    assert request.body == audio
    assert request.headers["content-type"] == "audio/wav"
    assert request.headers["authorization"] == "Token dg-test-FAKEKEY-0000000000"
    assert request.query.getall("model") == ["nova-2"]


def test_multipart_upload_reaches_provider_byte_for_byte(
    client: httpx.Client, mocks: MockProviders
) -> None:
    boundary = "----relaytestboundary7MA4YWxkTrZu0gW"
    upload = bytes(range(256)) * 64 + b"\r\n--" + boundary.encode() + b"x\r\n"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp3"\r\n'
            "Content-Type: audio/mpeg\r\n\r\n"
        ).encode()
        + upload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"
    response = client.post(
        "/relay/openai/v1/audio/transcriptions",
        content=body,
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json()["file_sha256"] == _sha(upload)
    request = mocks.openai.last_request
    assert request.body == body
    assert request.headers["content-type"] == content_type


# ------------------------------------------------------------------------ cancellation
@dataclass
class OpenStream:
    client: httpx.AsyncClient
    chunks: AsyncIterator[bytes]  # kept referenced: a dropped iterator closes the response


async def _open_stream(
    relay: Relay, token: str, path: str, body: dict[str, Any], events: int
) -> OpenStream:
    """Open a stream, read `events` SSE events, and return it still open."""
    client = httpx.AsyncClient(base_url=relay.url, timeout=10.0, trust_env=False)
    response = await client.send(
        client.build_request("POST", path, json=body, headers={"x-relay-token": token}),
        stream=True,
    )
    assert response.status_code == 200
    chunks = response.aiter_raw()
    parser = SSEParser()
    seen = 0
    while seen < events:
        seen += len(parser.feed(await anext(chunks)))
    return OpenStream(client, chunks)


async def test_client_disconnect_cancels_upstream_streams(
    relay: Relay, shared_user: User, mocks: MockProviders
) -> None:
    cases = [
        (mocks.openai, "/relay/openai/v1/chat/completions", {**CHAT, "model": "mock-long"}),
        (mocks.openai, "/relay/openai/v1/chat/completions", {**CHAT, "model": "mock-long"}),
        (mocks.openai, "/relay", {**CHAT, "model": "openai/mock-long", "stream": True}),
        (mocks.anthropic, "/relay/anthropic/v1/messages", {**CLAUDE, "model": "mock-long"}),
        (mocks.anthropic, "/relay/anthropic/v1/messages", {**CLAUDE, "model": "mock-long"}),
        (mocks.gemini, "/relay/google/v1beta/models/mock-long:streamGenerateContent", GEMINI),
    ]
    opened = await asyncio.gather(
        *(_open_stream(relay, shared_user.token, path, body, 3) for _, path, body in cases)
    )
    involved = {id(m): m for m, _, _ in cases}.values()
    expected = {id(m): sum(1 for c in cases if c[0] is m) for m in involved}
    for mock in involved:
        assert mock.active_streams == expected[id(mock)]
        assert mock.disconnects == 0

    closed_at = time.monotonic()
    await asyncio.gather(*(s.client.aclose() for s in opened))
    for mock in involved:
        await mock.async_wait_for(
            lambda m=mock: m.active_streams == 0 and m.disconnects == expected[id(m)],
            timeout=2.0,
        )
    assert time.monotonic() - closed_at < 2.0
    for mock in involved:
        records = mock.streams
        assert len(records) == expected[id(mock)]
        assert all(r.disconnected and not r.completed for r in records)
        # ~60 s of events were planned; only a handful went out before the cancel
        assert all(r.events_sent < 100 for r in records)


def test_client_giving_up_before_headers_cancels_upstream(
    client: httpx.Client, mocks: MockProviders
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/relay/anthropic/v1/messages", json={**CLAUDE, "model": "mock-hang"}, timeout=0.5
        )
    mocks.anthropic.wait_for(lambda: mocks.anthropic.hang_cancellations == 1, timeout=2.0)
    assert mocks.anthropic.active_hangs == 0


# ----------------------------------------------------------------------- upstream faults
@pytest.fixture(scope="module")
def blackhole() -> Iterator[str]:
    """A port whose accept queue is full: new connections hang in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in (*fillers, listener):
            sock.close()


@pytest.fixture(scope="module")
def faulty_relay(
    mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory, blackhole: str
) -> Iterator[Relay]:
    """openai refuses connections (port 1), groq never completes the TCP handshake,
    every provider must send headers within 1 s."""
    directory: Path = tmp_path_factory.mktemp("relay-faulty")
    env = build_relay_env(
        mocks,
        directory,
        PROVIDER_OPENAI_BASE_URL="http://127.0.0.1:1",
        PROVIDER_GROQ_BASE_URL=blackhole,
        UPSTREAM_TIMEOUT_S="1",
        UPSTREAM_CONNECT_TIMEOUT_S="0.5",
    )
    server = start_relay_process(env, directory)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def faulty_user(faulty_relay: Relay) -> User:
    new_user = register_user(faulty_relay)
    new_user.store_key("openai", FAKE_KEY)
    new_user.store_key("anthropic", FAKE_KEY)
    new_user.store_key("groq", FAKE_KEY)
    return new_user


def _assert_relay_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]
    assert "Traceback" not in response.text and FAKE_KEY not in response.text
    assert response.headers["x-relay-request-id"]
    return str(data["error"])


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_provider_is_502(faulty_user: User, stream: bool) -> None:
    with faulty_user.client() as client:
        response = client.post("/relay/openai/v1/chat/completions", json={**CHAT, "stream": stream})
    message = _assert_relay_error(response, 502)
    assert "127.0.0.1" not in message  # no upstream host names in relay errors


def test_connect_timeout_is_unreachable_502(faulty_user: User) -> None:
    """A provider that never accepts the connection is unreachable (502), not slow (504)."""
    started = time.monotonic()
    with faulty_user.client() as client:
        response = client.post("/relay/groq/openai/v1/chat/completions", json=CHAT)
    _assert_relay_error(response, 502)
    assert time.monotonic() - started < 5.0


def test_no_response_headers_in_time_is_504(faulty_user: User, mocks: MockProviders) -> None:
    started = time.monotonic()
    with faulty_user.client() as client:
        response = client.post(
            "/relay/anthropic/v1/messages", json={**CLAUDE, "model": "mock-hang"}
        )
    elapsed = time.monotonic() - started
    _assert_relay_error(response, 504)
    assert 0.9 <= elapsed < 5.0
    # the relay dropped the hanging upstream request
    mocks.anthropic.wait_for(lambda: mocks.anthropic.hang_cancellations == 1, timeout=2.0)


def test_slow_but_steady_stream_is_not_cut_by_the_timeout(
    faulty_user: User, mocks: MockProviders
) -> None:
    """UPSTREAM_TIMEOUT_S bounds the wait for headers/bytes, not a whole long stream."""
    with faulty_user.client() as client:
        got = stream_events(
            client,
            "POST",
            "/relay/anthropic/v1/messages",
            json={**CLAUDE, "model": "mock-slow", "stream": True},
        )
    assert got.status == 200
    assert got.events[-1].event == "message_stop"


@pytest.mark.parametrize(
    ("flavor", "path", "body"),
    [
        (
            "openai",
            "/relay/openai/v1/chat/completions",
            {**CHAT, "model": "mock-break", "stream": True},
        ),
        ("anthropic", "/relay/anthropic/v1/messages", {**CLAUDE, "model": "mock-break"}),
        ("gemini", "/relay/google/v1beta/models/mock-break:streamGenerateContent", GEMINI),
    ],
)
def test_mid_stream_failure_ends_with_sse_error_event(
    flavor: str, path: str, body: dict[str, Any], client: httpx.Client, mocks: MockProviders
) -> None:
    got = stream_events(client, "POST", path, json=body)  # ends cleanly: no exception
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    (record,) = getattr(mocks, flavor).streams
    assert record.broken and record.events_sent == BREAK_AFTER_EVENTS
    assert len(got.events) == BREAK_AFTER_EVENTS + 1
    assert all(e.event != "error" for e in got.events[:-1])
    last = got.events[-1]
    assert last.event == "error"
    error = json.loads(last.data)["error"]
    assert error["message"] and "127.0.0.1" not in last.data
