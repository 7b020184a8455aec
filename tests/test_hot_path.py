"""What the hot path's shortcuts must not change (issue 14): concurrent cache misses share
one read and say so on /metrics; an invalidation never lets a later request join a read
that started before it; the in-process rate-limit windows refuse, name their reset and
open again."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from providers.relay import CHAT, StartRelay, openai_user

from byok_relay.cache import InvalidatingCache

CHAT_PATH = "/relay/openai/v1/chat/completions"


def _metric(text: str, name: str, cache: str) -> float:
    found = re.search(rf'^{name}{{cache="{cache}"}} (\S+)$', text, re.M)
    assert found, f"{name}{{cache={cache!r}}} missing from /metrics"
    return float(found.group(1))


def test_concurrent_misses_share_one_read_and_metrics_count_them(
    start_relay: StartRelay,
) -> None:
    # CACHE_TTL_S=0: every request misses, so only sharing can save reads.
    relay = start_relay(CACHE_TTL_S="0")
    user = openai_user(relay)
    n = 48

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=relay.url, limits=limits, timeout=30,
                                     trust_env=False) as client:  # fmt: skip
            # Open every connection first, so the n requests arrive together.
            await asyncio.gather(*(client.get("/health") for _ in range(n)))
            answers = await asyncio.gather(
                *(client.post(CHAT_PATH, json=CHAT, headers=user.headers) for _ in range(n))
            )
        return [a.status_code for a in answers]

    before = httpx.get(relay.url + "/metrics").text
    assert asyncio.run(burst()) == [200] * n
    after = httpx.get(relay.url + "/metrics").text
    counted = {}
    for cache in ("tokens", "keys"):
        counted[cache] = tuple(
            _metric(after, name, cache) - _metric(before, name, cache)
            for name in ("byok_relay_cache_reads_total", "byok_relay_cache_shared_misses_total")
        )
        assert sum(counted[cache]) == n, counted  # every request missed once, counted once
    # The token look-up is the first await of each request: the burst meets it together.
    # (By the key look-up the requests have drifted apart, so sharing there is by chance.)
    reads, shared = counted["tokens"]
    assert shared > 0 and reads < n, counted


def test_an_invalidation_detaches_the_read_in_flight() -> None:
    """A request that arrives after a revoke must not join a read that began before it:
    it would get the pre-revoke row."""

    async def scenario() -> None:
        cache: InvalidatingCache[str, str] = InvalidatingCache("tokens", ttl=60)
        release = asyncio.Event()
        calls: list[str] = []

        async def read_old() -> str:
            calls.append("old")
            await release.wait()
            return "before-revoke"

        async def read_new() -> str:
            calls.append("new")
            return "after-revoke"

        first = asyncio.ensure_future(cache.load("t", read_old))
        joined = asyncio.ensure_future(cache.load("t", read_new))  # shares the first read
        await asyncio.sleep(0)
        cache.drop("t")  # the revoke, while the first read is still out
        later = await cache.load("t", read_new)
        release.set()
        assert later == "after-revoke"
        assert await first == "before-revoke" and await joined == "before-revoke"
        assert calls == ["old", "new"]
        # The read that raced the revoke, finishing last, did not overwrite the new row.
        assert cache.get("t") == "after-revoke"
        assert (cache.reads, cache.shared) == (2, 1)

    asyncio.run(scenario())


def test_a_waiter_that_leaves_does_not_cancel_the_shared_read() -> None:
    async def scenario() -> None:
        cache: InvalidatingCache[str, str] = InvalidatingCache("keys", ttl=60)
        release = asyncio.Event()

        async def read() -> str:
            await release.wait()
            return "value"

        leader = asyncio.ensure_future(cache.load("k", read))
        follower = asyncio.ensure_future(cache.load("k", read))
        await asyncio.sleep(0)
        leader.cancel()  # its client went away
        with pytest.raises(asyncio.CancelledError):
            await leader
        release.set()
        assert await follower == "value"
        assert cache.get("k") == "value"

    asyncio.run(scenario())


def test_in_process_rate_limit_refuses_names_its_reset_and_opens_again(
    start_relay: StartRelay,
) -> None:
    user = openai_user(start_relay(RATE_LIMIT_RELAY="2/second"))
    with user.client() as client:
        # The window opens at the first hit (not on a clock boundary), so the first two
        # pass and the third, milliseconds later, is refused.
        answers = [client.post(CHAT_PATH, json=CHAT) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[2]
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["ratelimit-limit"] == "2"
        assert "RATE_LIMIT_RELAY" in refused.json()["error"]
        time.sleep(1.1)
        assert client.post(CHAT_PATH, json=CHAT).status_code == 200  # a new window
