"""Fencing by entry: a stream entry left over from before a regenerate cannot close the
turn the regenerate queued. And a first reply's entry stays pending until its title job
is queued, so a worker's death in between is taken over like any other.

The case: a worker gives up on a message (its deliveries ran out) and closes it with
``delivery_failed``, then dies before its ``XACK``. The person regenerates, which queues
the message again under a new entry. The leftover entry is then taken over, its
deliveries still spent, and given up again: it must be acknowledged and change nothing,
not close the new turn with a second ``delivery_failed``.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from redis.asyncio import Redis

from protocol.wire import DoneEvent, ErrorCode, ErrorEvent, MessageEntry, utc_now
from storage import keys
from storage.deliveries import Delivery
from storage.hub import Hub
from storage.models import StoredMessage
from storage.store import STALE, STARTED, Store
from tests.support.events import count, read_until
from tests.support.parley import running_parley
from worker.app import llm_config
from worker.config import WorkerSettings
from worker.model.llm import LLMClient
from worker.reply import MessageAnswerer


async def test_a_leftover_entry_given_up_after_a_regenerate_closes_nothing(
    redis: Redis[str],
) -> None:
    settings = WorkerSettings(llm_base_url="http://127.0.0.1:9/v1", consumer_name="w-fence")
    store = Store(redis, settings)
    await store.streams.ensure_group()
    session = await store.sessions.create_session("ada")
    token = session.token
    message = await store.queue.enqueue(token, "one", max_pending=10)
    stream = keys.message_stream_of(token)
    old_entry = message.entry
    assert old_entry is not None
    # A worker read it and, its deliveries spent, closed it with an error, then died
    # before acknowledging it (the close and the ack were two steps).
    await redis.xreadgroup(keys.CONSUMER_GROUP, "dead-worker", {stream: ">"})
    entry = MessageEntry(token=token, seq=1, message_id=message.id)
    failed = ErrorEvent(message_id=message.id, code=ErrorCode.DELIVERY_FAILED, detail="x")
    assert await store.replies.finish(entry, None, failed, "") is not None
    # The person regenerates: the same message under a new entry.
    revision = await store.queue.revise(token, max_versions=20, max_attempts=20)
    assert revision.entry != old_entry
    assert await store.sessions.replied_seq(token) == 0
    events_before = await redis.xlen(keys.events_key(token))

    # The leftover entry is taken over with its deliveries spent, and given up.
    llm = LLMClient(llm_config(settings))
    hub = Hub(redis, control_channel="parley:test:fence")
    try:
        await hub.start()
        answerer = MessageAnswerer(settings, redis, llm, store, hub)
        fields = {"token": token, "seq": "1", "message_id": message.id}
        leftover = Delivery(
            redis, "w-fence", (stream, old_entry), fields, deliveries=settings.max_deliveries
        )
        await redis.xclaim(stream, keys.CONSUMER_GROUP, "w-fence", 0, [old_entry])
        await answerer.answer(leftover, entry)
    finally:
        await hub.aclose()
        await llm.aclose()

    # The new turn is still open, nobody was told it failed, nothing was dead-lettered,
    # and the leftover entry is acknowledged.
    assert await store.sessions.replied_seq(token) == 0
    appended = await redis.xrange(keys.events_key(token), count=100)
    assert len(appended) == events_before
    assert all(json.loads(f["event"])["type"] != "error" for _, f in appended[-1:])
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 0
    pending = await redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == []

    # The leftover begins nothing; the new entry begins the reply.
    assert (await store.replies.begin(entry, "1:old", entry_id=old_entry)).status == STALE
    begun = await store.replies.begin(entry, "1:new", entry_id=revision.entry)
    assert begun.status == STARTED


async def test_finish_of_a_stale_entry_acks_it_and_records_nothing(redis: Redis[str]) -> None:
    settings = WorkerSettings(llm_base_url="http://127.0.0.1:9/v1")
    store = Store(redis, settings)
    await store.streams.ensure_group()
    session = await store.sessions.create_session("ada")
    token = session.token
    message = await store.queue.enqueue(token, "one", max_pending=10)
    stream = keys.message_stream_of(token)
    assert message.entry is not None
    await redis.xreadgroup(keys.CONSUMER_GROUP, "w", {stream: ">"})
    entry = MessageEntry(token=token, seq=1, message_id=message.id)
    failed = ErrorEvent(message_id=message.id, code=ErrorCode.LLM_UNAVAILABLE, detail="x")
    # A stale entry id (the message is queued under another): acked, nothing recorded.
    await redis.xadd(stream, {"token": token, "seq": "1", "message_id": message.id})
    read = await redis.xreadgroup(keys.CONSUMER_GROUP, "w", {stream: ">"})
    stale_id = read[0][1][0][0]
    assert await store.replies.finish(entry, None, failed, "", ack=(stream, stale_id)) is None
    assert await store.sessions.replied_seq(token) == 0
    pending = await redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [message.entry]
    # The message's own entry closes it, and is acked with it.
    assert (
        await store.replies.finish(entry, None, failed, "", ack=(stream, message.entry)) is not None
    )
    assert await store.sessions.replied_seq(token) == 1
    assert await redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10) == []


async def test_a_first_reply_taken_over_after_it_was_recorded_still_gets_its_title(
    redis_url: str, redis: Redis[str]
) -> None:
    """Its worker recorded the first reply, then died before it acked the entry and
    queued the title job: the worker that takes the entry over queues it."""
    settings = WorkerSettings(llm_base_url="http://127.0.0.1:9/v1")
    store = Store(redis, settings)
    await store.streams.ensure_group()
    token = (await store.sessions.create_session("ada")).token
    message = await store.queue.enqueue(token, "one", max_pending=10)
    stream = keys.message_stream_of(token)
    await redis.xreadgroup(keys.CONSUMER_GROUP, "dead-worker", {stream: ">"})
    entry = MessageEntry(token=token, seq=1, message_id=message.id)
    reply = StoredMessage(
        id="r1", role="assistant", content="two", timestamp=utc_now(), reply_to=message.id
    )
    done = DoneEvent(message_id=message.id, reply=reply.public())
    assert await store.replies.finish(entry, reply, done, "") is not None  # no ack, no title job
    async with running_parley(redis_url, redis) as parley:
        async with asyncio.timeout(20):
            while not (await store.sessions.get_session(token, touch=False)).title:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert parley.standin.requests, "the title was asked of the model"
    assert await redis.xpending(stream, keys.CONSUMER_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_first_replys_entry_stays_pending_until_its_title_job_is_queued(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """A worker that dies between recording a first reply and queueing its title job
    must leave the entry pending for another (the test above): held here at that point,
    as a SIGKILL there would leave it."""
    async with running_parley(redis_url, redis) as parley:
        followups = parley.worker.answerer.generator.followups
        queue_title, reached, hold = followups.request_title, asyncio.Event(), asyncio.Event()

        async def held(token: str, model: str) -> None:
            reached.set()
            await hold.wait()
            await queue_title(token, model)

        followups.request_title = held  # type: ignore[method-assign]
        token = await parley.create_session(http)
        stream = keys.message_stream_of(token)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hi")
            await read_until(ws, count("done", 1))
            await asyncio.wait_for(reached.wait(), 10)
            assert (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"] == 1
            hold.set()
            async with asyncio.timeout(10):
                while (await redis.xpending(stream, keys.CONSUMER_GROUP))["pending"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
