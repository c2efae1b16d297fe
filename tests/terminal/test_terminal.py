"""The terminal client's socket and bookkeeping: alone, then end to end on the real stack.

The end-to-end tests use the ``parley`` fixture (``tests/conftest.py``): a running
server, worker, Redis and stand-in model whose reply to "X" begins with "Reply to: X".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from protocol.wire import (
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GapEvent,
    MessageVersion,
    QueuedEvent,
    RestartEvent,
    RevisedEvent,
    ServerEvent,
    SessionView,
    TokenEvent,
)
from terminal.client import Backoff, ChatClient, ConnectionLost, ResumeCursor
from terminal.conversation import GAP, Conversation
from terminal.render import REPLY_PREFIX, Renderer
from testkit.ports import free_port
from tests.support.events import kept, trim_past
from tests.support.parley import Parley, running_parley

ROOT = Path(__file__).resolve().parents[2]
TS = "2026-01-01T12:00:00.000Z"


def reply(content: str, message_id: str = "m1", event_id: str = "5-0") -> DoneEvent:
    message = ChatMessage(id=f"r-{message_id}", role="assistant", content=content, timestamp=TS)
    return DoneEvent(message_id=message_id, reply=message, event_id=event_id)


# --- bookkeeping ----------------------------------------------------------------------


def test_cursor_drops_events_at_or_before_the_last_one_seen() -> None:
    cursor = ResumeCursor()
    assert cursor.after() == "0-0"
    assert cursor.accept(TokenEvent(message_id="m1", content="a", event_id="10-0"))
    assert cursor.accept(TokenEvent(message_id="m1", content="b", event_id="10-1"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="a", event_id="10-0"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="b", event_id="10-1"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="c", event_id="9-5"))
    assert cursor.accept(TokenEvent(message_id="m1", content="c", event_id="11-0"))
    assert cursor.after() == "11-0"
    assert cursor.accept(QueuedEvent(message_id="m2"))  # not in the stream: always new


def test_cursor_sorts_a_malformed_event_id_first_and_drops_it() -> None:
    cursor = ResumeCursor()
    assert cursor.accept(TokenEvent(message_id="m1", content="a", event_id="10-0"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="?", event_id="not-an-id"))
    assert cursor.after() == "10-0"


def test_cursor_drops_replayed_events_of_finished_replies() -> None:
    view = SessionView(
        token="t",
        name="Ada",
        session_start=TS,
        messages=[
            ChatMessage(id="u1", role="user", content="hi", timestamp=TS),
            ChatMessage(id="a1", role="assistant", content="Reply to: hi", timestamp=TS),
            ChatMessage(id="u2", role="user", content="pending", timestamp=TS),
        ],
    )
    cursor = ResumeCursor()
    cursor.seed(view)
    # A resume from "0" replays the whole stream: u1's reply is old, u2's is new.
    assert not cursor.accept(TokenEvent(message_id="u1", content="R", event_id="1-0"))
    assert cursor.accept(TokenEvent(message_id="u2", content="R", event_id="2-0"))
    assert cursor.accept(reply("R", message_id="u2").model_copy(update={"event_id": "3-0"}))
    assert "u2" in cursor.finished


def test_conversation_is_idle_once_every_message_is_answered_or_refused() -> None:
    conversation = Conversation(Renderer(width=80))
    conversation.sent()
    conversation.sent()
    assert not conversation.idle.is_set()
    refused = ErrorEvent(code=ErrorCode.MESSAGE_TOO_LONG, detail="too long")
    assert conversation.show(refused) == "! message_too_long: too long\n"
    assert conversation.show(QueuedEvent(message_id="m1")) == ""
    assert conversation.show(TokenEvent(message_id="m1", content="Hel")) == ""
    assert conversation.show(TokenEvent(message_id="m1", content="lo")) == ""
    assert conversation.streamed == {"m1": "Hello"}
    assert conversation.live(rows=10) == f"{REPLY_PREFIX}Hello\n"
    assert not conversation.idle.is_set()
    assert conversation.show(reply("Hello")) == f"{REPLY_PREFIX}Hello\n"  # printed once, whole
    assert conversation.live(rows=10) == ""
    assert conversation.idle.is_set()


def test_a_restarted_reply_streams_again_from_nothing() -> None:
    conversation = Conversation(Renderer(width=80))
    conversation.show(QueuedEvent(message_id="m1"))
    conversation.show(TokenEvent(message_id="m1", content="Hel"))
    assert conversation.show(RestartEvent(message_id="m1")) == ""
    assert conversation.live(rows=10) == ""
    conversation.show(TokenEvent(message_id="m1", content="Hi"))
    assert conversation.live(rows=10) == f"{REPLY_PREFIX}Hi\n"


def test_several_replies_stream_side_by_side_each_printed_when_done() -> None:
    conversation = Conversation(Renderer(width=80))
    for message_id in ("m1", "m2"):
        conversation.show(QueuedEvent(message_id=message_id))
        conversation.show(TokenEvent(message_id=message_id, content=f"to {message_id}"))
    assert conversation.live(rows=10) == f"{REPLY_PREFIX}to m1\n{REPLY_PREFIX}to m2\n"
    assert conversation.show(reply("to m2 done", message_id="m2")) == f"{REPLY_PREFIX}to m2 done\n"
    assert conversation.live(rows=10) == f"{REPLY_PREFIX}to m1\n"
    assert not conversation.idle.is_set()


async def test_client_gives_up_once_its_reconnect_attempts_are_spent() -> None:
    async def chat(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:  # until the client drops the socket
            pass
        return ws

    app = web.Application()
    app.router.add_get("/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", free_port())
    await site.start()
    backoff = Backoff(initial=0.01, maximum=0.02, jitter=0.0, attempts=3)
    try:
        async with ChatClient(site.name, backoff=backoff) as client:
            client.token = "00000000-0000-4000-8000-000000000000"
            await client.connect()
            await site.stop()  # the server is gone: every reconnect attempt is refused
            await client.reconnect()
            with pytest.raises(ConnectionLost, match="after 3 attempts"):
                await asyncio.wait_for(anext(client.events()), 30)
    finally:
        await runner.cleanup()


# --- end to end, on the real stack ----------------------------------------------------


async def collect_reply(events: AsyncIterator[ServerEvent]) -> tuple[str, list[ServerEvent]]:
    """Events up to the first ``done`` or ``error``; the text streamed for the reply."""
    seen: list[ServerEvent] = []
    streamed = ""
    async for event in events:
        seen.append(event)
        if isinstance(event, TokenEvent):
            streamed += event.content
        elif isinstance(event, RestartEvent):
            streamed = ""
        elif isinstance(event, DoneEvent | ErrorEvent):
            break
    return streamed, seen


@pytest.mark.system
async def test_client_resumes_a_reply_after_the_socket_drops(parley: Parley) -> None:
    parley.standin.tokens = 30
    parley.standin.delay_ms = 10  # about 300 ms a reply: the drop lands mid-reply
    async with ChatClient(parley.url, backoff=Backoff(initial=0.05)) as client:
        await client.create_session("Ada")
        await client.connect()
        events = client.events()
        await client.send("first")
        _, seen = await asyncio.wait_for(collect_reply(events), 30)
        assert isinstance(seen[-1], DoneEvent)

        await client.send("second")
        first: ServerEvent | None = None
        while not isinstance(first, TokenEvent | DoneEvent):
            first = await asyncio.wait_for(anext(events), 30)
        assert isinstance(first, TokenEvent)
        await client.reconnect()  # the socket drops; the reply goes on meanwhile
        rest, seen = await asyncio.wait_for(collect_reply(events), 30)

    done = seen[-1]
    assert isinstance(done, DoneEvent)
    assert done.message_id == first.message_id
    assert rest, "the socket dropped mid-reply"
    assert first.content + rest == done.reply.content  # nothing lost, nothing twice
    assert done.reply.content.startswith("Reply to: second")
    ids = [first.event_id, *(getattr(e, "event_id", None) for e in seen)]
    assert len(ids) == len(set(ids))


@pytest.mark.system
async def test_client_gets_an_error_event_for_a_refused_message(parley_url: str) -> None:
    async with ChatClient(parley_url) as client:
        await client.create_session("Ada")
        await client.connect()
        events = client.events()
        await client.send("x" * 100_000)
        event = await asyncio.wait_for(anext(events), 30)
        assert isinstance(event, ErrorEvent)
        assert event.code is ErrorCode.MESSAGE_TOO_LONG


def revised(message_id: str, versions: int, event_id: str, content: str = "hi") -> RevisedEvent:
    """The event of a revision that kept its turn's earlier version number ``versions``
    (none if 0: a regenerate after a failed reply)."""
    kept = MessageVersion(content="hi", timestamp=TS, reply=None) if versions else None
    message = ChatMessage(id=message_id, role="user", content=content, timestamp=TS)
    return RevisedEvent(
        message_id=message_id,
        message=message,
        version=kept,
        version_count=versions,
        event_id=event_id,
    )


def test_cursor_reopens_a_turn_on_a_new_revision_and_drops_one_it_knows() -> None:
    earlier = MessageVersion(content="hi", timestamp=TS, reply=None)
    view = SessionView(
        token="t",
        name="Ada",
        session_start=TS,
        messages=[
            ChatMessage(id="u1", role="user", content="hi", timestamp=TS, versions=[earlier]),
            ChatMessage(id="a1", role="assistant", content="Reply 2", timestamp=TS),
        ],
    )
    cursor = ResumeCursor()
    cursor.seed(view)
    # A replay from the stream's start: the first reply, the revision the history holds
    # and the reply it got are all old.
    assert not cursor.accept(reply("Reply 1", message_id="u1", event_id="2-0"))
    assert not cursor.accept(revised("u1", versions=1, event_id="3-0"))
    assert not cursor.accept(TokenEvent(message_id="u1", content="Reply 2", event_id="4-0"))
    # A regenerate made since: its revision and its new reply are new.
    assert cursor.accept(revised("u1", versions=2, event_id="5-0"))
    assert cursor.accept(TokenEvent(message_id="u1", content="Reply 3", event_id="6-0"))
    assert cursor.accept(reply("Reply 3", message_id="u1", event_id="7-0"))
    assert not cursor.accept(TokenEvent(message_id="u1", content="late", event_id="8-0"))


def failed(message_id: str, event_id: str) -> ErrorEvent:
    return ErrorEvent(
        message_id=message_id, code=ErrorCode.LLM_UNAVAILABLE, detail="x", event_id=event_id
    )


def test_cursor_takes_a_regenerate_after_a_failed_reply_once() -> None:
    """A revision that kept no version leaves the count as it was: it is new after the
    turn's failure, live or in the history loaded, and old once the turn has a reply."""
    cursor = ResumeCursor()
    cursor.seed(SessionView(token="t", name="Ada", session_start=TS, messages=[]))
    assert cursor.accept(failed("u1", "1-0"))
    assert cursor.accept(revised("u1", versions=0, event_id="2-0"))
    assert cursor.accept(reply("Reply", message_id="u1", event_id="3-0"))

    # Loaded with that reply in history, a replay from the start drops it all.
    answered = SessionView(
        token="t",
        name="Ada",
        session_start=TS,
        messages=[
            ChatMessage(id="u1", role="user", content="hi", timestamp=TS),
            ChatMessage(id="a1", role="assistant", content="Reply", timestamp=TS),
        ],
    )
    cursor = ResumeCursor()
    cursor.seed(answered)
    assert not cursor.accept(failed("u1", "1-0"))
    assert not cursor.accept(revised("u1", versions=0, event_id="2-0"))
    assert not cursor.accept(reply("Reply", message_id="u1", event_id="3-0"))

    # Loaded while the turn had no reply (it failed): a regenerate then is new.
    unanswered = answered.model_copy(update={"messages": answered.messages[:1]})
    cursor = ResumeCursor(last_event_id="1-0")
    cursor.seed(unanswered)
    assert cursor.accept(revised("u1", versions=0, event_id="2-0"))
    assert cursor.accept(reply("Reply", message_id="u1", event_id="3-0"))


def test_a_revised_turn_shows_its_new_text_then_streams_its_new_reply() -> None:
    conversation = Conversation(Renderer(width=80))
    conversation.sent()
    event = revised("u1", versions=1, event_id="5-0", content="changed")
    assert conversation.show(event) == (
        "-- edited --\nyou: changed\n     (1 earlier version: /versions)\n"
    )
    assert not conversation.idle.is_set()  # its new reply is awaited
    assert conversation.last_user_message() == event.message.model_copy(
        update={"versions": [event.version]}
    )
    conversation.show(TokenEvent(message_id="u1", content="Reply", event_id="6-0"))
    assert conversation.live(rows=10) == f"{REPLY_PREFIX}Reply\n"
    conversation.show(reply("Reply", message_id="u1"))
    assert conversation.idle.is_set()
    same = revised("u1", versions=2, event_id="8-0", content="hi")
    assert conversation.show(same).startswith("-- answering again --\nyou: hi\n")


def test_a_turn_gathers_its_versions_from_history_and_revised_events() -> None:
    first = MessageVersion(content="one", timestamp=TS, reply=None)
    view = SessionView(
        token="t",
        name="Ada",
        session_start=TS,
        messages=[ChatMessage(id="u1", role="user", content="two", timestamp=TS, versions=[first])],
    )
    conversation = Conversation(Renderer(width=80), view)
    second = MessageVersion(content="two", timestamp=TS, reply=None)
    message = ChatMessage(id="u1", role="user", content="three", timestamp=TS)
    event = RevisedEvent(
        message_id="u1", message=message, version=second, version_count=2, event_id="5-0"
    )
    assert "(2 earlier versions: /versions)" in conversation.show(event)
    # The same revision shown again (a replay the cursor let through) adds nothing.
    conversation.show(event.model_copy(update={"event_id": "6-0"}))
    (turn,) = conversation.user_messages.values()
    assert [v.content for v in turn.versions or []] == ["one", "two"]
    listed = conversation.renderer.versions([turn])
    assert listed.index("you: one") < listed.index("you: two") < listed.index("you: three")


# --- a resume past the events kept ----------------------------------------------------


def gap(oldest: str) -> GapEvent:
    return GapEvent(oldest_event_id=oldest, detail="events after 5-0 are no longer kept")


def test_cursor_after_a_gap_drops_the_tokens_of_the_reply_it_cut_until_that_reply_ends() -> None:
    cursor = ResumeCursor(last_event_id="5-0")
    assert cursor.accept(gap("9-0"))
    # The replay starts mid-reply: m1's first tokens are gone, so its tail is not shown.
    assert not cursor.accept(TokenEvent(message_id="m1", content="tail", event_id="9-0"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="more", event_id="9-1"))
    assert cursor.after() == "9-1", "seen, not shown"
    assert cursor.accept(reply("whole", message_id="m1", event_id="9-2"))
    assert cursor.accept(TokenEvent(message_id="m2", content="new", event_id="9-3"))
    # The same gap, told again by a second replay of the same resume: nothing missed.
    assert not cursor.accept(gap("9-0"))
    assert cursor.accept(TokenEvent(message_id="m2", content=" one", event_id="9-4"))


def test_cursor_after_a_gap_that_ends_a_reply_or_restarts_it_drops_nothing() -> None:
    cursor = ResumeCursor(last_event_id="5-0")
    assert cursor.accept(gap("9-0"))
    assert cursor.accept(reply("whole", message_id="m1", event_id="9-0"))
    assert cursor.accept(TokenEvent(message_id="m2", content="from its start", event_id="9-1"))
    # Once the history is reloaded, the replayed events of its replies are dropped, and
    # the same gap told by a second replay is too.
    cursor = ResumeCursor(last_event_id="5-0", finished={"m1"})
    assert cursor.accept(gap("9-0"))
    assert not cursor.accept(reply("whole", message_id="m1", event_id="9-0"))
    assert not cursor.accept(gap("9-0"))
    cursor = ResumeCursor(last_event_id="5-0")
    assert cursor.accept(gap("9-0"))
    assert not cursor.accept(TokenEvent(message_id="m1", content="tail", event_id="9-0"))
    assert cursor.accept(RestartEvent(message_id="m1", event_id="9-1"))
    assert cursor.accept(TokenEvent(message_id="m1", content="again", event_id="9-2"))


def test_a_gap_clears_what_streamed_and_the_history_shows_what_was_missed() -> None:
    def user(message_id: str) -> ChatMessage:
        return ChatMessage(id=message_id, role="user", content=f"to {message_id}", timestamp=TS)

    def answer(message_id: str) -> ChatMessage:
        return ChatMessage(
            id=f"r-{message_id}", role="assistant", content=f"Reply {message_id}", timestamp=TS
        )

    def view(*messages: ChatMessage) -> SessionView:
        return SessionView(token="t", name="Ada", session_start=TS, messages=list(messages))

    conversation = Conversation(Renderer(width=80), view(user("u1"), answer("u1")))
    conversation.sent()
    conversation.show(QueuedEvent(message_id="u2", message=user("u2")))
    conversation.show(TokenEvent(message_id="u2", content="Rep"))
    assert conversation.show(gap("9-0")) == f"-- {GAP} --\n"
    assert conversation.live(rows=10) == "", "its text has a hole: it shows when done"
    # Meanwhile u2 was answered, and another tab sent u3 (answered) and u4 (waiting).
    history = view(
        user("u1"), answer("u1"), user("u2"), answer("u2"), user("u3"), answer("u3"), user("u4")
    )
    assert conversation.caught_up(history) == (
        f"{REPLY_PREFIX}Reply u2\nyou: to u3\n{REPLY_PREFIX}Reply u3\nyou: to u4\n"
    )
    assert conversation.waiting == {"u4"}
    assert not conversation.idle.is_set()
    conversation.show(reply("Reply u4", message_id="u4"))
    assert conversation.idle.is_set()
    assert conversation.caught_up(history) == "", "nothing twice"


@pytest.mark.system
async def test_client_told_of_a_gap_reloads_the_history_and_carries_on_live(
    redis_url: str, redis: Redis[str]
) -> None:
    # EVENTS_MAXLEN small: a few replies while the client is away are more than is kept.
    async with (
        running_parley(redis_url, redis, events_maxlen=5) as parley,
        aiohttp.ClientSession() as http,
        ChatClient(parley.url, http=http, backoff=Backoff(initial=0.05)) as client,
    ):
        await client.create_session("Ada")
        assert client.token is not None
        await client.connect()
        events = client.events()
        await client.send("first")
        await asyncio.wait_for(collect_reply(events), 30)
        cursor = client.cursor.after()
        await client.reconnect()  # away: events() reconnects only when read again
        await trim_past(http, parley.ws_url, redis, client.token, cursor)
        oldest = (await kept(redis, client.token))[0]

        told = await asyncio.wait_for(anext(events), 30)
        assert told == GapEvent(oldest_event_id=oldest, detail=told.detail)
        view = await client.catch_up()
        assert len(view.messages) > 4, "the replies written while away are in history"
        await client.send("live")
        _, seen = await asyncio.wait_for(collect_reply(events), 30)
    # The replayed events of replies the history holds are dropped: the live one follows.
    done = seen[-1]
    assert isinstance(done, DoneEvent) and done.reply.content.startswith("Reply to: live")
    assert {getattr(e, "message_id", None) for e in seen} == {done.message_id}
