"""The web client's conversations in a real Chromium against a real server, worker and
Redis: the sidebar (new, switch, rename, delete, titles), export, regenerate and edit
with their versions, a phone's drawer and the keyboard alone.

The stand-in model answers ``"Reply to: <message>"`` padded with filler words; asked for
a title, it answers the same way about the title request, so a title here starts with
``"Reply to: Message: "``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Download, Locator, Page, Request, Route, expect
from redis.asyncio import Redis

from testkit.standin import reply_text
from tests.browser.shots import readme_shot
from tests.browser.test_chat import finished_reply, replies, send, start_session, user_messages
from tests.support.browser import new_page, token_of, web_parley
from tests.support.parley import Parley

pytestmark = pytest.mark.browser

OWNER_JS = "() => window.localStorage.getItem('parley.owner')"
LIST = re.compile(r"/conversations\?")


def words(text: str) -> str:
    return " ".join(text.split())


async def downloaded(download: Download) -> str:
    """The text of a file the page downloaded."""
    path = Path(await download.path())
    return await asyncio.to_thread(path.read_text)


def requests_to(page: Page, path: str) -> list[str]:
    """URLs of the page's requests to ``path`` (filled as the page runs)."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.split("?")[0].endswith(path):
            seen.append(request.url)

    page.on("request", on_request)
    return seen


def sidebar(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Conversations")


def rows(page: Page) -> Locator:
    """The sidebar's conversation buttons, newest first."""
    return sidebar(page).locator("li.conversation .conversation-open")


async def listed(stack: Parley, owner: str) -> list[dict[str, Any]]:
    """The owner's conversations as the server lists them."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack.url}/conversations", params={"owner": owner}) as response,
    ):
        assert response.status == 200, await response.text()
        page: dict[str, Any] = await response.json()
        conversations: list[dict[str, Any]] = page["conversations"]
        return conversations


async def owner_of(page: Page) -> str:
    owner = await page.evaluate(OWNER_JS)
    assert isinstance(owner, str) and owner, "no owner token in localStorage"
    return owner


async def new_conversation(page: Page) -> str:
    """Start another conversation from the sidebar; returns its token."""
    before = token_of(page.url)
    await page.get_by_role("button", name="Start a new conversation").click()
    await expect(page).not_to_have_url(re.compile(f"token={before}"))
    await expect(page.locator('[data-connection="open"]')).to_be_visible()
    await expect(page.get_by_role("heading", name="Hello, Ada!")).to_be_visible()
    return token_of(page.url)


async def rename_via_api(stack: Parley, token: str, title: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.patch(f"{stack.url}/session", params={"token": token}, json={"title": title}) as r,
    ):
        assert r.status == 204, await r.text()


@pytest.fixture
async def quick(redis_url: str, redis: Redis[str], web_dist: Path) -> AsyncIterator[Parley]:
    """A stack with a stand-in that answers at once, in a few words, and that asks for
    no title: a conversation stays untitled until a person renames it, which is what
    these tests drive (``titling`` has titles on)."""
    async with web_parley(redis_url, redis, web_dist, conversation_titles=False) as parley:
        parley.standin.tokens = 8
        parley.standin.delay_ms = 5
        yield parley


@pytest.fixture
async def titling(redis_url: str, redis: Redis[str], web_dist: Path) -> AsyncIterator[Parley]:
    """A stack that titles conversations after their first reply, as shipped."""
    async with web_parley(redis_url, redis, web_dist, conversation_titles=True) as parley:
        parley.standin.tokens = 8
        parley.standin.delay_ms = 5
        yield parley


async def test_new_conversations_are_listed_and_switched_between(page: Page, quick: Parley) -> None:
    requests: list[tuple[str, str]] = []  # (URL, Authorization) of every request

    def on_request(request: Request) -> None:
        requests.append((request.url, request.headers.get("authorization", "")))

    page.on("request", on_request)
    first = await start_session(page, quick.url)
    owner = await owner_of(page)
    await send(page, "First question")
    await finished_reply(page, 0)
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).nth(0)).to_have_attribute("aria-current", "true")

    second = await new_conversation(page)
    assert second != first
    await send(page, "Second question")
    await finished_reply(page, 0)
    # Newest first, the open one marked; the first still has its messages.
    await expect(rows(page)).to_have_count(2)
    await expect(rows(page).nth(0)).to_have_attribute("aria-current", "true")
    await expect(rows(page).nth(1)).not_to_have_attribute("aria-current", "true")
    assert [c["token"] for c in await listed(quick, owner)] == [second, first]

    await rows(page).nth(1).click()
    await expect(user_messages(page)).to_have_text(["First question"])
    assert token_of(page.url) == first
    await expect(rows(page).nth(1)).to_have_attribute("aria-current", "true")
    assert await finished_reply(page, 0) == words(reply_text("First question", 8))
    # The conversation goes on where it was.
    await send(page, "Still there?")
    await finished_reply(page, 1)
    await expect(rows(page).nth(1)).to_contain_text("4 messages")

    # A reload keeps the open conversation and the list.
    await page.reload()
    await expect(user_messages(page)).to_have_text(["First question", "Still there?"])
    await expect(rows(page)).to_have_count(2)
    # The owner token stays in this browser: never in the page's URL nor any request's,
    # only in the Authorization header of the requests the API defines it for. Session
    # tokens travel in URLs only to open chat sockets (a browser cannot set their
    # headers); the page keeps its own in the URL's fragment, which no request carries.
    assert owner not in page.url
    assert "?" not in page.url and page.url.endswith(f"#token={first}")
    assert not [url for url, _ in requests if owner in url]
    with_owner = {re.sub(r"\?.*", "", url) for url, auth in requests if auth == f"Bearer {owner}"}
    assert with_owner == {f"{quick.url}/token", f"{quick.url}/conversations"}, with_owner
    for token in (first, second):
        assert not [url for url, _ in requests if token in url and "/chat?" not in url]
    assert (f"{quick.url}/refresh_token", f"Bearer {first}") in requests  # switched to


async def test_a_new_conversation_stays_listed_when_an_older_answer_of_the_list_arrives(
    page: Page, quick: Parley
) -> None:
    await start_session(page, quick.url)
    await expect(rows(page)).to_have_count(1)
    # The next load of the list is answered as the server saw it then, but only after a
    # new conversation has started: that answer does not know it. (It marks the first
    # conversation's title, to show when the page has taken it.)
    answered = asyncio.Event()
    release = asyncio.Event()
    fulfilled = asyncio.Event()

    async def late(route: Route) -> None:
        response = await route.fetch()
        body = await response.json()
        body["conversations"][0]["title"] = "As seen before"
        answered.set()
        await release.wait()
        await route.fulfill(response=response, json=body)
        fulfilled.set()

    await page.route(LIST, late)
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    async with asyncio.timeout(10):
        await answered.wait()
    new = await new_conversation(page)
    await expect(rows(page)).to_have_count(2)
    release.set()
    async with asyncio.timeout(10):
        await fulfilled.wait()
    await page.unroute(LIST)
    await expect(rows(page).nth(1)).to_have_accessible_name("As seen before")
    # The new conversation is still listed, as the open one, and counted.
    await expect(rows(page)).to_have_count(2)
    await expect(rows(page).nth(0)).to_have_attribute("aria-current", "true")
    await expect(sidebar(page).locator("li.unlisted")).to_have_count(0)
    await expect(sidebar(page).locator(".sidebar-foot")).to_contain_text("2 conversations")
    assert token_of(page.url) == new


async def test_a_conversation_is_renamed_in_place(page: Page, quick: Parley) -> None:
    token = await start_session(page, quick.url)
    owner = await owner_of(page)
    row = rows(page).nth(0)
    await expect(row).to_have_accessible_name("Untitled conversation")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Untitled conversation")

    await sidebar(page).get_by_role("button", name="Rename Untitled conversation").click()
    title_box = page.get_by_role("textbox", name="Conversation title")
    await expect(title_box).to_be_focused()
    await title_box.fill("Tides and the Moon")
    await title_box.press("Enter")
    await expect(row).to_have_accessible_name("Tides and the Moon")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Tides and the Moon")
    assert [(c["token"], c["title"]) for c in await listed(quick, owner)] == [
        (token, "Tides and the Moon")
    ]

    # Escape cancels; an empty title is refused before it reaches the server.
    await sidebar(page).get_by_role("button", name="Rename Tides and the Moon").click()
    await title_box.fill("Something else")
    await title_box.press("Escape")
    await expect(title_box).to_have_count(0)
    await expect(row).to_have_accessible_name("Tides and the Moon")
    await sidebar(page).get_by_role("button", name="Rename Tides and the Moon").click()
    await title_box.fill("   ")
    await title_box.press("Enter")
    await expect(sidebar(page).get_by_role("alert")).to_have_text("A title cannot be empty.")
    await title_box.press("Escape")
    assert (await listed(quick, owner))[0]["title"] == "Tides and the Moon"


async def test_a_conversation_is_deleted_after_a_confirmation(page: Page, quick: Parley) -> None:
    first = await start_session(page, quick.url)
    owner = await owner_of(page)
    await send(page, "Keep me")
    await finished_reply(page, 0)
    second = await new_conversation(page)
    await rename_via_api(quick, first, "Keeper")
    await rename_via_api(quick, second, "Doomed")
    await page.reload()
    await expect(rows(page)).to_have_count(2)

    # Deleting asks first; Escape and Cancel both leave it be.
    delete = sidebar(page).get_by_role("button", name="Delete Keeper")
    await delete.click()
    dialog = page.get_by_role("dialog", name="Delete “Keeper”?")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await delete.click()
    await dialog.get_by_role("button", name="Cancel").click()
    assert len(await listed(quick, owner)) == 2

    # The open conversation, deleted: the page moves to the other one.
    await sidebar(page).get_by_role("button", name="Delete Doomed").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).nth(0)).to_have_accessible_name("Keeper")
    await expect(user_messages(page)).to_have_text(["Keep me"])
    assert token_of(page.url) == first
    assert [c["token"] for c in await listed(quick, owner)] == [first]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{quick.url}/refresh_token", params={"token": second}) as response,
    ):
        assert response.status == 400  # gone for good

    # The last one, deleted: back to the start screen, which says why.
    await sidebar(page).get_by_role("button", name="Delete Keeper").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("The conversation was deleted.")).to_be_visible()
    assert await listed(quick, owner) == []


async def test_titles_given_by_the_server_appear_without_a_reload(
    page: Page, titling: Parley
) -> None:
    await start_session(page, titling.url)
    await expect(rows(page).nth(0)).to_have_accessible_name("Untitled conversation")
    await send(page, "How do tides work?")
    await finished_reply(page, 0)
    # The worker titles it after the first reply; the page looks again shortly after.
    await expect(rows(page).nth(0)).to_have_accessible_name(
        re.compile(r"^Reply to: Message: How do tides work\?")
    )
    title = await rows(page).nth(0).get_attribute("aria-label")
    await expect(page.get_by_role("heading", level=1)).to_have_text(title or "?")

    # The sidebar for the README: a few titled conversations.
    for question, name in [
        ("Why is the sea salty?", "Why the sea is salty"),
        ("Plan a weekend in Lisbon", "A weekend in Lisbon"),
    ]:
        token = await new_conversation(page)
        await send(page, question)
        await finished_reply(page, 0)
        await rename_via_api(titling, token, name)
    await rows(page).nth(2).click()
    await expect(user_messages(page)).to_have_text(["How do tides work?"])
    await rename_via_api(titling, token_of(page.url), "How tides work")
    await page.reload()
    await expect(rows(page)).to_have_count(3)
    await expect(rows(page).nth(2)).to_have_accessible_name("How tides work")
    await readme_shot(page, "conversations")


async def test_the_conversation_is_exported_as_markdown_and_json(page: Page, quick: Parley) -> None:
    token = await start_session(page, quick.url)
    await send(page, "What is a **tide**?")
    reply = await finished_reply(page, 0)
    await rename_via_api(quick, token, "Tides: a primer!")
    await page.reload()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Tides: a primer!")

    export = page.get_by_role("button", name="Export", exact=True)
    await export.click()
    await expect(export).to_have_attribute("aria-expanded", "true")
    async with page.expect_download() as markdown_download:
        await page.get_by_role("button", name="Export as Markdown").click()
    markdown = await markdown_download.value
    day = (await listed_one(quick, page))["created"][:10]
    assert markdown.suggested_filename == f"tides-a-primer-{day}.md"
    text = await downloaded(markdown)
    assert text.startswith("# Tides: a primer!\n")
    assert "What is a **tide**?" in text
    assert words(reply_text("What is a **tide**?", 8)) in words(text)
    assert reply.split()[0] in text
    assert token not in text

    await export.click()
    async with page.expect_download() as json_download:
        await page.get_by_role("button", name="Export as JSON").click()
    exported = await json_download.value
    assert exported.suggested_filename == f"tides-a-primer-{day}.json"
    data = json.loads(await downloaded(exported))
    assert data["title"] == "Tides: a primer!"
    assert data["name"] == "Ada"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "What is a **tide**?"),
        ("assistant", reply_text("What is a **tide**?", 8)),
    ]
    assert token not in json.dumps(data)


async def listed_one(stack: Parley, page: Page) -> dict[str, Any]:
    """The open conversation as the server lists it."""
    token = token_of(page.url)
    (conversation,) = [c for c in await listed(stack, await owner_of(page)) if c["token"] == token]
    return conversation


async def test_a_session_from_before_owners_keeps_working_and_is_adopted_by_nothing(
    browser: Browser, quick: Parley
) -> None:
    async with aiohttp.ClientSession() as http:
        old = await quick.create_session(http, "Grace")
    async for page in new_page(browser):
        await page.add_init_script(
            f"window.localStorage.setItem('parley.token', '{old}');"
            "window.localStorage.setItem('parley.name', 'Grace');"
        )
        owners = requests_to(page, "/owner")
        await page.goto(quick.url)
        await expect(page.locator('[data-connection="open"]')).to_be_visible()
        await expect(page.get_by_text("Chatting as Grace")).to_be_visible()
        unlisted = sidebar(page).locator("li.unlisted")
        await expect(unlisted).to_contain_text("Grace's conversation")
        await expect(unlisted).to_contain_text("Not in your list")
        await send(page, "Old but gold")
        await finished_reply(page, 0)
        assert owners == [] and await page.evaluate(OWNER_JS) is None

        # Leaving it is asked first, since only its link brings it back.
        await page.get_by_role("button", name="Start a new conversation").click()
        dialog = page.get_by_role("dialog", name="Leave this conversation?")
        await expect(dialog).to_be_visible()
        await dialog.get_by_role("button", name="Stay").click()
        assert token_of(page.url) == old
        await page.get_by_role("button", name="Start a new conversation").click()
        await page.get_by_role("dialog").get_by_role("button", name="Leave it").click()
        await expect(page.get_by_role("heading", name="Hello, Grace!")).to_be_visible()
        new = token_of(page.url)
        # The new conversation has an owner; the old one was not added to it.
        assert [c["token"] for c in await listed(quick, await owner_of(page))] == [new]
        await expect(sidebar(page).locator("li.unlisted")).to_have_count(0)


def turn_versions(page: Page) -> Locator:
    return page.get_by_role("group", name="Versions of this message")


async def test_the_last_reply_is_regenerated_and_only_when_no_reply_is_on_its_way(
    page: Page, quick: Parley
) -> None:
    token = await start_session(page, quick.url)
    prompt = "Tell me about tides"
    await send(page, prompt)
    first = await finished_reply(page, 0)
    assert first == words(reply_text(prompt, 8))
    await expect(turn_versions(page)).to_have_count(0)

    # The new reply is longer, and slow enough to be caught streaming.
    quick.standin.tokens = 30
    quick.standin.delay_ms = 60
    regenerate = page.get_by_role("button", name="Regenerate the reply")
    edit = page.get_by_role("button", name="Edit the message")
    await regenerate.click()
    await expect(replies(page).nth(0)).to_have_attribute("data-streaming", "true")
    await expect(regenerate).to_have_count(0)  # not while a reply is on its way
    await expect(edit).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop the reply")).to_be_visible()
    second = await finished_reply(page, 0)
    assert second == words(reply_text(prompt, 30)) != first
    await expect(replies(page)).to_have_count(1)
    await expect(user_messages(page)).to_have_text([prompt])
    await expect(turn_versions(page)).to_contain_text("2/2")
    await expect(regenerate).to_be_visible()

    # History holds the earlier reply as a version of the turn.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{quick.url}/refresh_token", params={"token": token}) as response,
    ):
        messages = (await response.json())["messages"]
    assert [m["content"] for m in messages] == [prompt, reply_text(prompt, 30)]
    (version,) = messages[0]["versions"]
    assert version["content"] == prompt and version["reply"]["content"] == reply_text(prompt, 8)


async def test_the_last_message_is_edited_and_gets_a_new_reply(page: Page, quick: Parley) -> None:
    await start_session(page, quick.url)
    await send(page, "What is two and two?")
    await finished_reply(page, 0)
    await send(page, "What is 2+2?")
    old_reply = await finished_reply(page, 1)
    # Only the last turn can be edited.
    edit = page.get_by_role("button", name="Edit the message")
    await expect(edit).to_have_count(1)
    await expect(page.locator('li[data-role="user"]').nth(1).get_by_role("button")).to_have_count(1)

    await edit.click()
    box = page.get_by_role("textbox", name="Edit your message")
    await expect(box).to_be_focused()
    await expect(box).to_have_value("What is 2+2?")
    await box.fill("Never mind")
    await box.press("Escape")  # cancelled: nothing sent
    await expect(box).to_have_count(0)
    await expect(user_messages(page)).to_have_text(["What is two and two?", "What is 2+2?"])
    await expect(edit).to_be_focused()

    await edit.click()
    await box.fill("What is 3+3?")
    await box.press("Enter")
    await expect(user_messages(page)).to_have_text(["What is two and two?", "What is 3+3?"])
    new_reply = await finished_reply(page, 1)
    assert new_reply == words(reply_text("What is 3+3?", 8)) != old_reply
    await expect(replies(page)).to_have_count(2)
    await expect(turn_versions(page)).to_contain_text("2/2")
    # A reload shows the same: the edit is in history.
    await page.reload()
    await expect(user_messages(page)).to_have_text(["What is two and two?", "What is 3+3?"])
    assert await finished_reply(page, 1) == new_reply


async def test_earlier_versions_of_a_turn_are_browsed(page: Page, quick: Parley) -> None:
    token = await start_session(page, quick.url)
    await rename_via_api(quick, token, "Colours")
    await page.reload()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Colours")
    quick.standin.tokens = 12
    await send(page, "Name a colour")
    v1 = await finished_reply(page, 0)
    quick.standin.tokens = 16
    await page.get_by_role("button", name="Regenerate the reply").click()
    await expect(turn_versions(page)).to_contain_text("2/2")
    v2 = await finished_reply(page, 0)
    await page.get_by_role("button", name="Edit the message").click()
    await page.get_by_role("textbox", name="Edit your message").fill("Name a warm colour")
    await page.get_by_role("button", name="Save and send").click()
    await expect(turn_versions(page)).to_contain_text("3/3")
    v3 = await finished_reply(page, 0)
    assert len({v1, v2, v3}) == 3

    previous = turn_versions(page).get_by_role("button", name="Previous version")
    following = turn_versions(page).get_by_role("button", name="Next version")
    await expect(following).to_be_disabled()
    shown: list[tuple[str, str]] = []
    for count in ("2/3", "1/3"):
        await previous.click()
        await expect(turn_versions(page)).to_contain_text(count)
        await expect(page.get_by_role("button", name="Regenerate the reply")).to_have_count(0)
        shown.append((await user_messages(page).inner_text(), await finished_reply(page, 0)))
        if count == "2/3":
            await expect(rows(page).nth(0)).to_contain_text("2 messages")
            await readme_shot(page, "versions")
    assert shown == [("Name a colour", v2), ("Name a colour", v1)]
    await expect(previous).to_be_disabled()
    await following.click()
    await following.click()
    await expect(turn_versions(page)).to_contain_text("3/3")
    await expect(user_messages(page)).to_have_text(["Name a warm colour"])
    assert await finished_reply(page, 0) == v3
    await expect(page.get_by_role("button", name="Regenerate the reply")).to_be_visible()

    # After a reload, from history alone.
    await page.reload()
    await expect(turn_versions(page)).to_contain_text("3/3")
    await previous.click()
    await previous.click()
    await expect(user_messages(page)).to_have_text(["Name a colour"])
    assert await finished_reply(page, 0) == v1


async def test_on_a_phone_the_sidebar_is_a_drawer(phone: Page, quick: Parley) -> None:
    page = phone
    first = await start_session(page, quick.url)
    await send(page, "Hello from a phone")
    await finished_reply(page, 0)
    nav = sidebar(page)
    toggle = page.get_by_role("button", name="Show conversations")
    await expect(nav).to_be_hidden()
    await expect(toggle).to_have_attribute("aria-expanded", "false")

    await toggle.click()
    await expect(nav).to_be_visible()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(rows(page).nth(0)).to_be_focused()
    box = await nav.bounding_box()
    assert box is not None and box["x"] == 0 and box["width"] < 390
    # Escape closes it and gives the focus back to its button.
    await page.keyboard.press("Escape")
    await expect(nav).to_be_hidden()
    await expect(toggle).to_be_focused()

    # A new conversation from the drawer, then back to the first one.
    await toggle.click()
    await rename_via_api(quick, first, "Hello from a phone")
    await page.get_by_role("button", name="Start a new conversation").click()
    await expect(nav).to_be_hidden()
    await expect(page.get_by_role("heading", name="Hello, Ada!")).to_be_visible()
    await toggle.click()
    await expect(rows(page)).to_have_count(2)
    await expect(rows(page).nth(1)).to_have_accessible_name("Hello from a phone")
    await expect(rows(page).nth(1)).to_contain_text("2 messages")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await readme_shot(page, "phone")
    await rows(page).nth(1).click()
    await expect(nav).to_be_hidden()
    await expect(user_messages(page)).to_have_text(["Hello from a phone"])
    await expect(page.get_by_role("heading", level=1)).to_have_text("Hello from a phone")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


FOCUSED_NAME_JS = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return "";
  return (e.getAttribute("aria-label") || e.innerText || e.value || "").trim();
}"""

FOCUS_VISIBLE_JS = """() => {
  const e = document.activeElement;
  const style = getComputedStyle(e);
  return e.matches(":focus-visible") && style.outlineStyle !== "none"
    && parseFloat(style.outlineWidth) > 0;
}"""


async def tab_to(page: Page, name: str, limit: int = 40) -> None:
    """Press Tab until the focused control is named ``name`` (and shows its focus)."""
    seen = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED_NAME_JS)
        if focused == name:
            assert await page.evaluate(FOCUS_VISIBLE_JS), f"{name!r} shows no focus"
            return
        seen.append(focused)
    raise AssertionError(f"{name!r} is not reached by Tab; reached: {seen}")


async def test_everything_is_done_with_the_keyboard_alone(page: Page, quick: Parley) -> None:
    await page.goto(quick.url)
    await expect(page.get_by_role("textbox", name="Your name")).to_be_focused()
    await page.keyboard.type("Ada")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    await page.keyboard.type("First by keyboard")
    await page.keyboard.press("Enter")
    await finished_reply(page, 0)
    first = token_of(page.url)

    # New conversation.
    await tab_to(page, "Start a new conversation")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Hello, Ada!")).to_be_visible()
    await page.get_by_role("textbox", name="Message").focus()  # where the page puts it
    await page.keyboard.type("Second by keyboard")
    await page.keyboard.press("Enter")
    await finished_reply(page, 0)

    # Rename: Enter saves, Escape cancels.
    await tab_to(page, "Rename Untitled conversation")
    await page.keyboard.press("Enter")
    await page.keyboard.type("Typed title")
    await page.keyboard.press("Enter")
    await expect(rows(page).nth(0)).to_have_accessible_name("Typed title")
    await expect(page.get_by_role("button", name="Rename Typed title")).to_be_focused()
    await page.keyboard.press("Enter")
    await page.keyboard.type("Not this")
    await page.keyboard.press("Escape")
    await expect(rows(page).nth(0)).to_have_accessible_name("Typed title")

    # Edit the last message, then regenerate its reply.
    await tab_to(page, "Edit the message")
    await page.keyboard.press("Enter")
    await page.keyboard.press("Control+A")
    await page.keyboard.type("Second, edited")
    await page.keyboard.press("Enter")
    await expect(user_messages(page)).to_have_text(["Second, edited"])
    await finished_reply(page, 0)
    await tab_to(page, "Regenerate the reply")
    await page.keyboard.press("Enter")
    await expect(turn_versions(page)).to_contain_text("3/3")
    await finished_reply(page, 0)
    await tab_to(page, "Previous version")
    await page.keyboard.press("Enter")
    await expect(turn_versions(page)).to_contain_text("2/3")

    # Export.
    await tab_to(page, "Export")
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    async with page.expect_download() as download:
        await page.keyboard.press("Enter")
    assert (await download.value).suggested_filename.startswith("typed-title-")
    await expect(page.get_by_role("button", name="Export", exact=True)).to_be_focused()

    # Switch, then delete with the dialog: Escape keeps it, the Delete button deletes.
    await tab_to(page, "Untitled conversation")
    await page.keyboard.press("Enter")
    await expect(user_messages(page)).to_have_text(["First by keyboard"])
    assert token_of(page.url) == first
    await tab_to(page, "Delete Typed title")
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete Typed title")).to_be_focused()
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")  # from Cancel to Delete
    await page.keyboard.press("Enter")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).nth(0)).to_have_accessible_name("Untitled conversation")
