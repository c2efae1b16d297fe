"""Parley on a 3-node Redis Cluster: unchanged code, writes spread over the nodes.

(The in-process suites also run on a cluster with ``PARLEY_TEST_REDIS=cluster``, and
the chaos suite runs on one; this checks what is particular to the cluster.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from storage import keys
from storage.connection import client_for_url, disconnect, split_cluster_url
from testkit.redis_cluster import EmbeddedRedisCluster
from tests.support.events import count, of_type, read_until
from tests.support.parley import running_parley

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(data_dir=tmp_path_factory.mktemp("cluster")) as redis_cluster:
        yield redis_cluster  # type: ignore[misc]


async def test_sessions_and_queues_spread_over_the_nodes(
    cluster: EmbeddedRedisCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url
    assert split_cluster_url(url)[1], "the URL selects the cluster client"
    client = client_for_url(url, max_connections=8)
    await client.flushall()
    try:
        # 24 sessions and sockets at once, every one from 127.0.0.1.
        async with running_parley(
            url, client, rate_sessions_per_client=24, max_sockets_per_client=24
        ) as parley:

            async def chat() -> str:
                token = await parley.create_session(http)
                async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
                    for n in range(2):
                        await ws.send_str(f"message {n}")
                        events = await read_until(ws, count("done", 1))
                        assert not of_type(events, "error")
                return token

            tokens = await asyncio.gather(*(chat() for _ in range(24)))

        # Every node holds some sessions and queued messages: the partitions' hash
        # tags spread the keys, and so the writes, over the cluster.
        per_node: dict[int, dict[str, int]] = {}
        for port in cluster.ports:
            node: Redis[str] = Redis(port=port, decode_responses=True)
            try:
                sessions = [k async for k in node.scan_iter(match="parley:session:*", count=1000)]
                streams = [
                    k for k in await node.keys("parley:messages:{*}") if await node.xlen(k) > 0
                ]
                per_node[port] = {"sessions": len(sessions), "streams": len(streams)}
            finally:
                await node.aclose()
        assert sum(n["sessions"] for n in per_node.values()) == len(tokens)
        assert all(n["sessions"] > 0 and n["streams"] > 0 for n in per_node.values()), per_node
        # Each session's keys share its partition's slot with its message stream.
        for token in tokens:
            slots = {
                client.keyslot(k)  # type: ignore[attr-defined]
                for k in (
                    keys.session_key(token),
                    keys.events_key(token),
                    keys.message_stream_of(token),
                    keys.channel(token),
                )
            }
            assert len(slots) == 1
    finally:
        await disconnect(client)
