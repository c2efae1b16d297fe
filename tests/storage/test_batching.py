"""Natural batching (storage.batching) and the batched scripts (begin, finish) on a real
Redis: calls made while one is in flight share the next call, each still answered
alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import DoneEvent, MessageEntry, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.batching import Batcher
from storage.models import StoredMessage
from storage.store import STARTED, Store


class Sender:
    """A batch's send that records each batch and answers once released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(i) if i < 0 else i * 10 for i in items]


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_lone_call_goes_at_once_and_calls_meanwhile_share_the_next() -> None:
    send = Sender()
    batcher: Batcher[int, int] = Batcher(send, lambda i: 0, limit=100)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    assert send.batches == [[1]]  # sent without waiting for company
    later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, -4, 5)]
    await settle()
    assert send.batches == [[1]]  # one round in flight at a time
    send.release.set()
    assert await first == 10
    assert await asyncio.gather(*later[:2], later[3]) == [20, 30, 50]
    with pytest.raises(ValueError):  # an item's own error is its own
        await later[2]
    assert send.batches == [[1], [2, 3, -4, 5]]


async def test_an_eager_lone_call_is_sent_by_its_caller_and_calls_meanwhile_wait() -> None:
    senders: list[asyncio.Task[object] | None] = []
    send = Sender()

    async def recording(items: Sequence[int]) -> list[int | BaseException]:
        senders.append(asyncio.current_task())
        return await send(items)

    batcher: Batcher[int, int] = Batcher(recording, lambda i: 0, limit=100, eager=True)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await settle()
    assert send.batches == [[1]] and senders == [first]
    send.release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30]
    assert send.batches == [[1], [2, 3]] and senders[1] not in (first, *later)


async def test_with_two_rounds_in_flight_a_call_goes_at_once_beside_the_first() -> None:
    send = Sender()
    batcher: Batcher[int, int] = Batcher(send, lambda i: 0, limit=100, concurrency=2)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    second = asyncio.create_task(batcher.submit(2))
    await settle()
    assert send.batches == [[1], [2]]  # the second did not wait for the first
    later = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
    await settle()
    assert send.batches == [[1], [2]]  # two in flight: the others wait
    send.release.set()
    assert await asyncio.gather(first, second, *later) == [10, 20, 30, 40]
    assert send.batches == [[1], [2], [3, 4]]


async def test_batches_keep_to_their_group_and_limit_and_skip_cancelled_calls() -> None:
    send = Sender()
    batcher: Batcher[int, int] = Batcher(send, lambda i: i % 2, limit=2)
    first = asyncio.create_task(batcher.submit(100))
    await settle()
    calls = {i: asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3, 4, 5, 6, 7)}
    await settle()
    calls[3].cancel()  # cancelled before its batch went: never sent
    send.release.set()
    assert await first == 1000
    assert [await calls[i] for i in (1, 2, 4, 5, 6, 7)] == [10, 20, 40, 50, 60, 70]
    assert sorted(send.batches[1:]) == [[1, 5], [2, 4], [6], [7]]


async def test_a_failed_send_fails_each_call_of_its_batch_and_the_batcher_goes_on() -> None:
    failing = True

    async def send(items: Sequence[int]) -> list[int | BaseException]:
        await asyncio.sleep(0)
        if failing:
            raise ConnectionError("down")
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, lambda i: 0, limit=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    failing = False
    assert await batcher.submit(7) == 7


@pytest.fixture
async def store(redis: Redis[str]) -> Store:
    store = Store(redis, CommonSettings(session_ttl_seconds=60))
    await store.streams.ensure_group()
    return store


async def test_concurrent_begins_and_finishes_share_script_calls_each_answered_alone(
    store: Store, redis: Redis[str]
) -> None:
    entries: list[tuple[MessageEntry, StoredMessage]] = []
    while len(entries) < 6:  # six sessions of one partition: one slot on a cluster too
        session = await store.sessions.create_session("ada")
        if entries and keys.partition(session.token) != keys.partition(entries[0][0].token):
            continue
        user = await store.queue.enqueue(session.token, "hi", max_pending=10)
        entries.append((MessageEntry(token=session.token, seq=1, message_id=user.id), user))
    # One session's document is broken: its own calls fail, the others' do not.
    broken = entries[2][0].token
    await redis.execute_command("JSON.SET", keys.session_key(broken), "$.replied_seq", '"x"')
    before = await evalsha_calls(redis)
    begun = await asyncio.gather(
        *(store.replies.begin(e, f"1:{i}") for i, (e, _) in enumerate(entries)),
        return_exceptions=True,
    )
    assert isinstance(begun[2], ResponseError)
    assert [b.status for i, b in enumerate(begun) if i != 2] == [STARTED] * 5  # type: ignore[union-attr]
    finishes = []
    for i, (entry, user) in enumerate(entries):
        reply = StoredMessage(
            id=f"r{i}", role="assistant", content="ok", timestamp=utc_now(), reply_to=user.id
        )
        done = DoneEvent(message_id=user.id, reply=reply.public())
        finishes.append(store.replies.finish(entry, reply, done, f"1:{i}"))
    closed = await asyncio.gather(*finishes, return_exceptions=True)
    assert isinstance(closed[2], ResponseError)
    assert all(isinstance(c, str) for i, c in enumerate(closed) if i != 2)
    # 6 begins and 6 finishes in fewer calls than 12 (a lone first call each, then the
    # rest together).
    calls = await evalsha_calls(redis) - before
    assert calls < 12
    for i, (entry, _) in enumerate(entries):
        if i != 2:
            assert await store.sessions.replied_seq(entry.token) == 1


async def evalsha_calls(redis: Redis[str]) -> int:
    """``EVALSHA`` calls Redis has served (every node's, on a cluster)."""
    on = {"target_nodes": redis.get_primaries()} if hasattr(redis, "get_primaries") else {}
    stats = await redis.info("commandstats", **on)
    nodes = stats.values() if on else [stats]
    return sum(int(n.get("cmdstat_evalsha", {}).get("calls", 0)) for n in nodes)
