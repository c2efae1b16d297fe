"""The hub's Pub/Sub listener, supervised: a real ``python -m server`` whose listener
dies of an error that is not a lost link, and comes back.

The failure is real, not injected: a payload that is not UTF-8, published on a
session's channel, makes redis-py's decoding client raise ``UnicodeDecodeError`` in
the listener. Before supervision the listener died for good: the process's sockets
went silent and ``/readyz`` still answered 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from storage import keys
from storage.hub import RESYNC, Hub
from testkit.processes import Cluster
from testkit.standin import StandinModel
from tests.hostile.servers import new_session
from tests.support.events import count, of_type, read_until

pytestmark = pytest.mark.system


async def watch_readiness(http: aiohttp.ClientSession, url: str, seen: list[int]) -> None:
    """Append each ``/readyz`` status to ``seen``, polling until cancelled."""
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/readyz") as response:
                if not seen or seen[-1] != response.status:
                    seen.append(response.status)
        await asyncio.sleep(0.005)


async def test_listener_that_fails_is_restarted_and_sockets_get_events_again(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    async with (
        StandinModel(tokens=6) as model,
        Cluster(redis_url, model.base_url, tmp_path / "logs") as cluster,
        aiohttp.ClientSession() as http,
    ):
        await cluster.start(servers=1, workers=1)
        (server,) = cluster.servers
        token = await new_session(http, server)
        ws_url = f"{server.url.replace('http', 'ws')}/chat"
        async with http.ws_connect(ws_url, params={"token": token}) as ws:
            await ws.send_str("before")
            await read_until(ws, count("done", 1))

            readiness: list[int] = []
            watcher = asyncio.create_task(watch_readiness(http, server.url, readiness))
            try:
                async with asyncio.timeout(10):
                    while not readiness:  # noqa: ASYNC110  (first answer of the watcher)
                        await asyncio.sleep(0.005)
                # Kills the listener: redis-py cannot decode the payload.
                assert await cluster.redis.spublish(keys.channel(token), b"\xff\xfe") == 1
                # Its reply is published while the listener is down or restarting:
                # the RESYNC after the restart replays what the socket missed.
                await ws.send_str("during")
                during = await read_until(ws, count("done", 1))
                async with asyncio.timeout(10):
                    while readiness[-2:] != [503, 200]:  # noqa: ASYNC110  (polled above)
                        await asyncio.sleep(0.01)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            # Live events flow again.
            await ws.send_str("after")
            after = await read_until(ws, count("done", 1))

        log = server.log_path.read_text()
    print(f"\n/readyz statuses seen around the failure: {readiness}")
    assert readiness[0] == 200 and 503 in readiness and readiness[-1] == 200
    assert of_type(during, "done")[0]["reply"]["content"].startswith("Reply to: during")
    assert of_type(after, "done")[0]["reply"]["content"].startswith("Reply to: after")
    assert "listener failed; restarting it" in log and "UnicodeDecodeError" in log


async def test_every_subscriber_of_a_failed_listener_gets_a_resync(redis: Redis[str]) -> None:
    """The hub alone, on the test Redis: three subscribers of one link (one partition, so
    one node of a cluster too), a payload that kills the listener, then RESYNC for each
    and live messages again."""
    hub = Hub(redis, queue_size=16, control_channel=f"{keys.PREFIX}:test:{uuid.uuid4()}")
    await hub.start()
    channels = [keys.channel("a" + str(uuid.uuid4())[1:]) for _ in range(3)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(hub.subscribe(c)) for c in channels]
            async with asyncio.timeout(5):
                for sub in subs:
                    await sub.ready.wait()
            assert hub.healthy
            await redis.spublish(channels[0], b"\xff\xfe")  # type: ignore[attr-defined]
            async with asyncio.timeout(10):
                assert [await sub.queue.get() for sub in subs] == [RESYNC] * 3
            assert hub.healthy
            await redis.spublish(channels[1], "live again")  # type: ignore[attr-defined]
            async with asyncio.timeout(5):
                assert await subs[1].queue.get() == "live again"
    finally:
        await hub.aclose()
