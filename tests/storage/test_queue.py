"""The queue's bounds against a real Redis: trimming, the backlog bound, the session
bound, lost entries, counting failed tries, and reading only the newest messages."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from protocol.wire import ErrorCode, ErrorEvent, MessageEntry
from runtime.config import CommonSettings
from storage import keys
from storage.store import (
    STARTED,
    TRIM_ACKED,
    TRIM_MINID,
    NotYourTurn,
    Overloaded,
    SessionFull,
    Store,
    TooManyPending,
)


async def store_with(redis: Redis, **settings: int) -> Store:
    store = Store(redis, CommonSettings(session_ttl_seconds=60, **settings))  # type: ignore[arg-type]
    await store.streams.ensure_group()
    return store


async def sessions_in_partition_0(store: Store, n: int) -> list[str]:
    """``n`` sessions of partition ``0`` (tokens are drawn until they fall there)."""
    tokens: list[str] = []
    while len(tokens) < n:
        session = await store.sessions.create_session("ada")
        if keys.partition(session.token) == "0":
            tokens.append(session.token)
        else:
            await store.redis.delete(keys.session_key(session.token))
    return tokens


@pytest.mark.parametrize("mode", [TRIM_ACKED, TRIM_MINID])
async def test_trimming_removes_only_acknowledged_entries(redis: Redis, mode: str) -> None:
    store = await store_with(redis, message_stream_maxlen=10)
    # The embedded Redis is 8.2, which has ACKED; MINID (for older Redis) works there too.
    assert await store.streams.trim_mode() == TRIM_ACKED
    store.streams._trim_mode = mode
    (token,) = await sessions_in_partition_0(store, 1)
    stream = keys.message_stream("0")
    group = keys.CONSUMER_GROUP
    # 300 messages, none read: nothing may be trimmed.
    for k in range(300):
        await store.queue.enqueue(token, f"m{k}", max_pending=1000)
    assert await redis.xlen(stream) == 300
    assert await store.streams.trim(stream) == 0
    # Read 250, acknowledge all but the first 5: those and the 50 unread must stay.
    [[_, read]] = await redis.xreadgroup(group, "c", {stream: ">"}, count=250)
    ids = [entry_id for entry_id, _ in read]
    await redis.xack(stream, group, *ids[5:])
    await store.streams.trim(stream)
    left = {entry_id for entry_id, _ in await redis.xrange(stream)}
    assert set(ids[:5]) <= left, "a pending entry was trimmed"
    unread = [entry_id for entry_id, _ in await redis.xrange(stream, min=f"({ids[-1]}")]
    assert len(unread) == 50, "an entry not yet delivered was trimmed"
    if mode == TRIM_ACKED:
        # About the bound of acknowledged entries stays, around the pending ones.
        assert len(left) == 5 + 50 + 10
    else:
        # Only below the oldest pending entry, which is the oldest entry here.
        assert len(left) == 300
    # Once everything is acknowledged, the stream comes down to about the bound.
    [[_, rest]] = await redis.xreadgroup(group, "c", {stream: ">"})
    await redis.xack(stream, group, *ids[:5], *(entry_id for entry_id, _ in rest))
    await store.streams.trim(stream)
    assert await redis.xlen(stream) <= 10 + 100


async def test_a_full_backlog_refuses_and_accepts_again_once_acknowledged(redis: Redis) -> None:
    store = await store_with(redis, max_backlog=5)
    a, b = await sessions_in_partition_0(store, 2)
    for k in range(3):
        await store.queue.enqueue(a, f"a{k}", max_pending=10)
    for k in range(2):
        await store.queue.enqueue(b, f"b{k}", max_pending=10)
    with pytest.raises(Overloaded):
        await store.queue.enqueue(b, "one too many", max_pending=10)
    # Refused means not accepted: not in history, not queued.
    assert [m.content for m in (await store.sessions.get_session(b)).messages] == ["b0", "b1"]
    stream = keys.message_stream("0")
    assert await redis.xlen(stream) == 5
    # Read (pending) still counts; acknowledged does not.
    [[_, read]] = await redis.xreadgroup(keys.CONSUMER_GROUP, "c", {stream: ">"}, count=2)
    with pytest.raises(Overloaded):
        await store.queue.enqueue(b, "still too many", max_pending=10)
    await redis.xack(stream, keys.CONSUMER_GROUP, read[0][0])
    await store.queue.enqueue(b, "room again", max_pending=10)
    # After a deletion among the undelivered entries XINFO cannot count them: still bounded.
    await redis.xdel(stream, read[1][0])
    await redis.xdel(stream, (await redis.xrange(stream, min=f"({read[1][0]}", count=1))[0][0])
    assert (await redis.xinfo_groups(stream))[0]["lag"] is None
    await store.queue.enqueue(b, "counted by hand", max_pending=10)
    with pytest.raises(Overloaded):
        await store.queue.enqueue(a, "over", max_pending=10)


async def test_a_full_session_refuses_more_messages(redis: Redis) -> None:
    store = await store_with(redis, max_session_messages=3)
    session = await store.sessions.create_session("ada")
    for k in range(3):
        await store.queue.enqueue(session.token, f"m{k}", max_pending=10)
    with pytest.raises(SessionFull):
        await store.queue.enqueue(session.token, "m3", max_pending=10)
    # The bound holds whatever was answered: a new session is the way on.
    await redis.execute_command("JSON.SET", keys.session_key(session.token), ".replied_seq", 3)
    with pytest.raises(SessionFull):
        await store.queue.enqueue(session.token, "m3", max_pending=10)
    assert len((await store.sessions.get_session(session.token)).messages) == 3
    other = await store.sessions.create_session("bob")
    await store.queue.enqueue(other.token, "fresh", max_pending=10)
    with pytest.raises(TooManyPending):
        await store.queue.enqueue(other.token, "too soon", max_pending=1)


async def test_begin_reads_only_the_newest_messages(redis: Redis) -> None:
    store = await store_with(redis)
    session = await store.sessions.create_session("ada")
    for k in range(6):
        await store.queue.enqueue(session.token, f"m{k}", max_pending=10)
    entry = MessageEntry(token=session.token, seq=1, message_id="x")
    begun = await store.replies.begin(entry, "1:a", window=4)
    assert begun.status == STARTED and begun.session is not None and not begun.complete
    assert [m.content for m in begun.session.messages] == ["m2", "m3", "m4", "m5"]
    assert begun.session.stop_seq == 0
    whole = await store.replies.begin(entry, "1:b", window=0)
    assert whole.complete and whole.session is not None
    assert [m.content for m in whole.session.messages] == [f"m{k}" for k in range(6)]
    assert whole.crashes == 1, "1:a neither finished nor failed: a crash"


async def test_a_message_whose_entry_is_gone_is_closed_and_the_session_goes_on(
    redis: Redis,
) -> None:
    store = await store_with(redis)
    session = await store.sessions.create_session("ada")
    first = await store.queue.enqueue(session.token, "one", max_pending=10)
    await store.queue.enqueue(session.token, "two", max_pending=10)
    stream = keys.message_stream_of(session.token)
    # Still in the stream: not lost.
    assert await store.queue.close_if_lost(session.token) == (0, 0)
    # Read by a consumer, then deleted from the stream: pending, so a worker may still
    # be generating it; not lost.
    [[_, read]] = await redis.xreadgroup(keys.CONSUMER_GROUP, "c", {stream: ">"}, count=1)
    assert read[0][0] == first.entry
    await redis.xdel(stream, first.entry)
    assert await store.queue.close_if_lost(session.token) == (0, 0)
    # Its consumer is gone and a takeover drops it from the pending entries: lost.
    await redis.xautoclaim(stream, keys.CONSUMER_GROUP, "d", 0, "0-0")
    assert await store.queue.close_if_lost(session.token) == (1, 1)
    events = [json.loads(p) for p in await store.events.events_after(session.token, "0")]
    assert [(e["type"], e["message_id"], e["code"]) for e in events] == [
        ("error", first.id, "message_lost")
    ]
    # Message 2 is still in the stream: its turn now, not lost.
    assert await store.queue.close_if_lost(session.token) == (1, 0)


async def test_failed_tries_raise_the_delivery_count_and_mark_the_attempt(redis: Redis) -> None:
    store = await store_with(redis)
    session = await store.sessions.create_session("ada")
    message = await store.queue.enqueue(session.token, "one", max_pending=10)
    stream = keys.message_stream_of(session.token)
    assert message.entry is not None
    await redis.xreadgroup(keys.CONSUMER_GROUP, "c", {stream: ">"})
    entry = MessageEntry(token=session.token, seq=1, message_id=message.id)
    assert (await store.replies.begin(entry, "1:a")).status == STARTED
    assert (
        await store.streams.count_failure(session.token, (stream, message.entry), "c", "1:a") == 2
    )
    # The next attempt follows a failure, not a crash.
    again = await store.replies.begin(entry, "1:b")
    assert again.crashes == 0
    assert await store.streams.count_failure(session.token, (stream, message.entry), "c") == 3
    assert await store.streams.deliveries(stream, message.entry) == 3
    # An attempt that neither finished nor failed: a crash.
    assert (await store.replies.begin(entry, "1:c")).crashes == 1


async def test_the_sweep_takes_waiting_sessions_once_a_while(redis: Redis) -> None:
    store = await store_with(redis)
    (token,) = await sessions_in_partition_0(store, 1)
    await store.queue.enqueue(token, "one", max_pending=10)
    assert await store.queue.due_for_sweep("0", older_than_ms=60_000) == []
    assert await store.queue.due_for_sweep("0", older_than_ms=0) == [token]
    # Checked just now: not due again before its time.
    assert await store.queue.due_for_sweep("0", older_than_ms=60_000) == []
    # Once nothing waits, a check takes the session out of the set.
    await redis.execute_command("JSON.SET", keys.session_key(token), ".replied_seq", 1)
    assert await store.queue.close_if_lost(token) == (1, 0)
    assert await store.queue.due_for_sweep("0", older_than_ms=0) == []


async def test_closing_without_an_attempt_waits_its_turn_and_mends_the_session(
    redis: Redis,
) -> None:
    store = await store_with(redis)
    session = await store.sessions.create_session("ada")
    one = await store.queue.enqueue(session.token, "one", max_pending=10)
    two = await store.queue.enqueue(session.token, "two", max_pending=10)

    def failed(message_id: str) -> ErrorEvent:
        return ErrorEvent(message_id=message_id, code=ErrorCode.DELIVERY_FAILED, detail="x")

    second = MessageEntry(token=session.token, seq=2, message_id=two.id)
    with pytest.raises(NotYourTurn):
        await store.replies.finish(second, None, failed(two.id), "")
    # A session whose counter is unreadable (which breaks begin.lua) is closed and mended.
    await redis.execute_command("JSON.SET", keys.session_key(session.token), "$.replied_seq", '"x"')
    first = MessageEntry(token=session.token, seq=1, message_id=one.id)
    assert await store.replies.finish(first, None, failed(one.id), "")
    assert await store.sessions.replied_seq(session.token) == 1
    assert await store.replies.finish(second, None, failed(two.id), "")
    assert await store.replies.finish(second, None, failed(two.id), "") is None  # once
