"""``REDIS_WAIT_REPLICAS``: the scripts that tell a client "stored" wait for replicas.

Against the test Redis, which has no replica: each wait ends at its timeout, is logged,
and the write stands. With a replica, ``tests/system/test_failover.py``.
"""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage.connection import is_cluster
from storage.replication import WaitReplicas
from storage.store import Store


def test_no_replica_is_waited_for_by_default() -> None:
    assert WaitReplicas.of(CommonSettings()) is None
    assert WaitReplicas.of(
        CommonSettings(redis_wait_replicas=2, redis_wait_timeout_ms=300)
    ) == WaitReplicas(2, 300)


async def test_a_write_no_replica_acknowledges_stands_and_is_logged(
    redis: Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    if is_cluster(redis):
        pytest.skip("REDIS_WAIT_REPLICAS is refused on a cluster")
    settings = CommonSettings(redis_wait_replicas=1, redis_wait_timeout_ms=20)
    store = Store(redis, settings)
    session = await store.sessions.create_session("ada")
    with caplog.at_level(logging.WARNING, logger="storage.replication"):
        first = await store.queue.enqueue(session.token, "one", max_pending=10)
        # A Redis that forgot its scripts (a new primary): loaded again, and waited for.
        await redis.script_flush()
        second = await store.queue.enqueue(session.token, "two", max_pending=10)
    assert (first.seq, second.seq) == (1, 2)
    waits = [r.getMessage() for r in caplog.records]
    assert waits == ["enqueue.lua: 0 of 1 replicas acknowledged within 20 ms; going on"] * 2
    stored = await store.sessions.get_session(session.token, touch=False)
    assert [m.content for m in stored.messages] == ["one", "two"]
