"""The web client in a real Chromium against a real server, worker and Redis.

The stand-in model answers ``"Reply to: <message>"`` padded with filler words, one word
per delta, slowly enough (``delay_ms``) that a reply can be watched as it streams in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, Route, WebSocket, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from redis.asyncio import Redis

from testkit.standin import reply_text
from tests.browser.cutter import SocketCutter
from tests.browser.shots import readme_shot
from tests.support.browser import new_page, snap, token_of, web_parley
from tests.support.parley import Parley

pytestmark = pytest.mark.browser

REFRESH = re.compile(r"/refresh_token$")

# A reply's text as the page shows it: white space collapsed, as innerText does.
PARTIAL_REPLY_JS = """
([index, minLength]) => {
  const reply = document.querySelectorAll('li[data-role="assistant"]')[index];
  if (!reply || reply.dataset.streaming !== 'true') return null;
  const text = reply.querySelector('.bubble').innerText.replace(/\\s+/g, ' ').trim();
  return text.length >= minLength ? text : null;
}
"""


def words(text: str) -> str:
    """``text`` with white space collapsed, as the page renders it."""
    return " ".join(text.split())


def replies(page: Page) -> Locator:
    return page.locator('li[data-role="assistant"]')


def user_messages(page: Page) -> Locator:
    return page.locator('li[data-role="user"] .bubble')


async def start_session(page: Page, url: str, name: str = "Ada") -> str:
    """Open the page, start a session as ``name``; returns its token."""
    await page.goto(url)
    await page.get_by_role("textbox", name="Your name").fill(name)
    await page.get_by_role("button", name="Start chatting").click()
    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    return token_of(page.url)


async def send(page: Page, text: str) -> None:
    """Type ``text`` in the message box and press Enter."""
    box = page.get_by_role("textbox", name="Message")
    await box.fill(text)
    await box.press("Enter")


async def partial_reply(page: Page, index: int, min_length: int = 1) -> str:
    """The text of reply ``index`` caught while it is still streaming."""
    handle = await page.wait_for_function(
        PARTIAL_REPLY_JS, arg=[index, min_length], polling="raf", timeout=15_000
    )
    text: str = await handle.json_value()
    return text


async def finished_reply(page: Page, index: int) -> str:
    """The text of reply ``index`` once it has ended."""
    reply = replies(page).nth(index)
    await expect(reply).to_have_attribute("data-streaming", "false")
    return words(await reply.locator(".bubble").inner_text())


@dataclass
class Socket:
    """A WebSocket of the page, as the page saw it."""

    url: str
    #: The server's frames, parsed, in the order the page received them.
    events: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


def watch_sockets(page: Page) -> list[Socket]:
    """Every WebSocket the page opens from now on, with the events it receives."""
    sockets: list[Socket] = []

    def on_socket(ws: WebSocket) -> None:
        socket = Socket(ws.url)
        sockets.append(socket)

        def on_frame(payload: str | bytes) -> None:
            if isinstance(payload, str):
                socket.events.append(json.loads(payload))

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return sockets


async def test_a_reply_streams_in_and_the_conversation_survives_a_reload(
    page: Page, stack: Parley
) -> None:
    await page.goto(stack.url)
    await expect(page.get_by_role("heading", name="Chat with Parley")).to_be_visible()
    await snap(page, "start")
    token = await start_session(page, stack.url)
    await expect(page.get_by_role("textbox", name="Message")).to_be_focused()

    first = "What is Parley, in a few words?"
    second = "And how does it stream replies?"
    expected_first = words(reply_text(first, stack.standin.tokens))
    expected_second = words(reply_text(second, stack.standin.tokens))
    writing = page.get_by_role("img", name="Parley is writing")

    await send(page, first)
    partial = await partial_reply(page, 0, min_length=len("Reply to: What"))
    assert expected_first.startswith(partial) and len(partial) < len(expected_first)
    await expect(replies(page).nth(0).get_by_role("img", name="Parley is writing")).to_be_visible()
    await expect(page.get_by_role("button", name="Stop the reply")).to_be_visible()
    # The second message, sent while the first reply streams, waits for its turn.
    await send(page, second)
    await expect(user_messages(page)).to_have_text([first, second])
    await expect(page.locator('li[data-role="user"]').nth(1)).to_contain_text("Queued")
    assert await finished_reply(page, 0) == expected_first

    await partial_reply(page, 1, min_length=len("Reply to: And how does"))
    await readme_shot(page, "chat-streaming")
    assert await finished_reply(page, 1) == expected_second
    await expect(writing).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop the reply")).to_have_count(0)
    await snap(page, "chat-done")

    # A reload, then the bare URL (the token is in localStorage): the same conversation.
    for url in (page.url, stack.url):
        await page.goto(url)
        await expect(user_messages(page)).to_have_text([first, second])
        await expect(replies(page)).to_have_count(2)
        assert await finished_reply(page, 0) == expected_first
        assert await finished_reply(page, 1) == expected_second
        assert token_of(page.url) == token
        await expect(page.locator("li.message time")).to_have_count(4)


async def test_a_reply_completes_after_the_socket_is_killed_mid_reply(
    page: Page, stack: Parley, cutter: SocketCutter
) -> None:
    sockets = watch_sockets(page)
    stack.standin.tokens = 40
    await start_session(page, cutter.url)
    prompt = "Tell me a long story"
    expected = words(reply_text(prompt, stack.standin.tokens))
    await send(page, prompt)
    partial = await partial_reply(page, 0, min_length=len("Reply to: Tell me a"))

    # The chat socket's TCP connection is cut at both ends, mid-reply.
    assert cutter.cut() == 1
    await page.wait_for_selector('[data-connection="reconnecting"]', state="attached")
    await expect(page.get_by_role("status").filter(has_text="Connection lost")).to_be_visible()
    await snap(page, "reconnecting")

    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    assert await finished_reply(page, 0) == expected
    assert expected.startswith(partial)
    # The new socket resumed after the last event the page had, and carried the rest of
    # the reply (the tokens missed meanwhile, then the live ones) and its end.
    first, second = sockets
    resumed_after = re.search(r"[?&]after=([0-9]+-[0-9]+)", second.url)
    assert resumed_after, second.url
    assert resumed_after.group(1) == first.of_type("token")[-1]["event_id"]
    assert first.of_type("done") == []
    assert second.of_type("token") and len(second.of_type("done")) == 1
    streamed = "".join(e["content"] for e in first.of_type("token") + second.of_type("token"))
    assert words(streamed) == expected
    await expect(replies(page)).to_have_count(1)


async def test_messages_typed_while_disconnected_wait_and_go_out_when_it_is_back(
    page: Page, stack: Parley, cutter: SocketCutter
) -> None:
    await start_session(page, cutter.url)
    # The server out of reach: the history load that starts each reconnect attempt fails.
    attempts = 0

    async def unreachable(route: Route) -> None:
        nonlocal attempts
        attempts += 1
        await route.abort()

    await page.route(REFRESH, unreachable)
    assert cutter.cut() == 1
    await expect(page.locator('[data-connection="reconnecting"]')).to_be_visible()

    await send(page, "Are you there?")
    waiting = page.locator('li[data-role="user"]').filter(has_text="Are you there?")
    await expect(waiting).to_have_attribute("data-status", "waiting")
    await expect(waiting).to_contain_text("Waiting for the connection")
    await expect(page.get_by_role("textbox", name="Message")).to_be_enabled()
    await snap(page, "waiting-for-connection")

    # "Retry now" starts an attempt at once (it fails: the server is still out of reach).
    retry = page.get_by_role("button", name="Retry now")
    before = attempts
    await retry.click()
    async with asyncio.timeout(10):
        while attempts == before:  # noqa: ASYNC110  (counted by the route handler)
            await asyncio.sleep(0.02)
    await expect(waiting).to_have_attribute("data-status", "waiting")

    await page.unroute(REFRESH)
    with contextlib.suppress(PlaywrightTimeoutError):
        await retry.click(timeout=1_000)  # unless the backoff timer was quicker
    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    await expect(waiting).to_have_attribute("data-status", "queued")
    expected = words(reply_text("Are you there?", stack.standin.tokens))
    assert await finished_reply(page, 0) == expected
    await expect(user_messages(page)).to_have_text(["Are you there?"])  # sent once


async def test_stop_ends_the_reply_mid_stream(page: Page, stack: Parley) -> None:
    stack.standin.tokens = 300
    stack.standin.delay_ms = 50  # 15 s if not stopped
    await start_session(page, stack.url)
    prompt = "Count to three hundred"
    expected = words(reply_text(prompt, stack.standin.tokens))
    await send(page, prompt)
    await partial_reply(page, 0, min_length=len("Reply to: Count to three hundred lorem"))

    await page.get_by_role("button", name="Stop the reply").click()
    reply = replies(page).nth(0)
    await expect(reply).to_have_attribute("data-stopped", "true", timeout=5_000)
    await expect(reply).to_have_attribute("data-streaming", "false")
    await expect(reply.get_by_text("Stopped", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Stop the reply")).to_have_count(0)
    stopped = await finished_reply(page, 0)
    assert expected.startswith(stopped) and len(stopped) < len(expected)
    await snap(page, "stopped")

    # The partial reply is what history holds, marked as stopped.
    await page.reload()
    assert await finished_reply(page, 0) == stopped
    await expect(replies(page).nth(0)).to_have_attribute("data-stopped", "true")
    # And the conversation goes on.
    await send(page, "Thanks")
    await partial_reply(page, 1)
    await page.get_by_role("button", name="Stop the reply").click()
    await expect(replies(page).nth(1)).to_have_attribute("data-stopped", "true", timeout=5_000)


async def test_an_expired_session_says_so_and_offers_a_new_one(
    browser: Browser, redis_url: str, redis: Redis[str], web_dist: Path
) -> None:
    async with web_parley(redis_url, redis, web_dist, session_ttl_seconds=3) as stack:
        async for page in new_page(browser):
            old_token = await start_session(page, stack.url, name="Grace")
            # Idle past the TTL: the server says the session expired and closes the socket.
            alert = page.get_by_role("alert").filter(has_text="This session has expired")
            await expect(alert).to_be_visible(timeout=20_000)
            await expect(page.locator('[data-connection="expired"]')).to_be_visible()
            await expect(page.get_by_role("textbox", name="Message")).to_be_disabled()
            await snap(page, "expired")

            await page.get_by_role("button", name="Start a new session").click()
            await expect(page.locator('[data-connection="open"]')).to_be_visible()
            assert token_of(page.url) != old_token
            await expect(page.get_by_text("Chatting as Grace")).to_be_visible()
            await send(page, "Hello again")
            assert await finished_reply(page, 0) == words(
                reply_text("Hello again", stack.standin.tokens)
            )

            # A link to the old session, once opened, leads to the start screen, which
            # says why.
            await page.goto(f"{stack.url}/?token={old_token}")
            await page.get_by_role("button", name="Open the linked conversation").click()
            await expect(page.get_by_text("Your last session has expired")).to_be_visible()
            await expect(page.get_by_role("textbox", name="Your name")).to_have_value("Grace")


async def test_on_a_phone_with_the_keyboard_alone_and_errors_in_words(
    phone: Page, redis_url: str, redis: Redis[str], web_dist: Path
) -> None:
    async with web_parley(redis_url, redis, web_dist, max_message_chars=40) as stack:
        page = phone
        await page.goto(stack.url)
        await expect(page.get_by_role("textbox", name="Your name")).to_be_focused()
        await page.keyboard.type("Ada")
        await page.keyboard.press("Enter")
        await expect(page.locator('[data-connection="open"]')).to_be_visible()
        await expect(page.get_by_role("textbox", name="Message")).to_be_focused()

        # Shift+Enter starts a new line; Enter sends.
        await page.keyboard.type("line one")
        await page.keyboard.press("Shift+Enter")
        await page.keyboard.type("line two")
        await page.keyboard.press("Enter")
        await expect(user_messages(page)).to_have_text(["line one\nline two"])
        await expect(page.get_by_role("textbox", name="Message")).to_have_value("")
        await finished_reply(page, 0)

        # The server refuses a message that is too long: the page says so in words.
        await page.keyboard.type("x" * 41)
        await page.keyboard.press("Enter")
        refused = page.locator('li[data-role="user"][data-status="refused"]')
        await expect(refused.get_by_role("alert")).to_contain_text(
            "That message is too long to send. The message has 41 characters; "
            "at most 40 are accepted."
        )
        body = await page.locator("body").inner_text()
        assert "message_too_long" not in body and "{" not in body
        await expect(refused.get_by_role("button", name="Send again")).to_be_visible()

        # Nothing overflows sideways on a phone.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
            "the page scrolls sideways"
        )
        await snap(page, "phone")


async def test_markdown_is_rendered_and_raw_html_is_not(page: Page, stack: Parley) -> None:
    stack.standin.delay_ms = 0
    stack.standin.tokens = 1  # no filler words after the closing fence
    await start_session(page, stack.url)
    prompt = (
        'see **bold** and `code` <img src="/x.png" onerror="window.pwned=1">'
        "<script>window.pwned=2</script> [a link](https://example.org)\n"
        "```\nprint('hi')\n```"
    )
    await send(page, prompt)
    reply = replies(page).nth(0)
    await expect(reply).to_have_attribute("data-streaming", "false")
    bubble = reply.locator(".bubble")
    await expect(bubble.locator("strong")).to_have_text("bold")
    await expect(bubble.locator("p code")).to_have_text("code")
    await expect(bubble.locator("pre code")).to_have_text("print('hi')\n")
    await expect(bubble.get_by_role("button", name="Copy code")).to_be_visible()
    link = bubble.get_by_role("link", name="a link")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(bubble.locator("img, script")).to_have_count(0)
    await expect(bubble).to_contain_text('<img src="/x.png"')  # shown as text
    assert await page.evaluate("window.pwned") is None
