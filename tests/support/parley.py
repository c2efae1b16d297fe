"""An in-process Parley for the tests: server (uvicorn), worker and stand-in model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn
from redis.asyncio import Redis

from server.app import create_app
from server.config import ServerSettings
from storage import keys
from storage.connection import connect, disconnect
from testkit.ports import free_port
from testkit.processes import NO_EXTRA_MODEL_CALLS, UNLIMITED_ADMISSION
from testkit.standin import StandinModel
from worker.app import llm_config
from worker.config import WorkerSettings
from worker.consumer import Worker
from worker.llm import LLMClient


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
    common: dict[str, Any] = {
        "redis_url": redis_url,
        **UNLIMITED_ADMISSION,
        **NO_EXTRA_MODEL_CALLS,
        **overrides,
    }
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
            # The worker in its pools, or the server would refuse its models' messages.
            pool = keys.pool_key(worker.models[0])
            while await redis.zscore(pool, worker.consumer) is None:  # noqa: ASYNC110
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
