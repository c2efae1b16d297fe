"""Fixtures shared by every test: a real Redis (with RedisJSON and RediSearch) per run.

Helpers live in :mod:`tests.support`; this module only declares fixtures."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from stack.model import EmbeddedModel
from stack.redis import EmbeddedRedis
from storage.connection import client_for_url
from testkit.ports import free_port
from testkit.redis_cluster import EmbeddedRedisCluster
from tests.support.identity import OIDC, Provider, SigningKey, ec_key, rsa_key
from tests.support.parley import IN_PROCESS, Parley, running_parley


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedRedis | EmbeddedRedisCluster]:
    """One embedded Redis for the whole run, on a free port, data in a temp folder.

    With ``PARLEY_TEST_REDIS=cluster`` in the environment, a 3-node Redis Cluster
    instead: every test that uses the fixtures then runs against the cluster.
    """
    data_dir: Path = tmp_path_factory.mktemp("redis")
    server: EmbeddedRedis | EmbeddedRedisCluster
    if os.environ.get("PARLEY_TEST_REDIS") == "cluster":
        server = EmbeddedRedisCluster(data_dir=data_dir)
    else:
        server = EmbeddedRedis(port=free_port(), data_dir=data_dir)
    with server:
        yield server


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModel]:
    """The real embedded model (xllamacpp + SmolLM2-135M-Instruct), started once per run."""
    with EmbeddedModel(
        port=free_port(),
        log_dir=tmp_path_factory.mktemp("model-logs"),
        parallel=2,
        ctx_size=2048,
    ) as model:
        yield model


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis | EmbeddedRedisCluster) -> str:
    """The URL of the test Redis."""
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis[str]]:
    """A client of the test Redis, flushed before each test so every test starts empty."""
    client = client_for_url(redis_url, max_connections=16)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def parley(redis_url: str, redis: Redis[str]) -> AsyncIterator[Parley]:
    """A running Parley with default settings and a 6-token stand-in model."""
    async with running_parley(redis_url, redis) as stack:
        yield stack


@pytest.fixture
async def parley_url(parley: Parley) -> str:
    """The base URL of a running Parley (server, worker, Redis, stand-in model)."""
    return parley.url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP and WebSocket client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def idp_keys() -> dict[str, SigningKey]:
    """An identity provider's keys, made once per run (an RSA key takes a while): ``rsa``
    (RS256) and ``ec`` (ES256), published, and ``next``, which it has not published yet."""
    return {"rsa": rsa_key("rsa-1"), "ec": ec_key("ec-1"), "next": rsa_key("rsa-2")}


@pytest.fixture
async def idp(idp_keys: dict[str, SigningKey]) -> AsyncIterator[Provider]:
    """A stand-in identity provider (a real HTTP server), publishing ``rsa`` and ``ec``."""
    provider = Provider(published=[idp_keys["rsa"], idp_keys["ec"]])
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
async def oidc_parley(redis_url: str, redis: Redis[str], idp: Provider) -> AsyncIterator[Parley]:
    """A running Parley whose identity provider is ``idp`` (its keys found by discovery)."""
    # OIDC_ISSUER is wiring: where the provider stand-in runs.
    async with running_parley(
        redis_url, redis, overrides=IN_PROCESS | OIDC, oidc_issuer=idp.issuer
    ) as parley:
        yield parley
