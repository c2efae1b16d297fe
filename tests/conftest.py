"""Fixtures shared by every test: a real Redis (with RedisJSON and RediSearch) per run."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from redis.asyncio import Redis

from protocol.connection import client_for_url, connect, disconnect
from server.app import create_app
from server.config import ServerSettings
from stack.cluster import UNLIMITED_ADMISSION
from stack.model import EmbeddedModel
from stack.redis import EmbeddedRedis, EmbeddedRedisCluster, free_port
from stack.standin import StandinModel
from worker.app import llm_config
from worker.config import WorkerSettings
from worker.consumer import Worker
from worker.llm import LLMClient


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


@dataclass
class Parley:
    """A running stack in this process: server (uvicorn), worker, stand-in model."""

    url: str
    ws_url: str
    standin: StandinModel
    server_settings: ServerSettings
    worker_settings: WorkerSettings
    worker: Worker
    redis: Redis[str]

    async def create_session(self, http: aiohttp.ClientSession, name: str = "ada") -> str:
        """A new session's token."""
        async with http.post(f"{self.url}/token", params={"name": name}) as response:
            assert response.status == 200, await response.text()
            token: str = (await response.json())["token"]
            return token


@asynccontextmanager
async def running_parley(
    redis_url: str, redis: Redis[str], **overrides: Any
) -> AsyncIterator[Parley]:
    """Start a stand-in model, a server and a worker; settings take ``overrides``."""
    standin = StandinModel(tokens=6)
    base_url = await standin.start()
    common: dict[str, Any] = {"redis_url": redis_url, **UNLIMITED_ADMISSION, **overrides}
    server_settings = ServerSettings(
        **{k: v for k, v in common.items() if k in ServerSettings.model_fields}
    )
    worker_settings = WorkerSettings(
        **{
            "llm_base_url": base_url,
            "llm_model": "standin",
            "claim_idle_ms": 1000,
            "read_block_ms": 100,
            "consumer_name": f"test-worker-{uuid.uuid4().hex[:6]}",
            **{k: v for k, v in common.items() if k in WorkerSettings.model_fields},
        }
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(server_settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_max_size=server_settings.ws_max_frame_bytes,
        )
    )
    server_task = asyncio.create_task(server.serve())
    llm = LLMClient(llm_config(worker_settings))
    worker_redis = connect(worker_settings, "worker")
    worker = Worker(worker_settings, worker_redis, llm)
    worker_task = asyncio.create_task(worker.run(drain_timeout_s=1))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110  (uvicorn offers no event)
                await asyncio.sleep(0.01)
        yield Parley(
            url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/chat",
            standin=standin,
            server_settings=server_settings,
            worker_settings=worker_settings,
            worker=worker,
            redis=redis,
        )
    finally:
        worker.stop()
        await asyncio.wait_for(worker_task, 10)
        server.should_exit = True
        await asyncio.wait_for(server_task, 10)
        await llm.aclose()
        await disconnect(worker_redis)
        await standin.stop()


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
