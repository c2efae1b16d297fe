"""A worker's consumers in the groups it reads: gone when it stops, handed its unfinished
entries to the next worker at once, and the consumers of crashed workers and of
servers swept, so a group's consumers stay bounded however often workers restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from redis.asyncio import Redis

from storage import keys
from storage.keys import SUMMARY_GROUP, SUMMARY_STREAM
from storage.store import Store
from tests.support.events import count, of_type, read_until
from tests.support.groups import consumers_of
from tests.support.parley import running_parley, started_worker
from worker.config import WorkerSettings
from worker.consumer import Worker

JOB_GROUPS = [(keys.TITLE_STREAM, keys.TITLE_GROUP), (SUMMARY_STREAM, SUMMARY_GROUP)]
#: Every group a worker of the default model with titles and summaries on reads.
GROUPS = [(s, keys.CONSUMER_GROUP) for s in keys.MESSAGE_STREAMS] + JOB_GROUPS


async def consumers_by_group(redis: Redis[str]) -> dict[tuple[str, str], dict[str, int]]:
    return {g: await consumers_of(redis, *g) for g in GROUPS}


async def reads_every_group(redis: Redis[str], consumer: str) -> bool:
    return all(consumer in c for c in (await consumers_by_group(redis)).values())


async def others_left(redis: Redis[str], consumer: str) -> bool:
    """Whether a consumer but ``consumer`` is left in any group."""
    return any(set(c) - {consumer} for c in (await consumers_by_group(redis)).values())


@asynccontextmanager
async def running_worker(redis_url: str, **overrides: Any) -> AsyncIterator[Worker]:
    """A worker of its own (no model is called: nothing is queued), reading every group
    of :data:`GROUPS` once it is yielded; stopped cleanly on exit."""
    settings = WorkerSettings(
        redis_url=redis_url,
        llm_base_url="http://127.0.0.1:9/v1",
        claim_idle_ms=1000,
        read_block_ms=100,
        conversation_titles=True,
        memory_summary=True,
        **overrides,
    )

    async def ready(worker: Worker) -> bool:
        return await reads_every_group(worker.redis, worker.consumer)

    async with started_worker(settings, ready) as worker:
        yield worker


async def test_workers_restarted_twenty_times_leave_no_consumer_behind(
    redis_url: str, redis: Redis[str]
) -> None:
    running: list[int] = []  # the most consumers in one group, each worker running
    after: list[int] = []  # and once it has stopped
    for n in range(20):
        # Each restart is a new process: a new consumer name (<host>-<pid>).
        async with running_worker(redis_url, consumer_name=f"restart-{n}"):
            running.append(max(map(len, (await consumers_by_group(redis)).values())))
        after.append(max(map(len, (await consumers_by_group(redis)).values())))
    assert (max(running), max(after)) == (1, 0), (running, after)


async def test_a_worker_stopped_mid_reply_hands_its_entry_to_the_next_worker_at_once(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, claim_idle_ms=1000) as parley:
        parley.standin.tokens, parley.standin.delay_ms = 60, 50  # 3 s, past the drain (1 s)
        token = await parley.create_session(http)
        stream = keys.message_stream_of(token)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("a long one")
            await read_until(ws, count("token", 1))
            first = parley.worker
            first.stop()
            await asyncio.wait_for(first.stopped.wait(), 10)
            # The entry is the heir's, idle past any takeover threshold: the next
            # takeover of a live worker takes it, without waiting CLAIM_IDLE_MS more.
            [held] = await redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
            assert held["consumer"] == keys.HEIR_CONSUMER
            assert held["time_since_delivered"] >= parley.worker_settings.claim_idle_ms
            assert not any(first.consumer in c for c in (await consumers_by_group(redis)).values())
            second = Worker(
                parley.worker_settings.model_copy(update={"consumer_name": "second"}),
                first.redis,
                first.llm,
            )
            task = asyncio.create_task(second.run(drain_timeout_s=1))
            events = await read_until(ws, count("done", 1), timeout_s=15)
            second.stop()
            await asyncio.wait_for(task, 10)
        assert len(of_type(events, "done")) == 1
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            assert [m["role"] for m in (await r.json())["messages"]] == ["user", "assistant"]


async def test_consumers_of_crashed_workers_and_of_servers_are_swept(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # Consumers that no clean stop removed: a crashed worker holding a message, crashed
    # workers holding nothing (in a partition and in a job group), and a server's.
    store = Store(redis, WorkerSettings())
    await store.streams.ensure_group()
    session = await store.sessions.create_session("ada")
    message = await store.queue.enqueue(session.token, "who took this?", max_pending=10)
    stream = keys.message_stream_of(session.token)
    await redis.xreadgroup(keys.CONSUMER_GROUP, "crashed-holding", {stream: ">"})
    await redis.xreadgroup(keys.CONSUMER_GROUP, "crashed-idle", {keys.MESSAGE_STREAMS[5]: ">"})
    await redis.xgroup_create(keys.TITLE_STREAM, keys.TITLE_GROUP, id="0", mkstream=True)
    await redis.xreadgroup(keys.TITLE_GROUP, "crashed-idle", {keys.TITLE_STREAM: ">"})
    await redis.xautoclaim(stream, keys.CONSUMER_GROUP, keys.SERVER_CONSUMER, 60_000)
    sweep = {"consumer_idle_delete_ms": 500, "conversation_titles": True}
    async with (
        running_parley(redis_url, redis, **sweep) as parley,
        http.ws_connect(parley.ws_url, params={"token": session.token, "after": "0-0"}) as ws,
    ):
        # The crashed worker's message is taken over and answered, not dropped with it.
        (done,) = of_type(await read_until(ws, count("done", 1)), "done")
        assert done["message_id"] == message.id
        async with asyncio.timeout(15):
            while await others_left(redis, parley.worker.consumer):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
