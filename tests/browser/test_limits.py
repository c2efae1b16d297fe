"""Refusals by admission limits, in words, with the wait, in the web client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from redis.asyncio import Redis

from tests.support.browser import snap, web_parley

pytestmark = pytest.mark.browser


async def test_a_message_past_the_limit_says_how_long_to_wait(
    page: Page, redis_url: str, redis: Redis[str], web_dist: Path
) -> None:
    limits = {"rate_messages_per_session": 1, "rate_window_s": 3}
    async with web_parley(redis_url, redis, web_dist, **limits) as stack:
        await page.goto(stack.url)
        await page.get_by_role("textbox", name="Your name").fill("Ada")
        await page.get_by_role("button", name="Start chatting").click()
        box = page.get_by_role("textbox", name="Message")
        await box.fill("first")
        await box.press("Enter")
        await expect(page.locator('li[data-role="assistant"]')).to_have_count(1)
        await box.fill("second")
        await box.press("Enter")
        refused = page.locator('li[data-role="user"][data-status="refused"]')
        await expect(refused.get_by_role("alert")).to_have_text(
            re.compile(r"Too many messages in a short time.*Try again in [1-3]\ss\.")
        )
        await snap(page, "too-many-requests")
        # Sent again once the wait is over, it goes through.
        await expect(refused.get_by_role("button", name="Send again")).to_be_visible()
        await page.wait_for_timeout(3_000)  # the window the page was told about
        await refused.get_by_role("button", name="Send again").click()
        await expect(page.locator('li[data-role="assistant"]')).to_have_count(2)
