"""Title and summary jobs: they stay in the pool of the session's model, are charged to
its quotas, and no job, however it fails, stops a worker's jobs; through a real server,
workers, Redis and stand-in models."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from runtime.config import CommonSettings
from storage import keys
from storage.admission import CLIENT_TOKENS, SESSION_TOKENS
from storage.models import Session
from storage.store import Store
from testkit.standin import StandinModel, reply_tokens
from tests.support.events import count, of_type, read_until
from tests.support.parley import Parley, running_parley, started_worker
from tests.support.quota import client_used, session_used
from worker import jobs as jobs_module
from worker import summary, titles
from worker.config import WorkerSettings
from worker.consumer import Worker
from worker.model.tokens import estimate_tokens

#: Two pools: the cloud's (the catalog's default, on the old key names) and an
#: on-premises one, each with its own workers and model API.
CATALOG = [
    ModelOffer(id=keys.DEFAULT_MODEL_ID, label="Cloud"),
    ModelOffer(id="onprem", api_model="llama-onprem"),
]
#: Titles and summaries on; a small window, so the third turn calls for a summary.
JOBS: dict[str, Any] = {
    "conversation_titles": True,
    "memory_summary": True,
    "memory_max_messages": 4,
    "memory_summary_trigger_tokens": 10_000,
    "memory_summary_max_tokens": 400,
}
JOB_INSTRUCTIONS = (titles.INSTRUCTION, summary.INSTRUCTION)


@asynccontextmanager
async def pool_worker(
    parley: Parley, model: str, standin: StandinModel, **overrides: Any
) -> AsyncIterator[Worker]:
    """One more worker, serving ``model`` through ``standin``'s API."""
    settings = WorkerSettings(
        **{
            **parley.worker_settings.model_dump(),
            "llm_base_url": standin.base_url,
            "worker_models": model,
            "consumer_name": f"test-{model}-{uuid.uuid4().hex[:6]}",
            **overrides,
        }
    )

    async def ready(worker: Worker) -> bool:
        return await parley.redis.zscore(keys.pool_key(model), worker.consumer) is not None

    async with started_worker(settings, ready) as worker:
        yield worker


async def new_session(parley: Parley, http: aiohttp.ClientSession, model: str = "") -> str:
    body = {"model": model} if model else None
    async with http.post(f"{parley.url}/token", params={"name": "ada"}, json=body) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["token"]
        return token


async def chat(parley: Parley, http: aiohttp.ClientSession, token: str, *texts: str) -> None:
    """Send each text once the previous one is answered."""
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for text in texts:
            await ws.send_str(text)
            (done,) = of_type(await read_until(ws, count("done", 1)), "done")
            assert done["reply"]["content"].startswith(f"Reply to: {text}")


async def session_until(
    parley: Parley, token: str, ready: Callable[[Session], bool], timeout_s: float = 20
) -> Session:
    """Session ``token`` once ``ready`` holds for it."""
    async with asyncio.timeout(timeout_s):
        while True:
            session = await parley.worker.store.sessions.get_session(token, touch=False)
            if ready(session):
                return session
            await asyncio.sleep(0.05)


async def jobs_done(redis: Redis[str], *streams: str) -> None:
    """Return once every job of ``streams`` has been taken and finished."""
    async with asyncio.timeout(20):
        for stream in streams:
            group = keys.TITLE_GROUP if ":titles" in stream else keys.SUMMARY_GROUP
            while True:
                info = await redis.xinfo_groups(stream)
                found = next((g for g in info if g["name"] == group), None)
                if found and found["pending"] == 0 and found["lag"] == 0:
                    break
                await asyncio.sleep(0.05)


async def used(redis: Redis[str], limit: str, subject: str) -> int:
    """Model tokens charged to ``subject``'s quota ``limit`` so far (a session's: in its
    document)."""
    if limit == SESSION_TOKENS:
        return await session_used(redis, subject)
    return await client_used(redis, subject)


def job_requests(standin: StandinModel, marker: str = "") -> list[dict[str, Any]]:
    """The title and summary requests ``standin`` received, those naming ``marker``."""
    return [
        r
        for r in standin.requests
        if r["messages"][0]["content"] in JOB_INSTRUCTIONS
        and any(marker in m["content"] for m in r["messages"])
    ]


def reported_usage(standin: StandinModel, request: dict[str, Any]) -> int:
    """The tokens ``standin`` reported for ``request``: a word of the prompt a token,
    and a token a delta."""
    prompt = sum(len(m["content"].split()) for m in request["messages"])
    last = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
    return prompt + len(reply_tokens(last, standin.tokens))


def texts_of(standin: StandinModel) -> str:
    return "\n".join(m["content"] for r in standin.requests for m in r["messages"])


async def test_jobs_reach_only_their_own_pools_model_and_are_charged(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with (
        running_parley(redis_url, redis, models=CATALOG, worker_models="onprem", **JOBS) as parley,
        StandinModel(tokens=6) as cloud_api,
        pool_worker(parley, keys.DEFAULT_MODEL_ID, cloud_api),
    ):
        onprem_api = parley.standin
        busy = await new_session(parley, http, "onprem")
        onprem = await new_session(parley, http, "onprem")
        cloud = await new_session(parley, http)
        # A reply that hangs keeps the on-premises worker busy, while the cloud's worker
        # is idle and would take any job it could read.
        onprem_api.hang_next()
        async with http.ws_connect(parley.ws_url, params={"token": busy}) as held:
            await held.send_str("hold on please")
            async with asyncio.timeout(10):
                await onprem_api.wait_until(lambda: onprem_api.in_flight == 1)
            await chat(parley, http, onprem, "zebra one", "zebra two", "zebra three")
            await chat(parley, http, cloud, "walrus one", "walrus two", "walrus three")
            await session_until(parley, cloud, lambda s: bool(s.title and s.summary))
            await held.send_json({"type": "stop"})
            await read_until(held, count("done", 1))
        await session_until(parley, onprem, lambda s: bool(s.title and s.summary))

        # Not a word of the on-premises conversation reached the cloud's API, nor the
        # other way round; each pool's jobs asked its own model by its API name.
        assert "zebra" not in texts_of(cloud_api)
        assert "walrus" not in texts_of(onprem_api)
        for request in job_requests(onprem_api, "zebra"):
            assert request["model"] == "llama-onprem"
        for request in job_requests(cloud_api, "walrus"):
            assert request["model"] == "standin"  # the default's: the worker's own
        kinds = {r["messages"][0]["content"] for r in job_requests(onprem_api, "zebra")}
        assert kinds == set(JOB_INSTRUCTIONS)
        kinds = {r["messages"][0]["content"] for r in job_requests(cloud_api, "walrus")}
        assert kinds == set(JOB_INSTRUCTIONS)

        # Every request of the conversation, its replies' and its jobs', was charged
        # to the session's quota and its client's, as the model reported it.
        await jobs_done(
            redis,
            *(keys.title_stream(m) for m in ("onprem", keys.DEFAULT_MODEL_ID)),
            *(keys.summary_stream(m) for m in ("onprem", keys.DEFAULT_MODEL_ID)),
        )
        asked = [r for r in onprem_api.requests if "zebra" in json.dumps(r["messages"])]
        assert len(asked) == 3 + len(job_requests(onprem_api, "zebra"))
        cost = sum(reported_usage(onprem_api, r) for r in asked)
        assert await used(redis, SESSION_TOKENS, onprem) == cost
        client = await Store(redis, CommonSettings()).sessions.client_of(onprem)
        assert client is not None
        assert await used(redis, CLIENT_TOKENS, client) >= cost


async def test_a_job_whose_model_request_fails_is_charged_all_the_same(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, conversation_titles=True) as parley:
        standin = parley.standin
        token = await parley.create_session(http)
        standin.ttft_ms = 300  # the reply is slow: its title request comes later
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("How do tides work?")
            async with asyncio.timeout(10):
                await standin.wait_until(lambda: len(standin.requests) == 1)
            standin.fail_next(400)  # the title's request is refused
            standin.ttft_ms = 0
            await read_until(ws, count("done", 1))
        async with asyncio.timeout(10):
            await standin.wait_until(lambda: len(standin.requests) == 2)
        await jobs_done(redis, keys.TITLE_STREAM)
        reply, title = standin.requests
        assert title["messages"][0]["content"] == titles.INSTRUCTION
        assert (await parley.worker.store.sessions.get_session(token, touch=False)).title == ""
        # The reply's reported usage, and the refused title's prompt, estimated.
        refused = sum(estimate_tokens(m["content"]) for m in title["messages"])
        expected = reported_usage(standin, reply) + refused
        assert await used(redis, SESSION_TOKENS, token) == expected


async def test_a_job_of_a_session_that_chose_another_model_moves_to_that_models_pool(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, conversation_titles=False
    ) as parley:
        token = await new_session(parley, http, "onprem")
        await chat(parley, http, token, "zebra one")
        asked = len(parley.standin.requests)
        worker = parley.worker

        def titler(model: str) -> titles.Titler:
            idle = asyncio.Event()
            return titles.Titler(
                parley.worker_settings, worker.store, worker.llm, model, "test", idle
            )

        # A job in the default model's stream (queued before the session chose
        # "onprem"): its readers ask no model, and queue it for the on-premises pool.
        await titler(keys.DEFAULT_MODEL_ID).handle(token)
        assert len(parley.standin.requests) == asked
        moved = await redis.xrange(keys.title_stream("onprem"))
        assert [fields for _, fields in moved] == [{"token": token}]
        await titler("onprem").handle(token)
        (request,) = parley.standin.requests[asked:]
        assert request["model"] == "llama-onprem"
        session = await worker.store.sessions.get_session(token, touch=False)
        assert session.title.startswith("Reply to: Message: zebra one")


def failures(kind: str) -> float:
    return REGISTRY.get_sample_value("parley_job_failures_total", {"kind": kind}) or 0.0


async def test_a_job_that_raises_is_retried_then_given_up_and_the_next_job_is_done(
    redis_url: str,
    redis: Redis[str],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=jobs_module.__name__)
    monkeypatch.setattr(jobs_module, "CLAIM_IDLE_MS", 0)  # a failed try is retaken at once
    async with running_parley(
        redis_url, redis, conversation_titles=True, job_max_attempts=3
    ) as parley:
        bad = await parley.create_session(http)
        await chat(parley, http, bad, "hello")
        await session_until(parley, bad, lambda s: bool(s.title))
        await jobs_done(redis, keys.TITLE_STREAM)
        # A corrupted session document: reading it raises a validation error, not a
        # Redis error, on every try.
        await redis.execute_command("JSON.SET", keys.session_key(bad), "$.messages", '"oops"')
        before = failures("titles")
        await redis.xadd(keys.TITLE_STREAM, {"token": bad})
        good = await parley.create_session(http)
        await chat(parley, http, good, "How do tides work?")
        # The reader went on: the next job was done.
        titled = await session_until(parley, good, lambda s: bool(s.title))
        assert titled.title.startswith("Reply to: Message: How do tides work?")
        await jobs_done(redis, keys.TITLE_STREAM)
    # The failing job was tried JOB_MAX_ATTEMPTS times, each logged with its traceback
    # and counted, then acked (nothing is left pending).
    assert failures("titles") - before == 3
    tries = [r for r in caplog.records if r.name == jobs_module.__name__ and r.exc_info]
    assert len(tries) == 3
    assert [r.args[2] for r in tries if isinstance(r.args, tuple)] == [1, 2, 3]
    assert all(bad not in r.getMessage() for r in caplog.records)
