"""summary.lua: a session's rolling summary is stored once, compare-and-set on its seq."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from protocol.wire import DoneEvent, MessageEntry, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.models import StoredMessage, SummaryRecord
from storage.scripts import SummaryStatus
from storage.store import SessionExpired, Store
from storage.summaries import Summaries


@pytest.fixture
async def store(redis: Redis) -> Store:
    store = Store(redis, CommonSettings(session_ttl_seconds=60, events_maxlen=50))
    await store.streams.ensure_group()
    return store


async def conversation(store: Store, turns: int, pending: int = 0) -> str:
    """A session with ``turns`` answered turns, then ``pending`` unanswered messages."""
    token = (await store.sessions.create_session("ada")).token
    for n in range(1, turns + pending + 1):
        user = await store.queue.enqueue(token, f"message {n}", max_pending=100)
        if n > turns:
            continue
        entry = MessageEntry(token=token, seq=n, message_id=user.id)
        await store.replies.begin(entry, f"{n}:a")
        reply = StoredMessage(
            id=f"r{n}",
            role="assistant",
            content=f"reply {n}",
            timestamp=utc_now(),
            reply_to=user.id,
        )
        await store.replies.finish(
            entry, reply, DoneEvent(message_id=user.id, reply=reply.public()), f"{n}:a"
        )
    return token


def summary(seq: int, text: str = "so far") -> SummaryRecord:
    return SummaryRecord(text=text, seq=seq, tokens=3, timestamp=utc_now())


async def test_a_summary_extends_the_stored_one_from_where_it_ended(
    store: Store, redis: Redis
) -> None:
    token = await conversation(store, 5)
    summaries = Summaries(redis, store.settings)
    assert (
        await summaries.store_summary(token, 0, summary(2, "one and two")) == SummaryStatus.STORED
    )
    assert (
        await summaries.store_summary(token, 2, summary(3, "one to three")) == SummaryStatus.STORED
    )
    stored = (await store.sessions.get_session(token)).summary
    assert stored is not None and (stored.seq, stored.text) == (3, "one to three")


async def test_a_retried_or_stale_summary_changes_nothing(store: Store, redis: Redis) -> None:
    token = await conversation(store, 5)
    summaries = Summaries(redis, store.settings)
    assert await summaries.store_summary(token, 0, summary(2, "first")) == SummaryStatus.STORED
    # The same job again (a worker died after storing it, another took the job over):
    # made from no summary, it is stale now.
    assert await summaries.store_summary(token, 0, summary(2, "again")) == SummaryStatus.STALE
    # A job made from a summary that is no longer the stored one.
    assert await summaries.store_summary(token, 1, summary(3, "other")) == SummaryStatus.STALE
    stored = (await store.sessions.get_session(token)).summary
    assert stored is not None and (stored.seq, stored.text) == (2, "first")


async def test_only_answered_turns_before_the_last_message_can_be_summarized(
    store: Store, redis: Redis
) -> None:
    token = await conversation(store, 4, pending=2)  # seq 6, replied 4
    summaries = Summaries(redis, store.settings)
    for seq in (0, 5, 6):  # not after the base; unanswered; the last message
        assert await summaries.store_summary(token, 0, summary(seq)) == SummaryStatus.OUT_OF_RANGE
    answered = await conversation(store, 3)  # seq 3, replied 3: the last turn stays whole
    assert await summaries.store_summary(answered, 0, summary(3)) == SummaryStatus.OUT_OF_RANGE
    assert await summaries.store_summary(answered, 0, summary(2)) == SummaryStatus.STORED
    assert (await store.sessions.get_session(token)).summary is None


async def test_two_workers_racing_store_one_summary(store: Store, redis: Redis) -> None:
    token = await conversation(store, 6)
    summaries = Summaries(redis, store.settings)
    statuses = await asyncio.gather(
        *(summaries.store_summary(token, 0, summary(n, f"by {n}")) for n in (2, 3, 4, 2, 3))
    )
    assert sorted(statuses) == [SummaryStatus.STORED] + [SummaryStatus.STALE] * 4
    stored = (await store.sessions.get_session(token)).summary
    assert stored is not None and stored.text == f"by {stored.seq}"


async def test_begin_reads_the_summary_with_the_window(store: Store, redis: Redis) -> None:
    token = await conversation(store, 3, pending=1)
    await Summaries(redis, store.settings).store_summary(token, 0, summary(2, "the start"))
    session = await store.sessions.get_session(token)
    user = next(m for m in session.messages if m.seq == 4)
    begun = await store.replies.begin(MessageEntry(token=token, seq=4, message_id=user.id), "4:a")
    assert begun.session is not None and begun.session.summary is not None
    assert (begun.session.summary.seq, begun.session.summary.text) == (2, "the start")


async def test_a_session_written_before_summaries_existed_still_works(
    store: Store, redis: Redis
) -> None:
    token = await conversation(store, 3, pending=1)
    await redis.json().delete(keys.session_key(token), "$.summary")
    session = await store.sessions.get_session(token)
    assert session.summary is None
    user = next(m for m in session.messages if m.seq == 4)
    begun = await store.replies.begin(MessageEntry(token=token, seq=4, message_id=user.id), "4:a")
    assert begun.session is not None and begun.session.summary is None
    summaries = Summaries(redis, store.settings)
    assert await summaries.store_summary(token, 0, summary(1)) == SummaryStatus.STORED


async def test_no_session(store: Store, redis: Redis) -> None:
    with pytest.raises(SessionExpired):
        await Summaries(redis, store.settings).store_summary(
            "00000000-0000-4000-8000-000000000000", 0, summary(1)
        )
