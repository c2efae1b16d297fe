"""Fixtures shared by every test: a real Redis (with RedisJSON and RediSearch) per run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stack.redis import EmbeddedRedis, free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One embedded Redis for the whole run, on a free port, data in a temp folder."""
    data_dir: Path = tmp_path_factory.mktemp("redis")
    with EmbeddedRedis(port=free_port(), data_dir=data_dir) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The URL of the test Redis."""
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis[str]]:
    """A client of the test Redis, flushed before each test so every test starts empty."""
    client = Redis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()
