"""SPEC §12: third-party Python clients work through the relay by base URL and relay token
only — LangChain (`langchain-openai` ChatOpenAI, `langchain-anthropic` ChatAnthropic:
`invoke` and `stream`, sync and async) and LiteLLM's SDK (`completion` / `acompletion`
with `api_base`, `openai/…` and `anthropic/…` models, `stream=True`).

Against the real relay and the mock providers, each test asserts that the mock saw the
user's stored provider key and never the relay token, and that a streamed answer came
back in as many pieces as the provider sent (not buffered into one).

Traffic stays on 127.0.0.1: LiteLLM is imported with its offline switches set
(`LITELLM_LOCAL_MODEL_COST_MAP`, `LITELLM_OFFLINE_MODE`: no cost-map or beta-header fetch
from GitHub), LangSmith tracing is off, and an audit hook records every host this process
resolves or connects to while these tests run: anything but loopback fails them.
`LITELLM_MODE=PRODUCTION` stops its import from loading the nearest `.env` file.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI
from providers.mock import REPLY_TEXT, REPLY_TOKENS, MockProviders, RecordedRequest
from providers.relay import Relay, User, register_user

OPENAI_KEY = "sk-test-3rdparty-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-3rdparty-0123456789"
CLAUDE_MODEL = "claude-3-5-haiku-latest"
PROMPT = "Say hello"

# --------------------------------------------------------------------- loopback only
_watching: list[set[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching:
        return
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX
            return
        host = address[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is not None:
        _watching[-1].add(str(host))


sys.addaudithook(_audit)  # cannot be removed; does nothing unless a test is watching


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    seen: set[str] = set()
    _watching.append(seen)
    try:
        yield
    finally:
        _watching.remove(seen)
    outside = sorted(h for h in seen if not _loopback(h))
    assert not outside, f"this test reached beyond loopback: {outside}"


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    """LiteLLM, imported offline (its import would otherwise fetch the model cost map)."""
    seen: set[str] = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        mp.setenv("LITELLM_OFFLINE_MODE", "true")
        mp.setenv("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        mp.setenv("LANGSMITH_TRACING", "false")
        # Else its import loads the nearest .env (a relay checkout's secrets) into os.environ.
        mp.setenv("LITELLM_MODE", "PRODUCTION")
        before = dict(os.environ)
        _watching.append(seen)
        try:
            module = importlib.import_module("litellm")
        finally:
            _watching.remove(seen)
        assert not [h for h in seen if not _loopback(h)], f"import litellm reached {seen}"
        assert dict(os.environ) == before, "import litellm changed the environment"
        module.telemetry = False  # older releases' usage ping; a no-op where it is gone
        yield module


@pytest.fixture(scope="module")
def client_user(relay: Relay) -> User:
    user = register_user(relay, app_id="third-party-clients")
    user.store_key("openai", OPENAI_KEY)
    user.store_key("anthropic", ANTHROPIC_KEY)
    return user


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "OPENAI_API_KEY",
                 "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def _saw_stored_key(request: RecordedRequest, header: str, value: str, token: str) -> None:
    assert request.headers[header] == value
    for name, sent in request.headers.items():
        assert token not in sent, f"relay token forwarded in {name}"
    assert token not in request.raw_query


def _openai_chat(mocks: MockProviders, user: User, stream: bool) -> RecordedRequest:
    request = mocks.openai.last_request
    assert request.path == "/v1/chat/completions"
    assert request.json().get("stream", False) is stream
    _saw_stored_key(request, "authorization", f"Bearer {OPENAI_KEY}", user.token)
    return request


def _anthropic_messages(mocks: MockProviders, user: User, stream: bool) -> RecordedRequest:
    request = mocks.anthropic.last_request
    assert request.path == "/v1/messages"
    assert request.json().get("stream", False) is stream
    _saw_stored_key(request, "x-api-key", ANTHROPIC_KEY, user.token)
    return request


def _pieces(chunks: list[str]) -> list[str]:
    pieces = [c for c in chunks if c]
    assert "".join(pieces) == REPLY_TEXT
    assert pieces == list(REPLY_TOKENS), "the stream was not passed on piece by piece"
    return pieces


# ------------------------------------------------------------------------- LangChain
@pytest.fixture
def chat_openai(client_user: User) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=f"{client_user.relay.url}/relay/openai/v1",
        api_key=client_user.token,
        max_retries=0,
    )


@pytest.fixture
def chat_anthropic(client_user: User) -> ChatAnthropic:
    return ChatAnthropic(
        model=CLAUDE_MODEL,
        base_url=f"{client_user.relay.url}/relay/anthropic",
        api_key=client_user.token,
        max_tokens=64,
        max_retries=0,
    )


def test_langchain_openai_invoke(
    chat_openai: ChatOpenAI, client_user: User, mocks: MockProviders
) -> None:
    message = chat_openai.invoke(PROMPT)
    assert message.text == REPLY_TEXT
    _openai_chat(mocks, client_user, stream=False)
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == len(REPLY_TOKENS)


def test_langchain_openai_stream(
    chat_openai: ChatOpenAI, client_user: User, mocks: MockProviders
) -> None:
    chunks = [chunk.text for chunk in chat_openai.stream(PROMPT)]
    _pieces(chunks)
    _openai_chat(mocks, client_user, stream=True)


async def test_langchain_openai_async_stream(
    chat_openai: ChatOpenAI, client_user: User, mocks: MockProviders
) -> None:
    assert (await chat_openai.ainvoke(PROMPT)).text == REPLY_TEXT
    chunks = [chunk.text async for chunk in chat_openai.astream(PROMPT)]
    _pieces(chunks)
    _openai_chat(mocks, client_user, stream=True)


def test_langchain_anthropic_invoke(
    chat_anthropic: ChatAnthropic, client_user: User, mocks: MockProviders
) -> None:
    message = chat_anthropic.invoke(PROMPT)
    assert message.text == REPLY_TEXT
    _anthropic_messages(mocks, client_user, stream=False)


def test_langchain_anthropic_stream(
    chat_anthropic: ChatAnthropic, client_user: User, mocks: MockProviders
) -> None:
    chunks = [chunk.text for chunk in chat_anthropic.stream(PROMPT)]
    _pieces(chunks)
    _anthropic_messages(mocks, client_user, stream=True)


async def test_langchain_anthropic_async_stream(
    chat_anthropic: ChatAnthropic, client_user: User, mocks: MockProviders
) -> None:
    assert (await chat_anthropic.ainvoke(PROMPT)).text == REPLY_TEXT
    chunks = [chunk.text async for chunk in chat_anthropic.astream(PROMPT)]
    _pieces(chunks)
    _anthropic_messages(mocks, client_user, stream=True)


def test_langchain_relay_refusal_is_an_error(client_user: User, mocks: MockProviders) -> None:
    """A bad relay token: the relay's own 401 reaches the caller; nothing goes upstream."""
    import openai

    llm = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=f"{client_user.relay.url}/relay/openai/v1",
        api_key="byok_rt_not-a-real-token-0000000000000000000000000",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        llm.invoke(PROMPT)
    # The relay's {"error": "<what to do>"}: the SDK keeps the string as `.body` (its
    # message text only quotes an OpenAI-shaped {"error": {"message": …}}).
    assert "register with POST /users" in str(caught.value.body)
    assert not mocks.openai.requests


def test_langchain_anthropic_bad_token(client_user: User, mocks: MockProviders) -> None:
    import anthropic

    llm = ChatAnthropic(
        model=CLAUDE_MODEL,
        base_url=f"{client_user.relay.url}/relay/anthropic",
        api_key="byok_rt_not-a-real-token-0000000000000000000000000",
        max_retries=0,
    )
    with pytest.raises(anthropic.AuthenticationError, match="register with POST /users"):
        llm.invoke(PROMPT)
    assert not mocks.anthropic.requests


# --------------------------------------------------------------------------- LiteLLM
def _litellm_args(user: User, provider: str) -> dict[str, Any]:
    base = f"{user.relay.url}/relay/openai/v1" if provider == "openai" else (
        f"{user.relay.url}/relay/anthropic"
    )  # fmt: skip
    model = "openai/gpt-4o-mini" if provider == "openai" else f"anthropic/{CLAUDE_MODEL}"
    return {
        "model": model,
        "api_base": base,
        "api_key": user.token,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
        "num_retries": 0,
    }


def _delta(chunk: Any) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_litellm_completion(
    litellm: ModuleType, client_user: User, mocks: MockProviders, provider: str
) -> None:
    response = litellm.completion(**_litellm_args(client_user, provider))
    assert response.choices[0].message.content == REPLY_TEXT
    assert response.usage.completion_tokens == len(REPLY_TOKENS)
    check = _openai_chat if provider == "openai" else _anthropic_messages
    check(mocks, client_user, stream=False)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_litellm_completion_stream(
    litellm: ModuleType, client_user: User, mocks: MockProviders, provider: str
) -> None:
    stream = litellm.completion(**_litellm_args(client_user, provider), stream=True)
    _pieces([_delta(chunk) for chunk in stream])
    check = _openai_chat if provider == "openai" else _anthropic_messages
    check(mocks, client_user, stream=True)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_litellm_acompletion_stream(
    litellm: ModuleType, client_user: User, mocks: MockProviders, provider: str
) -> None:
    response = await litellm.acompletion(**_litellm_args(client_user, provider))
    assert response.choices[0].message.content == REPLY_TEXT
    stream = await litellm.acompletion(**_litellm_args(client_user, provider), stream=True)
    _pieces([_delta(chunk) async for chunk in stream])
    check = _openai_chat if provider == "openai" else _anthropic_messages
    check(mocks, client_user, stream=True)


def test_litellm_relay_refusal_is_an_error(
    litellm: ModuleType, client_user: User, mocks: MockProviders
) -> None:
    """A model the relay token has no key for: the relay's 400 (what to do) comes back as
    LiteLLM's BadRequestError; nothing goes upstream."""
    args = _litellm_args(client_user, "openai")
    args["api_base"] = f"{client_user.relay.url}/relay/groq/openai/v1"
    with pytest.raises(litellm.BadRequestError) as caught:
        litellm.completion(**args)
    assert caught.value.status_code == 400
    assert "POST /keys/groq first" in str(caught.value.body)
    assert not mocks.openai.requests


def test_litellm_anthropic_bad_token(
    litellm: ModuleType, client_user: User, mocks: MockProviders
) -> None:
    args = _litellm_args(client_user, "anthropic")
    args["api_key"] = "byok_rt_not-a-real-token-0000000000000000000000000"
    with pytest.raises(litellm.AuthenticationError, match="register with POST /users"):
        litellm.completion(**args)
    assert not mocks.anthropic.requests


def test_the_loopback_guard_sees_lookups_and_connections() -> None:
    """The guard above is not vacuous: a lookup and a connection attempt are recorded."""
    import socket

    seen: set[str] = set()
    _watching.append(seen)
    try:
        socket.getaddrinfo("localhost", 9)
        with socket.socket() as sock, pytest.raises(OSError):
            sock.connect(("127.0.0.2", 9))
    finally:
        _watching.remove(seen)
    assert {"localhost", "127.0.0.2"} <= seen
