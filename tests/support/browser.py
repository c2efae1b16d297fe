"""Helpers of the browser tests: Debian's Chromium, fresh pages, screenshots, a Parley
serving the built web client."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect
from redis.asyncio import Redis

from tests.browser.webclient import ROOT
from tests.support.parley import Parley, running_parley

CHROMIUM = Path(os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "browser"

# Web-first assertions poll until this many ms; the slowest wait here is a reconnect.
expect.set_options(timeout=15_000)


async def new_page(browser: Browser, **context: Any) -> AsyncIterator[Page]:
    """A page in a fresh browser context (no storage shared with other tests).

    Fails the test if the page raised an uncaught error.
    """
    ctx = await browser.new_context(**{"viewport": {"width": 1100, "height": 760}, **context})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        await ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def web_parley(
    redis_url: str, redis: Redis[str], web_dist: Path, **overrides: Any
) -> AbstractAsyncContextManager[Parley]:
    """``running_parley`` serving the built web client at ``/``."""
    return running_parley(redis_url, redis, web_dist=web_dist, **overrides)


async def snap(page: Page, name: str) -> Path:
    """Save a screenshot of ``page`` as ``test-artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


def token_of(url: str) -> str:
    """The session token a page URL holds, in its fragment (``/#token=``)."""
    match = re.search(r"#(?:.*&)?token=([0-9a-f-]+)", url)
    assert match, f"no token in {url}"
    return match.group(1)
