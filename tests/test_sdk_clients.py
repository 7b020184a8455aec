"""SPEC §8: the official openai, anthropic and google-genai Python SDKs work through the
relay with only their base URL changed and the relay token as their API key.  The mock
behind the relay must see the stored provider key, never the relay token."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from providers.mock import AUDIO_BYTES, REPLY_TEXT, REPLY_TOKENS, MockProviders, RecordedRequest
from providers.relay import Relay, User, register_user

OPENAI_KEY = "sk-test-openai-STORED-0123456789"
ANTHROPIC_KEY = "sk-ant-test-STORED-0123456789"
GOOGLE_KEY = "AIza-test-STORED-0123456789"


@pytest.fixture(scope="module")
def sdk_user(relay: Relay) -> User:
    user = register_user(relay)
    user.store_key("openai", OPENAI_KEY)
    user.store_key("anthropic", ANTHROPIC_KEY)
    user.store_key("google", GOOGLE_KEY)
    return user


def _only_stored_key(request: RecordedRequest, token: str) -> None:
    for name, value in request.headers.items():
        assert token not in value, f"relay token forwarded in {name}"
    assert token not in request.raw_query


# ------------------------------------------------------------------------------ openai
@pytest.fixture
def oai(sdk_user: User) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        api_key=sdk_user.token, base_url=f"{sdk_user.relay.url}/relay/openai/v1", max_retries=0
    )
    yield client
    client.close()


def test_openai_sdk_chat(oai: openai.OpenAI, sdk_user: User, mocks: MockProviders) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == REPLY_TEXT
    request = mocks.openai.last_request
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    _only_stored_key(request, sdk_user.token)
    # the SDK's x-stainless-* headers are not credentials; nothing else leaks either
    assert "x-relay-token" not in request.headers


def test_openai_sdk_streaming(oai: openai.OpenAI, mocks: MockProviders) -> None:
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
    assert usage is not None and usage.completion_tokens == len(REPLY_TOKENS)
    assert mocks.openai.last_request.json()["stream"] is True


def test_openai_sdk_models(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]
    assert "gpt-4o-mini" in ids
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"


def test_openai_sdk_responses_embeddings_audio(oai: openai.OpenAI, mocks: MockProviders) -> None:
    with oai.responses.stream(model="gpt-4o-mini", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY_TEXT and final.output_text == REPLY_TEXT

    embedding = oai.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8

    speech = oai.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert speech.read() == AUDIO_BYTES

    upload = bytes(range(256)) * 8
    transcription = oai.audio.transcriptions.create(
        model="whisper-1", file=("clip.mp3", upload, "audio/mpeg")
    )
    assert transcription.text == f"mock transcription of {len(upload)} bytes"
    assert mocks.openai.last_request.multipart()["file"] == ("clip.mp3", upload)


def test_openai_sdk_errors(oai: openai.OpenAI, sdk_user: User) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="mock-429", messages=[])
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "7"

    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(
            api_key="byok_rt_" + "x" * 43,
            base_url=f"{sdk_user.relay.url}/relay/openai/v1",
            max_retries=0,
        ).models.list()
    assert refused.value.status_code == 401


async def test_openai_async_sdk_streaming(sdk_user: User) -> None:
    client = openai.AsyncOpenAI(
        api_key=sdk_user.token, base_url=f"{sdk_user.relay.url}/relay/openai/v1", max_retries=0
    )
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == REPLY_TEXT
    finally:
        await client.close()


# --------------------------------------------------------------------------- anthropic
@pytest.fixture
def claude(sdk_user: User) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        api_key=sdk_user.token, base_url=f"{sdk_user.relay.url}/relay/anthropic", max_retries=0
    )
    yield client
    client.close()


def test_anthropic_sdk_message(
    claude: anthropic.Anthropic, sdk_user: User, mocks: MockProviders
) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY_TEXT
    request = mocks.anthropic.last_request
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in request.headers
    assert request.headers["anthropic-version"]  # the SDK's own value is passed
    _only_stored_key(request, sdk_user.token)


def test_anthropic_sdk_streaming(claude: anthropic.Anthropic, mocks: MockProviders) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(REPLY_TOKENS)
    assert mocks.anthropic.last_request.json()["stream"] is True


def test_anthropic_sdk_models_and_count_tokens(claude: anthropic.Anthropic) -> None:
    models = list(claude.models.list())
    assert [m.id for m in models][:1] == ["claude-sonnet-4-5-20250929"]
    assert claude.models.retrieve(models[0].id).display_name == models[0].display_name
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello there"}]
    )
    assert counted.input_tokens > 0


def test_anthropic_sdk_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="mock-429", max_tokens=5, messages=[])
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_anthropic_async_sdk_streaming(sdk_user: User) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=sdk_user.token, base_url=f"{sdk_user.relay.url}/relay/anthropic", max_retries=0
    )
    try:
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == REPLY_TEXT
    finally:
        await client.close()


# ------------------------------------------------------------------------ google-genai
@pytest.fixture
def gemini(sdk_user: User) -> genai.Client:
    return genai.Client(
        api_key=sdk_user.token,
        http_options=genai_types.HttpOptions(base_url=f"{sdk_user.relay.url}/relay/google"),
    )


def test_genai_sdk_generate(gemini: genai.Client, sdk_user: User, mocks: MockProviders) -> None:
    response = gemini.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert response.text == REPLY_TEXT
    assert response.usage_metadata is not None
    request = mocks.gemini.last_request
    assert request.path.endswith("/models/gemini-2.0-flash:generateContent")
    assert request.headers["x-goog-api-key"] == GOOGLE_KEY
    assert "key" not in request.query
    _only_stored_key(request, sdk_user.token)


def test_genai_sdk_streaming(gemini: genai.Client, mocks: MockProviders) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert "".join(chunk.text or "" for chunk in chunks) == REPLY_TEXT
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    request = mocks.gemini.last_request
    assert request.path.endswith(":streamGenerateContent")
    assert request.query.getall("alt") == ["sse"]


def test_genai_sdk_models(gemini: genai.Client) -> None:
    names = [model.name for model in gemini.models.list()]
    assert "models/gemini-2.0-flash" in names
    assert gemini.models.get(model="gemini-1.5-pro").name == "models/gemini-1.5-pro"
    counted = gemini.models.count_tokens(model="gemini-2.0-flash", contents="hello there")
    assert counted.total_tokens is not None and counted.total_tokens > 0


def test_genai_sdk_errors(gemini: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as limited:
        gemini.models.generate_content(model="mock-429", contents="hi")
    assert limited.value.code == 429
    assert limited.value.status == "RESOURCE_EXHAUSTED"


async def test_genai_async_sdk_streaming(gemini: genai.Client) -> None:
    stream = await gemini.aio.models.generate_content_stream(
        model="gemini-2.0-flash", contents="hi"
    )
    text = "".join([chunk.text or "" async for chunk in stream])
    assert text == REPLY_TEXT
