"""The mocks speak each provider's wire format: the official SDKs, pointed straight at
them (no relay), accept their answers.  If these pass, relay tests against the mocks mean
something."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from providers.mock import (
    AUDIO_BYTES,
    BIG_TEXT,
    BREAK_AFTER_EVENTS,
    REDIRECT_LOCATION,
    REPLY_TEXT,
    REPLY_TOKENS,
    SLOW_EVENTS,
    SLOW_INTERVAL_S,
    MockProvider,
    MockProviders,
)
from providers.sse import SSEParser, parse_sse, sse_json

FAKE_OPENAI_KEY = "sk-test-FAKEKEY-0000000000"
FAKE_ANTHROPIC_KEY = "sk-ant-test-FAKEKEY-0000000000"
FAKE_GOOGLE_KEY = "AIza-test-FAKEKEY-0000000000"


@pytest.fixture
def oai(mocks: MockProviders) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        api_key=FAKE_OPENAI_KEY, base_url=mocks.openai.url + "/v1", max_retries=0
    )
    yield client
    client.close()


@pytest.fixture
def claude(mocks: MockProviders) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        api_key=FAKE_ANTHROPIC_KEY, base_url=mocks.anthropic.url, max_retries=0
    )
    yield client
    client.close()


@pytest.fixture
def gemini(mocks: MockProviders) -> genai.Client:
    return genai.Client(
        api_key=FAKE_GOOGLE_KEY, http_options=genai_types.HttpOptions(base_url=mocks.gemini.url)
    )


# --------------------------------------------------------------------------- openai SDK
def test_openai_chat(oai: openai.OpenAI, mocks: MockProviders) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    request = mocks.openai.last_request
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    assert request.json()["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == REPLY_TEXT
    assert usage is not None and usage.completion_tokens > 0


def test_openai_raw_stream_wire_format(mocks: MockProviders, http: httpx.Client) -> None:
    response = http.post(
        mocks.openai.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [], "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    events = sse_json(response.text)
    assert all(event is None for event, _ in events)
    assert events[0][1]["object"] == "chat.completion.chunk"
    assert events[0][1]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2][1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1][1] == "[DONE]"


def test_openai_models(oai: openai.OpenAI) -> None:
    models = oai.models.list()
    ids = [model.id for model in models]
    assert "gpt-4o-mini" in ids
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"


def test_openai_completions_embeddings_responses(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert completion.choices[0].text == REPLY_TEXT

    # the SDK asks for base64 by default and decodes it
    embedding = oai.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="float"
    )
    assert isinstance(floats.data[0].embedding[0], float)

    response = oai.responses.create(model="gpt-4o-mini", input="hi")
    assert response.output_text == REPLY_TEXT

    with oai.responses.stream(model="gpt-4o-mini", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY_TEXT
    assert final.output_text == REPLY_TEXT


def test_openai_audio(oai: openai.OpenAI, mocks: MockProviders) -> None:
    speech = oai.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert speech.read() == AUDIO_BYTES

    upload = bytes(range(256)) * 10 + b"\x00\xff\r\n--"
    transcription = oai.audio.transcriptions.create(
        model="whisper-1", file=("clip.mp3", upload, "audio/mpeg")
    )
    assert transcription.text == f"mock transcription of {len(upload)} bytes"
    request = mocks.openai.last_request
    parts = request.multipart()
    assert parts["file"] == ("clip.mp3", upload)
    assert parts["model"][1] == b"whisper-1"


@pytest.mark.parametrize("prefix", ["", "/openai/v1", "/api/v1", "/inference/v1"])
def test_openai_compatible_prefixes(mocks: MockProviders, prefix: str, http: httpx.Client) -> None:
    response = http.post(
        f"{mocks.openai.url}{prefix}/chat/completions",
        json={"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == REPLY_TEXT
    assert http.get(f"{mocks.openai.url}{prefix}/models").json()["object"] == "list"


def test_cohere_and_openrouter_extras(mocks: MockProviders, http: httpx.Client) -> None:
    url = mocks.openai.url
    chat = http.post(f"{url}/v2/chat", json={"model": "command-r", "messages": []})
    assert chat.json()["message"]["content"][0]["text"] == REPLY_TEXT
    streamed = http.post(f"{url}/v2/chat", json={"model": "command-r", "stream": True})
    events = sse_json(streamed.text)
    assert events[0][0] == "message-start" and events[-1][0] == "message-end"
    text = "".join(
        d["delta"]["message"]["content"]["text"] for e, d in events if e == "content-delta"
    )
    assert text == REPLY_TEXT
    assert http.get(f"{url}/api/v1/key").json()["data"]["usage"] == 0


async def test_openai_async_client_stream(mocks: MockProviders) -> None:
    client = openai.AsyncOpenAI(api_key=FAKE_OPENAI_KEY, base_url=mocks.openai.url + "/v1")
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == REPLY_TEXT
    finally:
        await client.close()


def test_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as auth:
        oai.chat.completions.create(model="mock-401", messages=[])
    assert auth.value.code == "invalid_api_key"

    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="mock-429", messages=[])
    headers = limited.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"


# ------------------------------------------------------------------------ anthropic SDK
def test_anthropic_message(claude: anthropic.Anthropic, mocks: MockProviders) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn"
    request = mocks.anthropic.last_request
    assert request.path == "/v1/messages"
    # SDK versions differ: x-api-key, or Authorization: Bearer in newer ones
    credential = request.headers.get("x-api-key") or request.headers["authorization"]
    assert credential.removeprefix("Bearer ") == FAKE_ANTHROPIC_KEY
    assert request.headers["anthropic-version"]


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_TEXT
    assert final.usage.output_tokens == len(REPLY_TOKENS)
    assert final.stop_reason == "end_turn"


def test_anthropic_raw_event_sequence(mocks: MockProviders, http: httpx.Client) -> None:
    response = http.post(
        mocks.anthropic.url + "/v1/messages",
        json={"model": "claude-x", "max_tokens": 5, "messages": [], "stream": True},
    )
    names = [event for event, _ in parse_sse(response.text)]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    for event, data in sse_json(response.text):
        assert data["type"] == event


def test_anthropic_models_and_count_tokens(claude: anthropic.Anthropic) -> None:
    models = list(claude.models.list())
    assert models[0].type == "model"
    assert models[0].id.startswith("claude-")
    assert claude.models.retrieve(models[0].id).display_name == models[0].display_name
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello there"}]
    )
    assert counted.input_tokens > 0


def test_anthropic_errors(claude: anthropic.Anthropic, mocks: MockProviders) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        claude.messages.create(model="mock-401", max_tokens=5, messages=[])
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="mock-429", max_tokens=5, messages=[])
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


# --------------------------------------------------------------------------- gemini SDK
def test_gemini_generate(gemini: genai.Client, mocks: MockProviders) -> None:
    response = gemini.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert response.text == REPLY_TEXT
    assert response.usage_metadata is not None
    request = mocks.gemini.last_request
    # the SDK's default API version changed between releases
    assert request.path in (
        "/v1beta/models/gemini-2.0-flash:generateContent",
        "/v1/models/gemini-2.0-flash:generateContent",
    )
    assert request.headers["x-goog-api-key"] == FAKE_GOOGLE_KEY


def test_gemini_stream(gemini: genai.Client, mocks: MockProviders) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert "".join(chunk.text or "" for chunk in chunks) == REPLY_TEXT
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    request = mocks.gemini.last_request
    assert request.path.endswith(":streamGenerateContent")
    assert request.query["alt"] == "sse"


def test_gemini_models(gemini: genai.Client) -> None:
    names = [model.name for model in gemini.models.list()]
    assert "models/gemini-2.0-flash" in names
    assert gemini.models.get(model="gemini-1.5-pro").name == "models/gemini-1.5-pro"


def test_gemini_wire_formats(mocks: MockProviders, http: httpx.Client) -> None:
    url = mocks.gemini.url
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    sse = http.post(f"{url}/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse", json=body)
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert "\r\n\r\n" in sse.text
    assert all(event is None for event, _ in parse_sse(sse.text))
    array = http.post(f"{url}/v1beta/models/gemini-2.0-flash:streamGenerateContent", json=body)
    assert array.headers["content-type"].startswith("application/json")
    parsed = array.json()
    assert isinstance(parsed, list)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in parsed) == REPLY_TEXT
    unauthorized = http.post(f"{url}/v1beta/models/mock-401:generateContent", json=body)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["status"] == "UNAUTHENTICATED"


# ------------------------------------------------------------------------------ generic
def test_generic_echo_and_binary(mocks: MockProviders, http: httpx.Client) -> None:
    url = mocks.generic.url
    echo = http.put(f"{url}/any/path?a=1&a=2", content=b"abc", headers={"X-Thing": "v"})
    data = echo.json()
    assert data["method"] == "PUT"
    assert data["path"] == "/any/path"
    assert data["query"] == {"a": ["1", "2"]}
    assert data["headers"]["x-thing"] == "v"
    assert data["body_len"] == 3

    for path in ("/v1/text-to-speech/voice123", "/v1/text-to-speech/voice123/stream", "/v1/speak"):
        audio = http.post(url + path, json={"text": "hi"})
        assert audio.headers["content-type"] == "audio/mpeg"
        assert audio.content == AUDIO_BYTES

    upload = bytes(range(256)) * 40
    listen = http.post(f"{url}/v1/listen", content=upload, headers={"content-type": "audio/wav"})
    assert listen.json()["byte_length"] == len(upload)
    assert listen.json()["sha256"] == hashlib.sha256(upload).hexdigest()
    assert mocks.generic.last_request.body == upload


# ----------------------------------------------------------------- common headers, switches
def test_common_headers(mocks: MockProviders, http: httpx.Client) -> None:
    first = http.get(mocks.openai.url + "/v1/models")
    second = http.get(mocks.openai.url + "/v1/models")
    assert first.headers["x-request-id"].startswith("req_mock_")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert "set-cookie" in first.headers
    assert first.headers["x-ratelimit-limit-requests"]
    response = http.get(mocks.anthropic.url + "/v1/models")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert "set-cookie" in response.headers


def test_recorded_request_fields(mocks: MockProviders, http: httpx.Client) -> None:
    http.post(
        mocks.gemini.url + "/v1beta/models/gemini-2.0-flash:generateContent?key=abc&x=%2F",
        json={"contents": []},
        headers={"X-Custom": "1"},
    )
    request = mocks.gemini.last_request
    assert request.method == "POST"
    assert request.raw_query == "key=abc&x=%2F"
    assert request.query["key"] == "abc" and request.query["x"] == "/"
    assert request.headers["x-custom"] == "1" and request.headers["X-CUSTOM"] == "1"
    assert request.json() == {"contents": []}
    assert request.client_port is not None


def test_key_based_switch(mocks: MockProviders, http: httpx.Client) -> None:
    response = http.get(
        mocks.openai.url + "/v1/models", headers={"Authorization": "Bearer sk-test-mock-401-000"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("flavor", ["openai", "anthropic", "gemini", "generic"])
def test_simple_switches(mocks: MockProviders, flavor: str, http: httpx.Client) -> None:
    mock = mocks.by_flavor(flavor)  # type: ignore[arg-type]

    def call(switch: str, stream: bool = True) -> httpx.Response:
        if flavor == "gemini":
            action = "streamGenerateContent" if stream else "generateContent"
            return http.post(
                f"{mock.url}/v1beta/models/{switch}:{action}?alt=sse", json={"contents": []}
            )
        if flavor == "generic":
            return http.post(f"{mock.url}/v1/anything?mock={switch}", json={})
        path = "/v1/chat/completions" if flavor == "openai" else "/v1/messages"
        return http.post(mock.url + path, json={"model": switch, "stream": stream})

    redirect = call("mock-redirect")
    assert redirect.status_code == 302
    assert redirect.headers["location"] == REDIRECT_LOCATION

    limited = call("mock-429")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()

    assert call("mock-401").status_code == 401

    json_answer = call("mock-json-for-stream")
    assert json_answer.status_code == 200
    assert json_answer.headers["content-type"].startswith("application/json")
    json_answer.json()

    big = call("mock-big")
    assert big.headers["content-type"].startswith("application/json")
    assert len(big.content) > 2_000_000
    assert BIG_TEXT in big.text


def test_slow_stream_records_send_times(mocks: MockProviders, http: httpx.Client) -> None:
    arrivals: list[float] = []
    parser = SSEParser()
    with http.stream(
        "POST",
        mocks.openai.url + "/v1/chat/completions",
        json={"model": "mock-slow", "messages": [], "stream": True},
    ) as response:
        for chunk in response.iter_raw():
            for _ in parser.feed(chunk):
                arrivals.append(time.monotonic())
    (record,) = mocks.openai.streams
    assert record.completed and not record.disconnected
    # role chunk + 30 body events + finish chunk + [DONE]
    assert record.events_sent == SLOW_EVENTS + 3 == len(arrivals)
    body_times = record.sent_at[1 : 1 + SLOW_EVENTS]
    gaps = [b - a for a, b in itertools.pairwise(body_times)]
    assert min(gaps) >= SLOW_INTERVAL_S * 0.8
    # sent_at is taken just before each write, so no event arrives before it was sent
    assert all(arrival >= sent for arrival, sent in zip(arrivals, record.sent_at, strict=True))


def test_break_aborts_connection(mocks: MockProviders, http: httpx.Client) -> None:
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream(
            "POST",
            mocks.anthropic.url + "/v1/messages",
            json={"model": "mock-break", "stream": True, "messages": []},
        ) as response:
            for chunk in response.iter_raw():
                received += chunk
    assert len(parse_sse(received)) == BREAK_AFTER_EVENTS
    mocks.anthropic.wait_for(lambda: mocks.anthropic.active_streams == 0)
    (record,) = mocks.anthropic.streams
    assert record.broken and not record.completed
    assert mocks.anthropic.disconnects == 0


def test_client_disconnect_is_counted(mocks: MockProviders, http: httpx.Client) -> None:
    mock = mocks.gemini
    with http.stream(
        "POST",
        mock.url + "/v1beta/models/mock-long:streamGenerateContent?alt=sse",
        json={"contents": []},
    ) as response:
        parser = SSEParser()
        events = 0
        chunks = response.iter_raw()  # kept referenced: a `break` would close the response
        while events < 2:
            events += len(parser.feed(next(chunks)))
        assert mock.active_streams == 1
        assert mock.disconnects == 0
    # leaving the block closes the connection mid-stream
    mock.wait_for(lambda: mock.disconnects == 1)
    mock.wait_for(lambda: mock.active_streams == 0)
    (record,) = mock.streams
    assert record.disconnected and not record.completed


def test_hang_is_cancelled_when_client_leaves(mocks: MockProviders, http: httpx.Client) -> None:
    mock = mocks.openai
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            mock.url + "/v1/chat/completions",
            json={"model": "mock-hang", "messages": []},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    mock.wait_for(lambda: mock.hang_cancellations == 1)
    assert mock.active_hangs == 0


def test_mocks_are_thread_safe_under_concurrency(mocks: MockProviders, http: httpx.Client) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                http.post(mocks.generic.url + "/x", content=b"1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(mocks.generic.requests) == 50
    assert len({r.request_id for r in mocks.generic.requests}) == 50


def test_standalone_mock_lifecycle(http: httpx.Client) -> None:
    with MockProvider("generic") as mock:
        assert http.get(mock.url + "/ping").json()["path"] == "/ping"
        mock.clear()
        assert mock.requests == []
    with pytest.raises(ValueError):
        MockProvider("nope")  # type: ignore[arg-type]


# -------------------------------------------------------------------------- SSE helpers
def test_sse_parser() -> None:
    text = "event: a\r\ndata: 1\r\n\r\n: comment\ndata: x\ndata: y\n\nevent: b\rdata:2\r\r"
    assert parse_sse(text) == [("a", "1"), (None, "x\ny"), ("b", "2")]
    parser = SSEParser()
    pieces = [b'data: {"k"', b": 1}\r", b"\n\r\n", "data: é".encode()[:-1], "é".encode()[-1:]]
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.close())
    assert [e.json() if e.data.startswith("{") else e.data for e in events] == [{"k": 1}, "é"]
    assert sse_json('data: {"a": 1}\n\ndata: [DONE]\n\n') == [(None, {"a": 1}), (None, "[DONE]")]
    assert json.loads(parse_sse(b"data: {}\n\n")[0][1]) == {}
