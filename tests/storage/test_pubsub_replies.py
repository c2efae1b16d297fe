"""The hub's listener takes the replies its connection has read already from the
parser's buffer: every message arrives, in order, with confirmations and errors among
them handled as ``parse_response`` handles them; against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from storage.connection import is_cluster
from storage.hub import Hub
from storage.pubsub_replies import NONE_BUFFERED, as_returned, buffered


async def test_the_pinned_redis_py_lets_buffered_replies_be_taken(redis: Redis[str]) -> None:
    """Else every message would go through parse_response again, at its cost: a
    redis-py upgrade that removes what :func:`buffered` reaches for fails here."""
    hub = Hub(redis, control_channel="parley:test:control")
    await hub.start()
    try:
        for link in hub._links.values():
            assert buffered(link.pubsub) is not None
    finally:
        await hub.aclose()


async def test_messages_read_in_one_go_all_arrive_in_order_with_confirmations_among_them(
    redis: Redis[str],
) -> None:
    hub = Hub(redis, queue_size=2000, control_channel="parley:test:control")
    await hub.start()
    channels = [f"parley:test:{{s{n}}}" for n in range(3)]
    try:
        async with (
            hub.subscribe(channels[0]) as first,
            hub.subscribe(channels[1]) as second,
        ):
            await asyncio.wait_for(asyncio.gather(first.ready.wait(), second.ready.wait()), 5)

            async def publish(start: int, stop: int) -> None:
                async with redis.pipeline(transaction=False) as pipe:
                    for n in range(start, stop):
                        for channel in channels:
                            pipe.spublish(channel, f"{channel} {n}")
                    await pipe.execute()

            # A subscription confirmed while a few hundred messages are being read.
            publishing = asyncio.create_task(publish(0, 300))
            async with hub.subscribe(channels[2]) as third:
                await asyncio.wait_for(third.ready.wait(), 5)
                await publishing
                await publish(300, 310)
                for sub, channel in ((first, channels[0]), (second, channels[1])):
                    got = [await asyncio.wait_for(sub.queue.get(), 5) for _ in range(310)]
                    assert got == [f"{channel} {n}" for n in range(310)]
                # The third gets what was published once it was confirmed, in order.
                late = [await asyncio.wait_for(third.queue.get(), 5)]
                while late[-1] != f"{channels[2]} 309":
                    late.append(await asyncio.wait_for(third.queue.get(), 5))
                numbers = [int(text.rsplit(" ", 1)[1]) for text in late]
                assert numbers == list(range(numbers[0], 310))
    finally:
        await hub.aclose()


async def test_an_error_among_buffered_replies_is_raised_as_parse_response_raises_it(
    redis: Redis[str],
) -> None:
    if is_cluster(redis):
        pytest.skip("one node's connection, as a single Redis has")
    pubsub = redis.pubsub()
    try:
        await pubsub.ssubscribe("parley:test:{errors}")  # type: ignore[attr-defined]
        assert (await pubsub.parse_response(block=True))[0] == "ssubscribe"
        for n in range(3):
            await redis.spublish("parley:test:{errors}", f"m{n}")  # type: ignore[attr-defined]
        assert pubsub.connection is not None
        await pubsub.connection.send_command("SSUBSCRIBE")  # too few arguments: an error
        await asyncio.sleep(0.2)  # every reply in the socket: read in one go
        first = await pubsub.parse_response(block=True)
        gets = buffered(pubsub)
        assert gets is not None
        rest = [gets(), gets()]
        assert [reply[2] for reply in (first, *rest)] == ["m0", "m1", "m2"]
        assert await as_returned(pubsub, rest[0]) == rest[0]
        error = gets()
        with pytest.raises(ResponseError):
            await as_returned(pubsub, error)
        assert gets() is NONE_BUFFERED
    finally:
        await pubsub.aclose()  # type: ignore[attr-defined]
