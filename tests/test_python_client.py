"""The Python client (``byok_relay.client``): SSE parsing on its own, then against the relay."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from providers.mock import REPLY_TEXT, REPLY_TOKENS, SLOW_EVENTS

from byok_relay.client import RelayClient, RelayError, SSEEvent, extract_text, parse_sse

SLOW_TEXT = "".join(
    REPLY_TOKENS[i] if i < len(REPLY_TOKENS) else f"tok{i} " for i in range(SLOW_EVENTS)
)
MESSAGES = [{"role": "user", "content": "Say hello"}]
OPENAI_KEY = "sk-fake-python-client-1234"


# --- SSE parsing (no relay needed) ---------------------------------------------------

SSE_BODY = (
    '\ufeffevent: a\r\ndata: {"x":1}\r\n\r\n'
    ": keep-alive\rdata: line1\rdata:line2\r\r"
    "id: 7\nretry: 1500\ndata: h\u00e9llo \u2713\n\n"
    "data: [DONE]\n\n"
    "data: after\n\n"
).encode()
SSE_EXPECTED = [
    SSEEvent("a", '{"x":1}'),
    SSEEvent("message", "line1\nline2"),
    SSEEvent("message", "h\u00e9llo \u2713", id="7", retry=1500),
]


async def _collect(chunks: list[bytes], **kwargs: Any) -> list[SSEEvent]:
    async def gen() -> Any:
        for c in chunks:
            yield c

    return [ev async for ev in parse_sse(gen(), **kwargs)]


async def test_parse_sse_every_split() -> None:
    assert await _collect([SSE_BODY]) == SSE_EXPECTED
    for i in range(len(SSE_BODY) + 1):
        assert await _collect([SSE_BODY[:i], SSE_BODY[i:]]) == SSE_EXPECTED, i
    assert await _collect([bytes([b]) for b in SSE_BODY]) == SSE_EXPECTED


async def test_parse_sse_details() -> None:
    events = await _collect([SSE_BODY], stop_on_done=False)
    assert [e.data for e in events[-2:]] == ["[DONE]", "after"]
    # a last event without its blank line is still delivered
    assert await _collect([b"data: x\ndata: y"]) == [SSEEvent("message", "x\ny")]
    assert await _collect([b"data: x\r", b"\r"]) == [SSEEvent("message", "x")]
    assert SSE_EXPECTED[0].json() == {"x": 1}
    assert SSE_EXPECTED[1].json_or_none() is None


def test_extract_text() -> None:
    assert extract_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert extract_text({"choices": [{"message": {"content": "whole"}}]}) == "whole"
    assert extract_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert (
        extract_text({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "yo"}})
        == "yo"
    )
    assert extract_text({"type": "message", "content": [{"type": "text", "text": "m"}]}) == "m"
    gemini = {"candidates": [{"content": {"parts": [{"text": "g"}, {"text": "e"}]}}]}
    assert extract_text(gemini) == "ge"
    assert extract_text({"type": "ping"}) == ""
    assert extract_text(None) == ""
    assert SSEEvent(data='{"choices":[{"delta":{"content":"x"}}]}').text == "x"
    assert SSEEvent(data="[DONE]").text == ""


def test_relay_error() -> None:
    err = RelayError(401, "invalid token", {"error": "invalid token"}, {"X-Relay-Request-Id": "r1"})
    assert err.status == 401 and err.message == "invalid token"
    assert err.request_id == "r1"
    assert "401" in str(err)


# --- against the relay ----------------------------------------------------------------


async def test_python_client_end_to_end(relay: Any, mocks: Any) -> None:
    app_secret = relay.env.get("APP_SECRET") or None
    async with RelayClient(relay.url, app_id="py-client-test", app_secret=app_secret) as client:
        token = await client.register()
        assert token and client.token == token
        assert await client.ensure_token() == token

        assert await client.store_key("openai", OPENAI_KEY) == {"ok": True, "provider": "openai"}
        keys = await client.list_keys()
        assert keys["providers"] == ["openai"]
        (info,) = keys["keys"]
        assert info["provider"] == "openai" and info["hint"] == "1234"
        assert OPENAI_KEY not in str(keys)

        # non-streamed, unified route
        answer = await client.chat("openai/gpt-4o-mini", MESSAGES)
        assert extract_text(answer) == REPLY_TEXT

        # non-streamed, provider route
        answer = await client.request(
            "openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}
        )
        assert answer["choices"][0]["message"]["content"] == REPLY_TEXT
        upstream = mocks.openai.last_request
        assert upstream.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
        assert "x-relay-token" not in upstream.headers

        # streamed: events arrive as the mock sends them (20 ms apart)
        t0 = time.monotonic()
        arrivals: list[float] = []
        text = ""
        async for event in client.stream_chat("openai/mock-slow", MESSAGES):
            assert isinstance(event, SSEEvent)
            if event.text:
                arrivals.append(time.monotonic() - t0)
                text += event.text
        assert text == SLOW_TEXT
        assert len(arrivals) == SLOW_EVENTS
        assert arrivals[-1] - arrivals[0] >= 0.2, "the stream was buffered"
        assert mocks.openai.last_request.json()["model"] == "mock-slow"

        # streamed through the provider route, with the JSON of each chunk
        chunks = [
            ev.json()
            async for ev in client.stream(
                "openai/v1/chat/completions",
                {"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES},
            )
        ]
        assert chunks[0]["object"] == "chat.completion.chunk"
        assert "".join(extract_text(c) for c in chunks) == REPLY_TEXT

        # usage and routing table
        stats = await client.stats()
        assert isinstance(stats, dict) and "total" in stats and "top_models" in stats
        models = await client.models()
        assert "openai" in models["providers"]

        # errors: the relay's JSON message, with its status
        with pytest.raises(RelayError) as info_err:
            await client.store_key("no-such-provider", OPENAI_KEY)
        assert info_err.value.status == 400
        assert "provider" in info_err.value.message.lower()
        with pytest.raises(RelayError) as info_err:
            await client.chat("anthropic/claude-3-5-haiku-latest", MESSAGES, max_tokens=16)
        assert info_err.value.status == 400  # no anthropic key stored
        assert "/keys/anthropic" in info_err.value.message

        # delete the key
        assert await client.delete_key("openai") == {"ok": True, "deleted": True}
        assert await client.delete_key("openai") == {"ok": True, "deleted": False}
        assert (await client.list_keys())["providers"] == []

        # rotate: a new token, the old one is dead, keys kept
        await client.store_key("openai", OPENAI_KEY)
        old = client.token
        assert old is not None
        new = await client.rotate_token()
        assert new != old and client.token == new
        assert (await client.list_keys())["providers"] == ["openai"]
        with pytest.raises(RelayError) as info_err:
            await client.for_token(old).list_keys()
        assert info_err.value.status == 401

        # revoke: the token stops working at once
        await client.revoke_token()
        assert client.token is None
        with pytest.raises(RelayError) as info_err:
            await client.for_token(new).list_keys()
        assert info_err.value.status == 401
        with pytest.raises(RelayError) as info_err:
            await client.for_token(new).chat("openai/gpt-4o-mini", MESSAGES)
        assert info_err.value.status == 401
        # no token at all
        with pytest.raises(RelayError) as info_err:
            await client.list_keys()
        assert info_err.value.status == 401


async def test_python_client_stream_break_cancels_upstream(relay: Any, mocks: Any) -> None:
    app_secret = relay.env.get("APP_SECRET") or None
    async with aiohttp.ClientSession() as session:
        client = RelayClient(
            relay.url, app_id="py-client-test", app_secret=app_secret, session=session
        )
        await client.register()
        await client.store_key("openai", OPENAI_KEY)
        seen = 0
        stream = client.stream(
            "openai/v1/chat/completions",
            {"model": "mock-slow", "stream": True, "messages": MESSAGES},
        )
        async for event in stream:
            if event.text:
                seen += 1
            if seen == 3:
                break
        await stream.aclose()
        assert seen == 3

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(s.disconnected for s in mocks.openai.streams):
                break
            await asyncio.sleep(0.05)
        streams = mocks.openai.streams
        assert streams and streams[-1].disconnected, f"upstream not cancelled: {streams}"
        assert streams[-1].events_sent < SLOW_EVENTS

        # deleting the user erases keys and kills the token
        await client.delete_user()
        assert client.token is None
        # the caller's session is not closed by the client
        await client.close()
        assert not session.closed


async def test_python_client_json_answer_to_stream(relay: Any) -> None:
    app_secret = relay.env.get("APP_SECRET") or None
    async with RelayClient(relay.url, app_id="py-client-test", app_secret=app_secret) as client:
        await client.register()
        await client.store_key("openai", OPENAI_KEY)
        events = [ev async for ev in client.stream_chat("openai/mock-json-for-stream", MESSAGES)]
        assert len(events) == 1
        assert extract_text(events[0].json()) == REPLY_TEXT
        await client.delete_user()


async def test_python_client_spend_control(relay: Any, mocks: Any) -> None:
    """Mint, use, list and revoke a scoped token; set, read and clear the owner budget."""
    app_secret = relay.env.get("APP_SECRET") or None
    async with RelayClient(relay.url, app_id="py-client-spend", app_secret=app_secret) as client:
        await client.register()
        await client.store_key("openai", OPENAI_KEY)

        minted = await client.create_scoped_token(
            label="tab", providers=["openai"], models=["gpt-4o*"], ttl_s=900,
            budget={"requests": 2},
        )  # fmt: skip
        assert minted["token"].startswith("byok_st_") and minted["label"] == "tab"
        assert minted["scope"]["providers"] == ["openai"]
        assert 0 < minted["expires_at"] / 1000 - time.time() <= 900  # ms, as register answers
        assert client.token != minted["token"], "minting must not replace the relay token"

        scoped = client.for_token(minted["token"])
        assert extract_text(await scoped.chat("openai/gpt-4o-mini", MESSAGES)) == REPLY_TEXT
        with pytest.raises(RelayError) as refused:
            await scoped.chat("openai/gpt-4.1", MESSAGES)
        assert refused.value.status == 403 and "gpt-4.1" in refused.value.message
        assert extract_text(await scoped.chat("openai/gpt-4o", MESSAGES)) == REPLY_TEXT
        with pytest.raises(RelayError) as refused:
            await scoped.chat("openai/gpt-4o-mini", MESSAGES)
        assert refused.value.status == 429 and refused.value.body["code"] == "budget_exceeded"
        with pytest.raises(RelayError) as refused:
            await scoped.list_keys()  # a scoped token cannot manage the account
        assert refused.value.status == 403

        (listed,) = await client.list_tokens()
        assert listed["id"] == minted["id"] and "token" not in listed
        assert listed["usage"]["requests"] == 2
        assert await client.revoke_token(minted["id"]) == {"ok": True, "deleted": True}
        assert await client.list_tokens() == []
        with pytest.raises(RelayError) as refused:
            await scoped.chat("openai/gpt-4o-mini", MESSAGES)
        assert refused.value.status == 401
        assert client.token is not None, "revoking a scoped token keeps the relay token"

        await client.set_budget({"window": "day", "providers": {"openai": {"requests": 3}}})
        got = await client.get_budget()
        assert got["budget"]["window"] == "day"
        assert got["budget"]["providers"] == {"openai": {"requests": 3}}
        assert got["usage"]["requests"] == 2  # what the scoped token spent counts for the owner
        await client.chat("openai/gpt-4o-mini", MESSAGES)
        with pytest.raises(RelayError) as refused:
            await client.chat("openai/gpt-4o-mini", MESSAGES)
        assert refused.value.status == 429 and "Retry-After" in refused.value.headers
        await client.set_budget(None)
        assert (await client.get_budget())["budget"] is None
        assert extract_text(await client.chat("openai/gpt-4o-mini", MESSAGES)) == REPLY_TEXT
