"""The groups' consumers against a real Redis: a stopping consumer hands its entries
over and leaves; idle consumers holding nothing are swept; none holding an entry is
ever deleted (XGROUP DELCONSUMER would drop its entries)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.consumers import HANDED_IDLE_MS, Released
from storage.store import Store
from tests.support.groups import consumers_of

STREAM = keys.message_stream("3")
GROUP = keys.CONSUMER_GROUP


async def a_group(redis: Redis[str], entries: int) -> tuple[Store, list[str]]:
    """A message stream with the workers' group and ``entries`` entries in it."""
    store = Store(redis, CommonSettings())
    await store.streams.ensure_group()
    ids = [await redis.xadd(STREAM, {"n": str(n)}) for n in range(entries)]
    return store, ids


async def test_a_stopping_consumer_hands_its_entries_over_and_leaves(redis: Redis[str]) -> None:
    store, ids = await a_group(redis, entries=3)
    await redis.xreadgroup(GROUP, "stopping", {STREAM: ">"}, count=2)
    await redis.xreadgroup(GROUP, "other", {STREAM: ">"}, count=1)

    assert await store.consumers.release(STREAM, GROUP, "stopping") == Released(
        handed=2, deleted=True
    )

    assert await consumers_of(redis, STREAM, GROUP) == {"other": 1, keys.HEIR_CONSUMER: 2}
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10, keys.HEIR_CONSUMER)
    assert [p["message_id"] for p in pending] == ids[:2]
    assert all(p["time_since_delivered"] >= HANDED_IDLE_MS for p in pending)
    assert all(p["times_delivered"] == 1 for p in pending)  # a handover is no delivery
    # A live worker's next takeover takes them at once, far below their idle time.
    claimed = await store.streams.claim(STREAM, "live", min_idle_ms=5000, start="0-0")
    assert [(e.entry_id, e.deliveries) for e in claimed.entries] == [(ids[0], 1), (ids[1], 1)]


async def test_a_consumer_holding_nothing_just_leaves(redis: Redis[str]) -> None:
    store, [entry_id] = await a_group(redis, entries=1)
    await redis.xreadgroup(GROUP, "stopping", {STREAM: ">"})
    await redis.xack(STREAM, GROUP, entry_id)  # type: ignore[no-untyped-call]
    assert await store.consumers.release(STREAM, GROUP, "stopping") == Released(
        handed=0, deleted=True
    )
    assert await consumers_of(redis, STREAM, GROUP) == {}
    # No group, or no stream: nothing to do, and no error.
    assert await store.consumers.release(keys.TITLE_STREAM, keys.TITLE_GROUP, "x") == (0, False)


async def test_the_heir_itself_is_never_deleted_while_it_holds_entries(
    redis: Redis[str],
) -> None:
    store, _ = await a_group(redis, entries=1)
    await redis.xreadgroup(GROUP, keys.HEIR_CONSUMER, {STREAM: ">"})
    assert await store.consumers.release(STREAM, GROUP, keys.HEIR_CONSUMER) == (0, False)
    assert await consumers_of(redis, STREAM, GROUP) == {keys.HEIR_CONSUMER: 1}


async def test_the_sweep_deletes_idle_consumers_holding_nothing_and_keeps_the_others(
    redis: Redis[str],
) -> None:
    store, _ = await a_group(redis, entries=1)
    await redis.xreadgroup(GROUP, "holding", {STREAM: ">"})  # the one entry: pending
    await redis.xreadgroup(GROUP, "idle", {STREAM: ">"})  # nothing left to read
    deleted: list[str] = []
    async with asyncio.timeout(10):
        while "idle" not in deleted:
            await redis.xreadgroup(GROUP, "live", {STREAM: ">"})  # a reader, never idle
            deleted += await store.consumers.sweep_consumers(STREAM, GROUP, idle_ms=200)
            await asyncio.sleep(0.05)
    assert deleted == ["idle"]
    # "holding" has been idle longer than "idle", but XGROUP DELCONSUMER would drop its
    # entry: it stays until the entry is taken over.
    assert await consumers_of(redis, STREAM, GROUP) == {"holding": 1, "live": 0}
    await store.streams.claim(STREAM, "live", min_idle_ms=0, start="0-0")
    assert await store.consumers.sweep_consumers(STREAM, GROUP, idle_ms=200) == ["holding"]
    assert await store.consumers.sweep_consumers(keys.TITLE_STREAM, keys.TITLE_GROUP, 200) == []
