"""Owners and their conversations: POST /owner, POST /token?owner=, GET /conversations,
PATCH /session, DELETE /session; against real Redis (single node, and the cluster run)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from runtime.logs import redact
from storage import keys
from storage.connection import is_cluster
from tests.support.parley import UNKNOWN_TOKEN, Parley, running_parley
from worker.titles import TITLE_MAX_CHARS, clean_title

GONE = {"detail": "Session expired or does not exist"}
OWNER_GONE = {"detail": "Owner expired or does not exist"}


async def _owner(parley: Parley, http: aiohttp.ClientSession) -> str:
    async with http.post(f"{parley.url}/owner") as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert set(body) == {"owner"}
    assert uuid.UUID(body["owner"]).version == 4
    owner: str = body["owner"]
    return owner


async def _session(
    parley: Parley, http: aiohttp.ClientSession, owner: str, name: str = "ada"
) -> dict[str, Any]:
    async with http.post(f"{parley.url}/token", params={"name": name, "owner": owner}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    # The session-token-only answer, unchanged: the owner is not echoed.
    assert set(body) == {"token", "name", "session_start", "messages"}
    return body


async def _list(
    parley: Parley, http: aiohttp.ClientSession, owner: str, **params: Any
) -> dict[str, Any]:
    async with http.get(f"{parley.url}/conversations", params={"owner": owner, **params}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def _chat(parley: Parley, http: aiohttp.ClientSession, token: str, text: str) -> None:
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_json({"type": "message", "content": text})
        async with asyncio.timeout(20):
            while (await ws.receive_json())["type"] != "done":
                pass


async def test_an_owner_lists_its_conversations_newest_first(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    owner = await _owner(parley, http)
    first = await _session(parley, http, owner, "first")
    await asyncio.sleep(0.01)  # creation times in ms: keep them apart
    second = await _session(parley, http, owner, "second")
    await _chat(parley, http, first["token"], "hello")

    page = await _list(parley, http, owner)
    assert page["total"] == 2 and page["next_offset"] is None
    newest, oldest = page["conversations"]
    assert (newest["token"], oldest["token"]) == (second["token"], first["token"])
    assert newest == {
        "token": second["token"],
        "title": "",
        "name": "second",
        "created": second["session_start"],
        "last_activity": second["session_start"],
        "message_count": 0,
    }
    assert oldest["message_count"] == 2  # the message and its reply
    assert oldest["last_activity"] > oldest["created"]

    # Another owner sees none of them; a session without an owner is in no list.
    other = await _owner(parley, http)
    await parley.create_session(http)
    assert (await _list(parley, http, other))["conversations"] == []


async def test_the_list_is_paginated(parley: Parley, http: aiohttp.ClientSession) -> None:
    owner = await _owner(parley, http)
    tokens = []
    for k in range(5):
        tokens.append((await _session(parley, http, owner, f"s{k}"))["token"])
        await asyncio.sleep(0.002)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await _list(parley, http, owner, offset=offset, limit=2)
        assert page["total"] == 5
        seen += [c["token"] for c in page["conversations"]]
        offset = page["next_offset"]
    assert seen == tokens[::-1]
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        async with http.get(f"{parley.url}/conversations", params={"owner": owner, **bad}) as r:
            assert r.status == 422


@pytest.mark.parametrize("owner", ["not-a-uuid", UNKNOWN_TOKEN])
async def test_an_unknown_owner_is_refused_and_creates_nothing(
    parley: Parley, http: aiohttp.ClientSession, owner: str
) -> None:
    async with http.get(f"{parley.url}/conversations", params={"owner": owner}) as r:
        assert (r.status, await r.json()) == (400, OWNER_GONE)
    before = len(await parley.redis.keys(f"{keys.PREFIX}:session:*"))
    async with http.post(f"{parley.url}/token", params={"name": "x", "owner": owner}) as r:
        assert (r.status, await r.json()) == (400, OWNER_GONE)
    assert len(await parley.redis.keys(f"{keys.PREFIX}:session:*")) == before


async def test_rename_sets_the_title_and_bad_titles_are_refused(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner))["token"]
    url = f"{parley.url}/session"
    async with http.patch(url, params={"token": token}, json={"title": "  Trip plans "}) as r:
        assert r.status == 204
    (listed,) = (await _list(parley, http, owner))["conversations"]
    assert listed["title"] == "Trip plans"
    limit = parley.server_settings.max_title_chars
    for title, words in (("  ", "empty"), ("x" * (limit + 1), f"at most {limit}")):
        async with http.patch(url, params={"token": token}, json={"title": title}) as r:
            assert r.status == 400 and words in (await r.json())["detail"]
    async with http.patch(url, params={"token": str(uuid.uuid4())}, json={"title": "t"}) as r:
        assert (r.status, await r.json()) == (400, GONE)
    # A session without an owner can be renamed too (its token is the credential).
    loner = await parley.create_session(http)
    async with http.patch(url, params={"token": loner}, json={"title": "mine"}) as r:
        assert r.status == 204


async def test_delete_removes_the_conversation_its_events_and_its_place(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    owner = await _owner(parley, http)
    kept = (await _session(parley, http, owner, "kept"))["token"]
    gone = (await _session(parley, http, owner, "gone"))["token"]
    await _chat(parley, http, gone, "soon deleted")
    assert await parley.redis.exists(keys.events_key(gone))

    stranger = await _owner(parley, http)
    async with http.delete(f"{parley.url}/session", params={"token": gone, "owner": stranger}) as r:
        assert r.status == 403
    async with http.delete(f"{parley.url}/session", params={"token": gone, "owner": owner}) as r:
        assert r.status == 204
    assert not await parley.redis.exists(keys.session_key(gone), keys.events_key(gone))
    page = await _list(parley, http, owner)
    assert [c["token"] for c in page["conversations"]] == [kept] and page["total"] == 1
    async with http.get(f"{parley.url}/refresh_token", params={"token": gone}) as r:
        assert (r.status, await r.json()) == (400, GONE)
    async with http.delete(f"{parley.url}/session", params={"token": gone}) as r:
        assert (r.status, await r.json()) == (400, GONE)
    # The session token alone is enough, and works for a session without an owner.
    async with http.delete(f"{parley.url}/session", params={"token": kept}) as r:
        assert r.status == 204
    assert (await _list(parley, http, owner))["total"] == 0
    loner = await parley.create_session(http)
    async with http.delete(f"{parley.url}/session", params={"token": loner}) as r:
        assert r.status == 204


async def test_expired_sessions_leave_the_list(parley: Parley, http: aiohttp.ClientSession) -> None:
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner))["token"]
    await parley.redis.delete(keys.session_key(token))  # as its TTL running out does
    page = await _list(parley, http, owner)
    assert page == {"conversations": [], "total": 0, "next_offset": None}


async def test_an_owner_has_at_most_its_limit_of_live_conversations(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, max_conversations_per_owner=2) as parley:
        owner = await _owner(parley, http)
        first = (await _session(parley, http, owner))["token"]
        await _session(parley, http, owner)
        async with http.post(f"{parley.url}/token", params={"name": "x", "owner": owner}) as r:
            assert r.status == 409
            assert "2 conversations, the most allowed" in (await r.json())["detail"]
        # A conversation that expired frees its place.
        await redis.delete(keys.session_key(first))
        await _session(parley, http, owner)
        assert (await _list(parley, http, owner))["total"] == 2


async def test_owner_tokens_stay_out_of_the_logs(
    parley: Parley, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    owner = await _owner(parley, http)
    assert owner not in redact(f"GET /conversations?owner={owner}")
    assert owner not in redact(f'{{"owner": "{owner}"}}')
    assert owner not in redact(keys.conversations_key(owner))
    with caplog.at_level(logging.DEBUG):
        await _session(parley, http, owner)
        await _list(parley, http, owner)
    assert owner not in caplog.text


async def test_export_gives_the_whole_conversation_without_its_token(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner, "Ada"))["token"]
    await _chat(parley, http, token, "first question")
    await _chat(parley, http, token, "second question")
    async with http.patch(
        f"{parley.url}/session", params={"token": token}, json={"title": "Questions"}
    ) as r:
        assert r.status == 204
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        history = (await r.json())["messages"]

    url = f"{parley.url}/session/export"
    async with http.get(url, params={"token": token}) as r:
        assert r.status == 200
        assert r.headers["Content-Disposition"].startswith("attachment; filename=")
        text = await r.text()
    assert token not in text
    export = json.loads(text)
    assert set(export) == {
        "title",
        "name",
        "session_start",
        "exported",
        "model",
        "system_prompt",
        "messages",
    }
    assert (export["title"], export["name"]) == ("Questions", "Ada")
    assert export["messages"] == history  # conversation order, every field
    assert [m["role"] for m in export["messages"]] == ["user", "assistant"] * 2

    async with http.get(url, params={"token": token, "format": "markdown"}) as r:
        assert r.status == 200 and r.content_type == "text/markdown"
        assert r.headers["Content-Disposition"].endswith('.md"')
        markdown = await r.text()
    assert token not in markdown
    assert markdown.startswith("# Questions\n")
    assert markdown.index("first question") < markdown.index("second question")
    for message in history:
        assert message["content"] in markdown
    assert markdown.count("\n## Ada, ") == 2 and markdown.count("\n## Assistant, ") == 2

    async with http.get(url, params={"token": token, "format": "xml"}) as r:
        assert r.status == 422
    async with http.get(url, params={"token": str(uuid.uuid4())}) as r:
        assert (r.status, await r.json()) == (400, GONE)


async def test_no_title_is_asked_for_when_titles_are_off(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, conversation_titles=False) as parley:
        owner = await _owner(parley, http)
        token = (await _session(parley, http, owner))["token"]
        await _chat(parley, http, token, "hello")
        assert len(parley.standin.requests) == 1  # the reply's alone
        assert (await _list(parley, http, owner))["conversations"][0]["title"] == ""


async def _title_of(parley: Parley, http: aiohttp.ClientSession, owner: str) -> str:
    """The owner's only conversation's title, once the workers' title jobs are done."""
    async with asyncio.timeout(20):
        while True:
            groups = await parley.redis.xinfo_groups(keys.TITLE_STREAM)
            titlers = next((g for g in groups if g["name"] == keys.TITLE_GROUP), None)
            # Queued (after the reply's `done`, which the client may see first), then
            # read and acknowledged.
            queued = titlers is not None and (titlers["entries-read"] or 0) >= 1
            if queued and titlers["pending"] == 0 and titlers["lag"] == 0:
                break
            await asyncio.sleep(0.05)
    (conversation,) = (await _list(parley, http, owner))["conversations"]
    title: str = conversation["title"]
    return title


@pytest.fixture
async def titling(redis_url: str, redis: Redis[str]) -> AsyncIterator[Parley]:
    """Parley with conversation titles on, as shipped (said here, as the tests of them)."""
    async with running_parley(redis_url, redis, conversation_titles=True) as parley:
        yield parley


async def test_the_first_reply_gives_the_conversation_a_title(
    titling: Parley, http: aiohttp.ClientSession
) -> None:
    parley = titling
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner))["token"]
    assert (await _list(parley, http, owner))["conversations"][0]["title"] == ""
    await _chat(parley, http, token, "How do tides work?")
    title = await _title_of(parley, http, owner)
    # The stand-in model answers "Reply to: <the last user message> ..." of the title
    # request, which shows the model was asked about this conversation.
    assert title.startswith("Reply to: Message: How do tides work?")
    assert 0 < len(title) <= TITLE_MAX_CHARS
    # Later replies do not title it again.
    await _chat(parley, http, token, "And waves?")
    assert await _title_of(parley, http, owner) == title


async def test_a_title_given_by_the_person_is_kept(
    titling: Parley, http: aiohttp.ClientSession
) -> None:
    parley = titling
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner))["token"]
    async with http.patch(
        f"{parley.url}/session", params={"token": token}, json={"title": "Mine"}
    ) as r:
        assert r.status == 204
    await _chat(parley, http, token, "hello")
    assert await _title_of(parley, http, owner) == "Mine"


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Tides and the Moon"', "Tides and the Moon"),
        ("Title: **Tides**\nmore text", "Tides"),
        ("# Tides explained.", "Tides explained"),
        ("   \n  ", ""),
        ("word " * 40, ("word " * 16).strip()),
        ("\u202eevil\u202c title", "evil title"),  # bidi override and pop
        ("Tides\tand\x1bMoon\u200b", "Tides and Moon"),
        ("\u202e# Tides", "# Tides"),  # what is left is escaped in exports
    ],
)
def test_clean_title(answer: str, title: str) -> None:
    assert clean_title(answer) == title


async def test_deleting_a_session_closes_its_open_sockets_at_once(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await _chat(parley, http, token, "hello")  # the socket is live and idle
        async with http.delete(f"{parley.url}/session", params={"token": token}) as r:
            assert r.status == 204
        # Its expiry check was an hour away (SESSION_TTL_SECONDS): the delete woke it.
        async with asyncio.timeout(5):
            error = await ws.receive_json()
            while error["type"] != "error":
                error = await ws.receive_json()
            assert error["code"] == "session_expired"
            assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


@pytest.mark.parametrize(
    "params",
    [
        {"offset": "9223372036854775807"},  # once answered 503 "Redis unavailable"
        {"offset": "1000001"},
        {"offset": "-1"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "9223372036854775807"},
    ],
)
async def test_offsets_and_limits_out_of_range_are_422(
    parley: Parley, http: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    owner = await _owner(parley, http)
    async with http.get(f"{parley.url}/conversations", params={"owner": owner, **params}) as r:
        assert r.status == 422, await r.text()


async def test_the_largest_offset_is_an_empty_page(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    owner = await _owner(parley, http)
    await _session(parley, http, owner)
    page = await _list(parley, http, owner, offset=1_000_000, limit=100)
    assert (page["conversations"], page["total"], page["next_offset"]) == ([], 1, None)


async def test_a_command_redis_refuses_is_500_not_unavailable(
    parley: Parley, http: aiohttp.ClientSession, redis: Redis[str]
) -> None:
    """Only a Redis that cannot answer now is 503 ("retry shortly"); a command refused
    for what it is (here a session key of the wrong type) fails the same way on retry."""
    token = str(uuid.uuid4())
    await redis.set(keys.session_key(token), "not a document")
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 500
        assert await r.json() == {"detail": "internal error"}


async def test_a_full_redis_is_503(
    parley: Parley, http: aiohttp.ClientSession, redis: Redis[str]
) -> None:
    """Out of memory (noeviction) is a passing state: 503, retry shortly."""

    async def maxmemory(value: str) -> None:  # on every node of a cluster
        nodes = {"target_nodes": "all"} if is_cluster(redis) else {}
        await redis.execute_command("CONFIG SET", "maxmemory", value, **nodes)  # type: ignore[no-untyped-call]

    await maxmemory("1")
    try:
        async with http.post(f"{parley.url}/token", params={"name": "ada"}) as r:
            assert r.status == 503
            assert await r.json() == {"detail": "Redis unavailable; retry shortly"}
    finally:
        await maxmemory("0")


HIDDEN = ["a\nb", "a\tb", "a\x1b[31mb", "\u202eexe.txt", "a\u2066b", "a\u200bb", "a\u00adb"]


@pytest.mark.parametrize("text", HIDDEN)
async def test_names_and_titles_are_one_line_of_plain_text(
    parley: Parley, http: aiohttp.ClientSession, text: str
) -> None:
    owner = await _owner(parley, http)
    params = {"name": text, "owner": owner}
    async with http.post(f"{parley.url}/token", params=params) as r:
        assert r.status == 400
        assert "one line of plain text" in (await r.json())["detail"]
    token = (await _session(parley, http, owner))["token"]
    url = f"{parley.url}/session"
    async with http.patch(url, params={"token": token}, json={"title": text}) as r:
        assert r.status == 400
        detail = (await r.json())["detail"]
        assert detail.startswith("title must be one line of plain text") and "U+" in detail
    assert [c["title"] for c in (await _list(parley, http, owner))["conversations"]] == [""]


async def test_joiners_stay_in_names_and_titles(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji, joined
    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner, name=f"Ada {family}"))["token"]
    async with http.patch(
        f"{parley.url}/session", params={"token": token}, json={"title": f"Mi\u200cn {family}"}
    ) as r:
        assert r.status == 204


async def test_markdown_export_keeps_names_and_titles_in_their_headings(
    parley: Parley, http: aiohttp.ClientSession, redis: Redis[str]
) -> None:
    """A title or name that got in before the check (or from a model, or by hand) can
    neither leave its heading nor add a block, a link, an image or HTML to the file."""
    from markdown_it import MarkdownIt

    owner = await _owner(parley, http)
    token = (await _session(parley, http, owner, "Ada"))["token"]
    await _chat(parley, http, token, "a question")
    forged = {
        "$.title": "Notes\n\n# Forged heading\n\n[click](http://evil.example) &#x202E; ###",
        "$.name": "Ada <img src=x onerror=alert(1)>\n## Assistant, ![t](http://evil.example/t.png)",
    }
    for path, value in forged.items():
        await redis.execute_command("JSON.SET", keys.session_key(token), path, json.dumps(value))
    url = f"{parley.url}/session/export"
    async with http.get(url, params={"token": token, "format": "markdown"}) as r:
        assert r.status == 200
        text = await r.text()
    tokens = MarkdownIt("commonmark").parse(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert len(headings) == 3  # the title, the question, the reply
    assert headings[0].startswith("Notes") and "Forged heading" in headings[0]
    assert headings[1].startswith("Ada ") and headings[2].startswith("Assistant, ")
    children = [c for t in tokens if t.children for c in t.children]
    kinds = {c.type for c in children}
    assert not kinds & {"link_open", "image", "html_inline"}, kinds
    assert not [c for c in children if "\u202e" in c.content]  # no entity decoded to one
    assert not [t for t in tokens if t.type == "html_block"]


async def test_an_owner_lives_minutes_until_its_first_conversation(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, owner_unused_ttl_seconds=300, owner_ttl_seconds=86_400
    ) as parley:
        owner = await _owner(parley, http)
        assert 0 < await redis.ttl(keys.owner_key(owner)) <= 300
        # Listing an unused owner does not keep it for long.
        assert (await _list(parley, http, owner))["total"] == 0
        assert 0 < await redis.ttl(keys.owner_key(owner)) <= 300
        await _session(parley, http, owner)
        assert await redis.ttl(keys.owner_key(owner)) > 300
        assert await redis.ttl(keys.conversations_key(owner)) > 300
        await redis.expire(keys.owner_key(owner), 10)
        await _list(parley, http, owner)  # used: listing renews it
        assert await redis.ttl(keys.owner_key(owner)) > 300


async def test_owners_have_a_rate_of_their_own(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, rate_owners_per_client=2, rate_sessions_per_client=3
    ) as parley:
        owners = [await _owner(parley, http) for _ in range(2)]
        async with http.post(f"{parley.url}/owner") as r:
            assert r.status == 429
            assert 0 < int(r.headers["Retry-After"]) <= 60
            assert "owners" in (await r.json())["detail"]
        # Sessions have their budget, untouched by owners, and owners by sessions.
        for owner in [*owners, None]:
            params = {"name": "ada"} | ({"owner": owner} if owner else {})
            async with http.post(f"{parley.url}/token", params=params) as r:
                assert r.status == 200, await r.text()
        async with http.post(f"{parley.url}/token", params={"name": "ada"}) as r:
            assert r.status == 429


async def test_every_token_can_travel_in_the_authorization_header(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    """Session and owner tokens as ``Authorization: Bearer``, never in a URL; the query
    form still works (the contract, Postman)."""
    url = parley.url

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    owner = await _owner(parley, http)
    async with http.post(f"{url}/token", params={"name": "ada"}, headers=bearer(owner)) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["token"]
    async with http.get(f"{url}/conversations", headers=bearer(owner)) as r:
        assert r.status == 200
        assert [c["token"] for c in (await r.json())["conversations"]] == [token]
    async with http.get(f"{url}/refresh_token", headers=bearer(token)) as r:
        assert r.status == 200 and (await r.json())["token"] == token
    async with http.patch(f"{url}/session", json={"title": "Hi"}, headers=bearer(token)) as r:
        assert r.status == 204
    async with http.get(
        f"{url}/session/export", params={"format": "markdown"}, headers=bearer(token)
    ) as r:
        assert r.status == 200 and (await r.text()).startswith("# Hi\n")
    # The same token in both places is fine; two different ones are refused.
    async with http.get(
        f"{url}/refresh_token", params={"token": token}, headers=bearer(token)
    ) as r:
        assert r.status == 200
    async with http.get(
        f"{url}/refresh_token", params={"token": str(uuid.uuid4())}, headers=bearer(token)
    ) as r:
        assert r.status == 400 and "two different tokens" in (await r.json())["detail"]
    async with http.get(f"{url}/refresh_token", headers={"Authorization": "Basic eDp5"}) as r:
        assert r.status == 422
    async with http.get(f"{url}/refresh_token", headers=bearer("not-a-token")) as r:
        assert (r.status, await r.json()) == (400, GONE)
    async with http.get(f"{url}/conversations", headers=bearer(token)) as r:
        assert (r.status, await r.json()) == (400, OWNER_GONE)  # a session is no owner
    async with http.delete(f"{url}/session", headers=bearer(token)) as r:
        assert r.status == 204
    async with http.get(f"{url}/refresh_token", headers=bearer(token)) as r:
        assert (r.status, await r.json()) == (400, GONE)
