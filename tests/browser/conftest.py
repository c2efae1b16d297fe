"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, on a page of a
running Parley (server, worker, Redis and the stand-in model) serving the built client.

Playwright drives ``/usr/bin/chromium`` (``PARLEY_CHROMIUM`` overrides it; ``make test``
installs Debian's package when it is missing): it never downloads a browser of its own.
Screenshots of the main states land in ``test-artifacts/browser/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis

from tests.browser.cutter import SocketCutter
from tests.browser.webclient import built_client
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, new_page, web_parley
from tests.support.parley import Parley


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
