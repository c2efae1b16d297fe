"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, on a page of a
running Parley (server, worker, Redis and the stand-in model) serving the built client.

Playwright drives ``/usr/bin/chromium`` (``PARLEY_CHROMIUM`` overrides it; ``make test``
installs Debian's package when it is missing): it never downloads a browser of its own.
Screenshots of the main states land in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from redis.asyncio import Redis

from tests.browser.cutter import SocketCutter
from tests.browser.webclient import ROOT, built_client
from tests.conftest import Parley, running_parley

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


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built web client (built now if missing or stale)."""
    return built_client()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The Chromium binary to drive."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package "
            "(or set PARLEY_CHROMIUM to a Chromium binary)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """One headless Chromium for the whole run."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        await browser.close()


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


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A desktop-sized page."""
    async for p in new_page(browser):
        yield p


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[Page]:
    """A phone-sized page (390 x 844 CSS pixels, touch)."""
    async for p in new_page(
        browser,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    ):
        yield p


def web_parley(
    redis_url: str, redis: Redis[str], web_dist: Path, **overrides: Any
) -> AbstractAsyncContextManager[Parley]:
    """``running_parley`` serving the built web client at ``/``."""
    return running_parley(redis_url, redis, web_dist=web_dist, **overrides)


@pytest.fixture
async def stack(redis_url: str, redis: Redis[str], web_dist: Path) -> AsyncIterator[Parley]:
    """A running Parley serving the web client; the stand-in model types visibly slowly."""
    async with web_parley(redis_url, redis, web_dist) as parley:
        parley.standin.tokens = 24
        parley.standin.delay_ms = 100
        yield parley


@pytest.fixture
async def cutter(stack: Parley) -> AsyncIterator[SocketCutter]:
    """A proxy in front of ``stack`` that can cut the chat sockets opened through it."""
    port = urlsplit(stack.url).port
    assert port is not None
    async with SocketCutter(port) as proxy:
        yield proxy


async def snap(page: Page, name: str) -> Path:
    """Save a screenshot of ``page`` as ``test-artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


def token_of(url: str) -> str:
    """The ``token`` query parameter of a page URL."""
    match = re.search(r"[?&]token=([0-9a-f-]+)", url)
    assert match, f"no token in {url}"
    return match.group(1)
