"""An in-process Parley for the tests: server (uvicorn), worker and stand-in model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from redis.asyncio import Redis

from server.app import create_app
from server.config import ServerSettings
from storage import keys
from storage.connection import connect, disconnect
from testkit.jobs import of_kind
from testkit.overrides import Overrides, declare
from testkit.ports import free_port
from testkit.processes import STANDIN_MODEL
from testkit.standin import StandinModel
from worker.app import llm_config
from worker.config import WorkerSettings
from worker.consumer import Worker
from worker.model.llm import LLMClient

#: What every in-process stack changes from the product's defaults.
IN_PROCESS = declare(
    READ_BLOCK_MS=(100, "the worker sees its stop within 0.1 s, at the end of every test"),
    CLAIM_IDLE_MS=(1000, "a test's second worker takes over a message within 1 s, not 5"),
)


class _OnlyGiven(BaseSettings):
    """Settings from the arguments alone: no environment variable and no ``.env`` file
    of the machine running the tests can change an in-process stack."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class PinnedServerSettings(_OnlyGiven, ServerSettings):
    """:class:`ServerSettings` from its arguments and defaults only."""


class PinnedWorkerSettings(_OnlyGiven, WorkerSettings):
    """:class:`WorkerSettings` from its arguments and defaults only."""


def in_process_settings(
    redis_url: str, standin_url: str, overrides: Overrides = IN_PROCESS, **settings: Any
) -> tuple[ServerSettings, WorkerSettings]:
    """The settings of an in-process stack: every one at the product's default, but
    the wiring (this Redis, the stand-in at ``standin_url``, a unique consumer name),
    ``overrides`` and the settings a test names (``settings``, by field name, e.g.
    ``max_pending_messages=2``; they may name other wiring too)."""
    common: dict[str, Any] = {"redis_url": redis_url, **overrides.fields(), **settings}
    server = PinnedServerSettings(
        **{k: v for k, v in common.items() if k in ServerSettings.model_fields}
    )
    worker = PinnedWorkerSettings(
        **{
            "llm_base_url": standin_url,
            "llm_model": STANDIN_MODEL,
            "consumer_name": f"test-worker-{uuid.uuid4().hex[:6]}",
            **{k: v for k, v in common.items() if k in WorkerSettings.model_fields},
        }
    )
    return server, worker


#: A well-formed session or owner token that no test creates: fixed, not drawn at random,
#: because parametrized test ids name it and parallel test workers must collect the
#: same tests.
UNKNOWN_TOKEN = "3f2b9c1e-8d4a-4e6b-9c7d-2a1b0c9d8e7f"


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

    def prompts(self) -> list[dict[str, Any]]:
        """The requests the stand-in got for replies, in order (titles and summaries,
        asked between replies, left out)."""
        return of_kind(self.standin.requests, "reply")

    async def create_session(self, http: aiohttp.ClientSession, name: str = "ada") -> str:
        """A new session's token."""
        async with http.post(f"{self.url}/token", params={"name": name}) as response:
            assert response.status == 200, await response.text()
            token: str = (await response.json())["token"]
            return token


@asynccontextmanager
async def running_parley(
    redis_url: str, redis: Redis[str], **settings: Any
) -> AsyncIterator[Parley]:
    """Start a stand-in model, a server and a worker, every setting at the product's
    default but :data:`IN_PROCESS` and those the test names (``settings``)."""
    standin = StandinModel(tokens=6)
    base_url = await standin.start()
    try:
        server_settings, worker_settings = in_process_settings(redis_url, base_url, **settings)
    except BaseException:
        await standin.stop()
        raise
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


@asynccontextmanager
async def started_worker(
    settings: WorkerSettings, ready: Callable[[Worker], Awaitable[bool]]
) -> AsyncIterator[Worker]:
    """A worker of ``settings`` on clients of its own, yielded once ``ready(worker)``
    holds (checked every 10 ms, for 10 s at most); stopped cleanly on exit."""
    redis = connect(settings, "worker")
    llm = LLMClient(llm_config(settings))
    worker = Worker(settings, redis, llm)
    task = asyncio.create_task(worker.run(drain_timeout_s=1))
    try:
        async with asyncio.timeout(10):
            while not await ready(worker):  # noqa: ASYNC110  (Redis state: no event)
                await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await llm.aclose()
        await disconnect(redis)
