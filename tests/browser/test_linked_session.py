"""A token in the URL never silently replaces this browser's session (session fixation)."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Request, expect

from tests.support.browser import new_page, snap, token_of
from tests.support.parley import Parley

pytestmark = pytest.mark.browser

STORED_TOKEN_JS = "() => window.localStorage.getItem('parley.token')"


async def _session(stack: Parley, name: str) -> str:
    async with aiohttp.ClientSession() as http:
        return await stack.create_session(http, name)


def _asked_for(page: Page, token: str) -> list[str]:
    """URLs of the page's API requests and sockets that use ``token`` (filled as the page
    runs); loading the page from the link itself is not one."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        named = token in request.url or token in request.headers.get("authorization", "")
        if named and ("/refresh_token" in request.url or "/chat" in request.url):
            seen.append(request.url)

    page.on("request", on_request)
    page.on("websocket", lambda ws: seen.append(ws.url) if token in ws.url else None)
    return seen


async def test_a_link_to_another_session_asks_before_replacing_mine(
    page: Page, stack: Parley
) -> None:
    # The page runs under the server's strict CSP: nothing of it may be blocked.
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    await page.goto(stack.url)
    await page.get_by_role("textbox", name="Your name").fill("Ada")
    await page.get_by_role("button", name="Start chatting").click()
    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    mine = token_of(page.url)
    theirs = await _session(stack, "Mallory")
    used = _asked_for(page, theirs)

    # A link with someone else's token: the page asks, and uses nothing meanwhile.
    await page.goto(f"{stack.url}/?token={theirs}")
    dialog = page.get_by_role("alertdialog", name="Open the conversation from this link?")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("replaces your current conversation (as Ada)")
    keep = page.get_by_role("button", name="Keep my conversation")
    await expect(keep).to_be_focused()
    await snap(page, "linked-session")
    assert await page.evaluate(STORED_TOKEN_JS) == mine
    assert not used, f"the linked session was used before the person agreed: {used}"

    # Keeping mine: my conversation, my token in the URL; the link's never used.
    await keep.click()
    await expect(page.get_by_text("Chatting as Ada")).to_be_visible()
    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    assert token_of(page.url) == mine and await page.evaluate(STORED_TOKEN_JS) == mine
    assert not used

    # Opening it, on purpose this time (a link of today, the token in its fragment, to
    # the page already open): it becomes this browser's conversation.
    await page.goto(f"{stack.url}/#token={theirs}")
    await expect(dialog).to_be_visible()
    await page.get_by_role("button", name="Open the linked conversation").click()
    await expect(page.get_by_text("Chatting as Mallory")).to_be_visible()
    assert await page.evaluate(STORED_TOKEN_JS) == theirs
    assert page.url == f"{stack.url}/#token={theirs}"  # in the fragment, not the query
    # A reload of the same URL asks nothing.
    await page.reload()
    await expect(page.get_by_text("Chatting as Mallory")).to_be_visible()
    await expect(page.get_by_role("alertdialog")).to_have_count(0)
    assert not blocked, blocked


async def test_a_link_in_a_fresh_browser_asks_too(browser: Browser, stack: Parley) -> None:
    theirs = await _session(stack, "Mallory")
    async for page in new_page(browser):
        used = _asked_for(page, theirs)
        await page.goto(f"{stack.url}/?token={theirs}")
        await expect(page.get_by_role("alertdialog")).to_contain_text(
            "start a conversation of your own"
        )
        await page.get_by_role("button", name="Start my own conversation").click()
        await expect(page.get_by_role("textbox", name="Your name")).to_be_visible()
        assert "token=" not in page.url and not used
        assert await page.evaluate(STORED_TOKEN_JS) is None
