"""``redis+sentinel://`` URLs, and the client they make (no Sentinel needed: nothing
connects until a command runs; ``tests/system/test_failover.py`` runs real Sentinels)."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool

from runtime.config import CommonSettings
from storage.connection import client_for_url, connect, disconnect
from storage.sentinel import (
    BoundedSentinelPool,
    SentinelAddress,
    SentinelURLError,
    is_sentinel_url,
    parse_sentinel_url,
)


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_credentials() -> None:
    url = "redis+sentinel://:p%40ss@s1:26380,s2,10.0.0.3:5000/mymaster/2?sentinel_password=sp"
    assert is_sentinel_url(url) and not is_sentinel_url("redis://s1:6379/0")
    assert parse_sentinel_url(url) == SentinelAddress(
        sentinels=(("s1", 26380), ("s2", 26379), ("10.0.0.3", 5000)),
        service="mymaster",
        db=2,
        password="p@ss",
        sentinel_password="sp",
    )
    plain = parse_sentinel_url("redis+sentinel://user:pw@s1/mymaster")
    assert (plain.db, plain.username, plain.password, plain.sentinel_password) == (
        0,
        "user",
        "pw",
        None,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:secret@/mymaster/0",  # no Sentinel
        "redis+sentinel://:secret@s1:port/mymaster/0",
        "redis+sentinel://:secret@s1:26379",  # no service
        "redis+sentinel://:secret@s1:26379/mymaster/zero",
        "redis+sentinel://:secret@s1:26379/mymaster/0/extra",
        "redis+sentinel://:secret@s1:26379/mymaster/0?sentinel_pasword=typo",
    ],
)
def test_a_sentinel_url_out_of_form_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(SentinelURLError) as refused:
        parse_sentinel_url(url)
    assert "secret" not in str(refused.value)


async def test_the_pool_of_the_primary_is_bounded_and_blocking() -> None:
    client = client_for_url("redis+sentinel://127.0.0.1:1/mymaster/0", max_connections=5)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BoundedSentinelPool)
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 5
        assert pool.timeout is None  # waits for a connection, however long
        assert pool.service_name == "mymaster"
    finally:
        await disconnect(client)


def test_waiting_for_replicas_is_refused_on_a_cluster() -> None:
    settings = CommonSettings(redis_url="redis://127.0.0.1:1/0?cluster=true", redis_wait_replicas=1)
    with pytest.raises(ValueError, match="REDIS_WAIT_REPLICAS"):
        connect(settings, "server")
