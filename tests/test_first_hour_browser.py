"""The demo page as a first-time user meets it (Chromium): the token's expiry survives a
reload, errors speak the user's language, and the owner budget shows what is left."""

from __future__ import annotations

from typing import Any

import pytest
from test_browser import browser as browser
from test_browser import browser_required as browser_required
from test_browser import open_demo_registered, send_prompt

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_demo_first_visit(browser: Any, relay: Any, mocks: Any) -> None:
    page, errors = await open_demo_registered(browser, relay)
    shown = await page.inner_text("#token-info")
    assert "expires" in shown, shown

    # a reload keeps the token (client.js) and now also says when it expires
    await page.reload()
    await page.wait_for_selector("html[data-ready='1']", state="attached", timeout=15_000)
    assert await page.inner_text("#token-info") == shown

    # chatting before saving a key: words for the person at the page, not API jargon
    assert await send_prompt(page, "hello") == "error"
    said = await page.inner_text("#chat-msg")
    assert "You have not saved a key for OpenAI yet: paste one in step 2." in said, said
    assert "POST /keys" not in said

    # the owner budget: set it, spend it, see what is left, hit it
    assert "No budget set" in await page.inner_text("#budget-info")
    await page.fill("#budget-requests", "1")
    await page.click("#set-budget")
    await page.wait_for_function(
        "() => document.getElementById('budget-info').textContent.includes('1 of 1 requests left')"
    )
    await page.fill("#key-value", "sk-fake-first-hour-4242")
    await page.click("#save-key")
    await page.wait_for_selector("#key-list li[data-provider='openai']")
    assert await send_prompt(page, "one") == "done"
    await page.wait_for_function(
        "() => document.getElementById('budget-info').textContent.includes('0 of 1 requests left')",
        timeout=10_000,
    )
    assert await send_prompt(page, "two") == "error"
    said = await page.inner_text("#chat-msg")
    assert "Your budget for this period is used up (step 5). Try again in" in said, said
    assert (
        mocks.openai.last_request.headers.get("authorization") == "Bearer sk-fake-first-hour-4242"
    )

    await page.click("#remove-budget")
    await page.wait_for_function(
        "() => document.getElementById('budget-info').textContent.includes('No budget set')"
    )
    assert await send_prompt(page, "three") == "done"
    assert not [e for e in errors if "pageerror" in e], errors
    await page.context.close()
