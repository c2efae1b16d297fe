"""The store's scripts and the hub, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from redis.asyncio import Redis

from protocol.event_ids import event_id_of
from protocol.wire import ChatMessage, DoneEvent, MessageEntry, TokenEvent, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.hub import RESYNC, Hub
from storage.models import StoredMessage
from storage.store import (
    ANSWERED,
    NOT_YET,
    RESTARTED,
    STARTED,
    Begun,
    Emit,
    Fenced,
    MessageMark,
    SessionExpired,
    Store,
    TooManyPending,
)


@pytest.fixture
async def store(redis: Redis) -> Store:
    store = Store(redis, CommonSettings(session_ttl_seconds=60, events_maxlen=50))
    await store.streams.ensure_group()
    return store


def reply_to(user: StoredMessage, text: str) -> StoredMessage:
    return StoredMessage(
        id=f"r-{user.id}", role="assistant", content=text, timestamp=utc_now(), reply_to=user.id
    )


async def test_events_since_says_when_events_after_the_cursor_were_trimmed(
    store: Store, redis: Redis
) -> None:
    token = "3f2b8a9e-4c1d-4e5f-9a7b-2c3d4e5f6a7b"
    stream = keys.events_key(token)
    assert await store.events.events_since(token, "1-0", 10) == ([], None)  # no stream at all
    for ms in range(2, 22, 2):  # 2-0, 4-0, ... 20-0
        await redis.xadd(stream, {"event": json.dumps({"type": "token", "n": ms})}, id=f"{ms}-0")
    await redis.xtrim(stream, minid="10-0", approximate=False)  # 2-0 to 8-0 trimmed

    cases = {
        # A cursor kept, or between kept events: nothing after it is gone.
        ("10-0", 10): (["12-0", "14-0", "16-0", "18-0", "20-0"], None),
        ("15-0", 10): (["16-0", "18-0", "20-0"], None),
        ("20-0", 10): ([], None),
        ("12-0", 2): (["14-0", "16-0"], None),
        # Older than the oldest kept: the gap names it, and the replay starts there.
        ("4-0", 10): (["10-0", "12-0", "14-0", "16-0", "18-0", "20-0"], "10-0"),
        ("4-0", 2): (["10-0", "12-0"], "10-0"),
        ("1-0", 1): (["10-0"], "10-0"),
        # The last entry trimmed: its successor is kept, but Redis cannot tell, so the
        # gap is reported (a history reloaded for nothing, never a gap missed).
        ("8-0", 10): (["10-0", "12-0", "14-0", "16-0", "18-0", "20-0"], "10-0"),
    }
    for (after, count), expected in cases.items():
        found = await store.events.events_since(token, after, count)
        assert ([event_id_of(p) for p in found.payloads], found.gap) == expected, after


async def test_enqueue_numbers_records_and_queues(store: Store, redis: Redis) -> None:
    session = await store.sessions.create_session("ada")
    first = await store.queue.enqueue(session.token, "one", max_pending=10)
    second = await store.queue.enqueue(session.token, "two", max_pending=10)
    assert (first.seq, second.seq) == (1, 2)
    entries = await redis.xrange(keys.message_stream_of(session.token))
    assert [MessageEntry.from_fields(f).message_id for _, f in entries] == [first.id, second.id]
    view = (await store.sessions.get_session(session.token)).view()
    assert [m.content for m in view.messages] == ["one", "two"]
    assert 0 < await redis.ttl(keys.session_key(session.token)) <= 60


async def test_enqueue_refuses_unknown_session_and_too_many_pending(store: Store) -> None:
    with pytest.raises(SessionExpired):
        await store.queue.enqueue("00000000-0000-4000-8000-000000000000", "x", max_pending=10)
    session = await store.sessions.create_session("ada")
    await store.queue.enqueue(session.token, "a", max_pending=2)
    await store.queue.enqueue(session.token, "b", max_pending=2)
    with pytest.raises(TooManyPending):
        await store.queue.enqueue(session.token, "c", max_pending=2)
    assert len((await store.sessions.get_session(session.token)).messages) == 2


async def test_finish_records_once_in_conversation_order(store: Store, redis: Redis) -> None:
    session = await store.sessions.create_session("ada")
    u1 = await store.queue.enqueue(session.token, "one", max_pending=10)
    u2 = await store.queue.enqueue(session.token, "two", max_pending=10)
    r1 = reply_to(u1, "reply one")
    entry = MessageEntry(token=session.token, seq=1, message_id=u1.id)
    done = DoneEvent(message_id=u1.id, reply=r1.public())
    # Message 2 is not due before message 1 is answered: nothing changes.
    second = MessageEntry(token=session.token, seq=2, message_id=u2.id)
    assert await store.replies.begin(second, "2:a") == Begun(NOT_YET)
    begun = await store.replies.begin(entry, "1:a")
    assert begun.status == STARTED and begun.session is not None
    assert [m.content for m in begun.session.messages] == ["one", "two"]
    assert await store.replies.finish(entry, r1, done, "1:a") is not None
    assert await store.replies.finish(entry, r1, done, "1:a") is None  # a retry changes nothing
    assert await store.replies.begin(entry, "1:b") == Begun(ANSWERED)  # nothing to begin
    view = (await store.sessions.get_session(session.token)).view()
    assert [m.content for m in view.messages] == ["one", "reply one", "two"]
    assert await store.sessions.replied_seq(session.token) == 1
    assert await redis.xlen(keys.events_key(session.token)) == 1
    # u2 is still waiting and comes last.
    assert view.messages[-1] == ChatMessage(
        id=u2.id, role="user", content="two", timestamp=u2.timestamp
    )


async def test_message_marks_tell_which_messages_history_holds_and_which_are_answered(
    store: Store, redis: Redis
) -> None:
    session = await store.sessions.create_session("ada")
    u1 = await store.queue.enqueue(session.token, "one", max_pending=10)
    u2 = await store.queue.enqueue(session.token, "two", max_pending=10)
    entry = MessageEntry(token=session.token, seq=1, message_id=u1.id)
    assert (await store.replies.begin(entry, "1:a")).status == STARTED
    r1 = reply_to(u1, "reply one")
    assert await store.replies.finish(
        entry, r1, DoneEvent(message_id=u1.id, reply=r1.public()), "1:a"
    )
    gone = str(uuid.uuid4())
    assert await store.sessions.message_marks(session.token, [u1.id, u2.id, gone]) == {
        u1.id: MessageMark(str(u1.entry), answered=True),
        u2.id: MessageMark(str(u2.entry), answered=False),
    }
    assert await store.sessions.message_marks(session.token, []) == {}
    with pytest.raises(ValueError, match="not a message id"):
        await store.sessions.message_marks(session.token, ['x")]'])
    await redis.delete(keys.session_key(session.token))
    with pytest.raises(SessionExpired):
        await store.sessions.message_marks(session.token, [u1.id])


async def test_a_new_attempt_fences_off_the_old_one(store: Store, redis: Redis) -> None:
    session = await store.sessions.create_session("ada")
    u1 = await store.queue.enqueue(session.token, "one", max_pending=10)
    entry = MessageEntry(token=session.token, seq=1, message_id=u1.id)
    assert (await store.replies.begin(entry, "1:old")).status == STARTED
    assert await store.replies.emit(
        session.token, TokenEvent(message_id=u1.id, content="a"), "1:old"
    )
    # Taken over: the new attempt tells clients to discard the partial text...
    assert (await store.replies.begin(entry, "1:new")).status == RESTARTED
    events = [json.loads(p) for p in await store.events.events_after(session.token, "0")]
    assert [e["type"] for e in events] == ["token", "restart"]
    # ... and the old one can no longer emit or record anything.
    with pytest.raises(Fenced):
        await store.replies.emit(session.token, TokenEvent(message_id=u1.id, content="b"), "1:old")
    r1 = reply_to(u1, "late")
    with pytest.raises(Fenced):
        await store.replies.finish(
            entry, r1, DoneEvent(message_id=u1.id, reply=r1.public()), "1:old"
        )
    r2 = reply_to(u1, "new")
    done = DoneEvent(message_id=u1.id, reply=r2.public())
    assert await store.replies.finish(entry, r2, done, "1:new")
    view = (await store.sessions.get_session(session.token)).view()
    assert [m.content for m in view.messages] == ["one", "new"]
    # The next message's first attempt is no restart.
    u2 = await store.queue.enqueue(session.token, "two", max_pending=10)
    entry2 = MessageEntry(token=session.token, seq=2, message_id=u2.id)
    assert (await store.replies.begin(entry2, "2:x")).status == STARTED


async def test_emit_is_durable_and_published_with_its_id(store: Store, redis: Redis) -> None:
    session = await store.sessions.create_session("ada")
    await store.replies.begin(MessageEntry(token=session.token, seq=1, message_id="m"), "1:a")
    hub = Hub(redis, queue_size=4, control_channel="parley:test:control")
    await hub.start()
    try:
        async with hub.subscribe(keys.channel(session.token)) as sub:
            await asyncio.wait_for(sub.ready.wait(), 5)
            event_id = await store.replies.emit(
                session.token, TokenEvent(message_id="m", content="hi"), "1:a"
            )
            assert event_id is not None
            payload = await asyncio.wait_for(sub.queue.get(), 5)
            assert event_id_of(payload) == event_id
            assert json.loads(payload) == {
                "event_id": event_id,
                "type": "token",
                "message_id": "m",
                "content": "hi",
            }
            assert await store.events.events_after(session.token, "0") == [payload]
            assert await store.events.events_after(session.token, event_id) == []
            # A subscriber that falls behind is told to resync instead of growing.
            for n in range(6):
                await store.replies.emit(
                    session.token, TokenEvent(message_id="m", content=str(n)), "1:a"
                )

            async def drained() -> list[str]:
                seen: list[str] = []
                while RESYNC not in seen:
                    seen.append(await sub.queue.get())
                return seen

            assert RESYNC in await asyncio.wait_for(drained(), 5)
        assert hub.channel_count == 0
    finally:
        await hub.aclose()


async def test_emit_on_expired_session_writes_nothing(store: Store, redis: Redis) -> None:
    token = "00000000-0000-4000-8000-000000000000"
    assert await store.replies.emit(token, TokenEvent(message_id="m", content="x"), "1:a") is None
    assert await redis.exists(keys.events_key(token)) == 0


async def test_the_event_stream_takes_the_session_ttl_first_and_last(
    store: Store, redis: Redis
) -> None:
    session = await store.sessions.create_session("ada")
    u1 = await store.queue.enqueue(session.token, "one", max_pending=10)
    entry = MessageEntry(token=session.token, seq=1, message_id=u1.id)
    await store.replies.begin(entry, "1:a")
    events = keys.events_key(session.token)
    await store.replies.emit(session.token, TokenEvent(message_id=u1.id, content="a"), "1:a")
    assert 0 < await redis.ttl(events) <= 60
    # Later events of the attempt leave the stream's TTL alone...
    await redis.persist(events)
    await store.replies.emit(
        session.token, TokenEvent(message_id=u1.id, content="b"), "1:a", first=False
    )
    assert await redis.ttl(events) == -1
    # ... and the end of the reply gives it again.
    r1 = reply_to(u1, "ab")
    assert await store.replies.finish(
        entry, r1, DoneEvent(message_id=u1.id, reply=r1.public()), "1:a"
    )
    assert 0 < await redis.ttl(events) <= 60


async def test_messages_renew_the_session_and_event_stream_ttls_only_when_due(
    store: Store, redis: Redis
) -> None:
    """A message renews the session's TTL, and a reply its event stream's, only once
    less than the TTL minus its slack (1%: 0.6 s of the fixture's 60 s) is left, by the
    expiry the session records; a renewal records the new one."""
    session = await store.sessions.create_session("ada")
    token = session.token
    doc, events = keys.session_key(token), keys.events_key(token)

    async def recorded(path: str, seconds_left: float) -> None:
        at = int(time.time() * 1000 + seconds_left * 1000)
        await redis.execute_command("JSON.SET", doc, path, at)

    async def answer(seq: int) -> None:
        message = await store.queue.enqueue(token, f"m{seq}", max_pending=10)
        entry = MessageEntry(token=token, seq=seq, message_id=message.id)
        await store.replies.begin(entry, f"{seq}:a")
        r = reply_to(message, "ok")
        done = DoneEvent(message_id=message.id, reply=r.public())
        assert await store.replies.finish(entry, r, done, f"{seq}:a")

    await answer(1)  # a new session records nothing yet: both renewed
    assert 59 <= await redis.ttl(doc) <= 60 and 59 <= await redis.ttl(events) <= 60
    # Not due (59.9 s of 60 left): no EXPIRE, so a key without a TTL keeps none.
    await redis.persist(doc)
    await redis.persist(events)
    await recorded("$.expires_at", 59.9)
    await recorded("$.events_until", 59.9)
    await answer(2)
    assert await redis.ttl(doc) == -1 and await redis.ttl(events) == -1
    # Due (59 s left): renewed, and the new expiry recorded.
    await recorded("$.expires_at", 59)
    await recorded("$.events_until", 59)
    before = time.time() * 1000
    await answer(3)
    assert 59 <= await redis.ttl(doc) <= 60 and 59 <= await redis.ttl(events) <= 60
    for path in ("$.expires_at", "$.events_until"):
        (at,) = await store.sessions.json_get(doc, path)
        assert before + 59_000 < at <= time.time() * 1000 + 60_000


async def test_finish_acks_the_entry_once_the_message_is_closed(store: Store, redis: Redis) -> None:
    session = await store.sessions.create_session("ada")
    stream = keys.message_stream_of(session.token)
    u1 = await store.queue.enqueue(session.token, "one", max_pending=10)
    ((_, [(entry_id, _)]),) = await redis.xreadgroup(
        keys.CONSUMER_GROUP, "c1", {stream: ">"}, count=1
    )
    entry = MessageEntry(token=session.token, seq=1, message_id=u1.id)
    await store.replies.begin(entry, "1:a")
    r1 = reply_to(u1, "hi")
    done = DoneEvent(message_id=u1.id, reply=r1.public())
    # A fenced attempt neither records nor acks.
    with pytest.raises(Fenced):
        await store.replies.finish(entry, r1, done, "1:old", ack=(stream, entry_id))
    assert (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"] == 1
    assert await store.replies.finish(entry, r1, done, "1:a", ack=(stream, entry_id))
    assert (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"] == 0
    # Finished already (a re-claimed entry): nothing recorded, and the entry acked.
    await redis.xclaim(stream, keys.CONSUMER_GROUP, "c2", 0, [entry_id])
    await redis.xgroup_setid(stream, keys.CONSUMER_GROUP, "0")
    await redis.xreadgroup(keys.CONSUMER_GROUP, "c2", {stream: ">"}, count=1)
    assert (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"] == 1
    assert await store.replies.finish(entry, r1, done, "1:a", ack=(stream, entry_id)) is None
    assert (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"] == 0


async def test_emit_many_publishes_each_in_order_and_fences_each_alone(
    store: Store, redis: Redis
) -> None:
    # Three sessions of one partition: tokens share their first hex digit.
    tokens = []
    while len(tokens) < 3:
        session = await store.sessions.create_session("ada")
        if keys.partition(session.token) == keys.partition((tokens or [session.token])[0]):
            tokens.append(session.token)
    for token in tokens:
        await store.replies.begin(MessageEntry(token=token, seq=1, message_id="m"), "1:a")
    gone = "f" * 8 + "-0000-4000-8000-000000000000"
    gone = keys.partition(tokens[0]) + gone[1:]
    event = TokenEvent(message_id="m", content="x").model_dump_json(exclude_none=True)
    results = await store.replies.emit_many(
        [
            Emit(tokens[0], event, "1:a", first=True),
            Emit(tokens[1], event, "1:old", first=False),  # fenced
            Emit(gone, event, "1:a", first=True),  # no such session
            Emit(tokens[2], event, "1:a", first=False),
            Emit(tokens[0], event, "1:a", first=False),
        ]
    )
    assert isinstance(results[1], Fenced) and results[2] is None
    first, _, _, third, again = results
    assert isinstance(first, str) and isinstance(third, str) and isinstance(again, str)
    stored = [json.loads(p)["event_id"] for p in await store.events.events_after(tokens[0], "0")]
    assert stored == [first, again]
    assert await store.events.events_after(tokens[1], "0") == []
    assert await redis.exists(keys.events_key(gone)) == 0
    assert 0 < await redis.ttl(keys.events_key(tokens[0])) <= 60
    assert await redis.ttl(keys.events_key(tokens[2])) == -1  # not its attempt's first
