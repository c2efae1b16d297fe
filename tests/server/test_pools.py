"""A model that no live worker serves: its messages are refused, or closed within a
bounded time, with model_unavailable; its backlog is exported per model."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from server.app import create_app, lifespan
from server.config import ServerSettings
from storage import keys
from tests.support.events import count, of_type, read_until
from tests.support.groups import consumers_of
from tests.support.parley import Parley, running_parley

CATALOG = [ModelOffer(id="small"), ModelOffer(id="large")]
WAIT_S = 1.0


async def session_of(parley: Parley, http: aiohttp.ClientSession, model: str) -> str:
    url = f"{parley.url}/token"
    async with http.post(url, params={"name": "ada"}, json={"model": model}) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["token"]
        return token


async def history(parley: Parley, http: aiohttp.ClientSession, token: str) -> list[Any]:
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        messages: list[Any] = (await r.json())["messages"]
        return messages


async def lag_of(parley: Parley, http: aiohttp.ClientSession, model: str) -> float | None:
    async with http.get(f"{parley.url}/metrics") as r:
        text = await r.text()
    found = re.search(rf'^parley_model_queue_lag{{model="{model}"}} (\S+)$', text, re.M)
    return float(found[1]) if found else None


async def test_a_model_no_worker_serves_is_refused_at_once_and_nothing_is_stored(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, worker_models="small", model_wait_s=WAIT_S
    ) as parley:
        large = await session_of(parley, http, "large")
        small = await session_of(parley, http, "small")
        async with http.ws_connect(parley.ws_url, params={"token": large}) as ws:
            await ws.send_str("hello")
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
            await ws.send_json({"type": "regenerate"})
            (again,) = of_type(await read_until(ws, count("error", 1)), "error")
        assert (error["code"], error["message_id"]) == ("model_unavailable", None)
        assert "'large'" in error["detail"] and "choose another model" in error["detail"]
        assert again["code"] == "model_unavailable"  # a regenerate would ask it too
        assert await history(parley, http, large) == []
        async with http.get(f"{parley.url}/models") as r:
            listed = {m["id"]: m["available"] for m in (await r.json())["models"]}
        assert listed == {"small": True, "large": False}
        # The other model's pool answers as ever; the session may switch to it.
        async with http.ws_connect(parley.ws_url, params={"token": small}) as ws:
            await ws.send_str("hello")
            (done,) = of_type(await read_until(ws, count("done", 1)), "done")
        assert done["reply"]["model"] == "small"
        async with http.patch(
            f"{parley.url}/session", params={"token": large}, json={"model": "small"}
        ) as r:
            assert r.status == 204
        async with http.ws_connect(parley.ws_url, params={"token": large}) as ws:
            await ws.send_str("hello again")
            (done,) = of_type(await read_until(ws, count("done", 1)), "done")
        assert done["reply"]["model"] == "small"


async def test_messages_left_waiting_by_a_pool_that_died_are_closed_within_the_bound(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, worker_models="small", model_wait_s=WAIT_S
    ) as parley:
        # A worker of "large" says it is alive, then dies before reading anything.
        await redis.zadd(keys.pool_key("large"), {"gone-worker": time.time() * 1000})
        token = await session_of(parley, http, "large")
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("anyone there?")
            await ws.send_str("and this one?")
            queued = await read_until(ws, count("queued", 2))
            assert await lag_of(parley, http, "large") in (None, 0.0, 1.0, 2.0)
            started = time.perf_counter()
            events = await read_until(ws, count("error", 2), timeout_s=10)
            took_s = time.perf_counter() - started
        errors = of_type(events, "error")
        assert [e["code"] for e in errors] == ["model_unavailable"] * 2
        assert [e["message_id"] for e in errors] == [q["message_id"] for q in queued]
        # MODEL_WAIT_S after the worker was last seen, plus a watch interval or so.
        assert took_s < WAIT_S + 3, f"closed after {took_s:.1f} s"
        # In history without a reply; nothing left pending or waiting in the streams.
        assert [m["role"] for m in await history(parley, http, token)] == ["user", "user"]
        assert await parley.worker.store.streams.pending_count(["large"]) == 0
        await asyncio.sleep(0.6)  # one more watch: the gauge follows
        assert await lag_of(parley, http, "large") == 0.0


async def test_the_backlog_of_each_model_is_exported(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, worker_models="small", model_wait_s=30
    ) as parley:
        await redis.zadd(keys.pool_key("large"), {"slow-worker": time.time() * 1000})
        token = await session_of(parley, http, "large")
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            for text in ("one", "two", "three"):
                await ws.send_str(text)
            await read_until(ws, count("queued", 3))
        async with asyncio.timeout(10):
            while await lag_of(parley, http, "large") != 3.0:  # noqa: ASYNC110  (a scrape)
                await asyncio.sleep(0.1)
        assert await lag_of(parley, http, "small") == 0.0
        async with http.get(f"{parley.url}/metrics") as r:
            assert 'parley_model_workers{model="small"} 1.0' in await r.text()


async def test_a_model_changes_only_once_no_message_waits(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, models=CATALOG) as parley:
        parley.standin.tokens, parley.standin.delay_ms = 60, 20
        token = await session_of(parley, http, "small")
        url = f"{parley.url}/session"
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("a long one")
            await read_until(ws, count("token", 1))
            async with http.patch(url, params={"token": token}, json={"model": "large"}) as r:
                assert r.status == 409
                assert "once they are answered" in await r.text()
            # The model it has already: no change, so no conflict.
            async with http.patch(url, params={"token": token}, json={"model": "small"}) as r:
                assert r.status == 204, await r.text()
            await read_until(ws, count("done", 1), timeout_s=30)
        async with http.patch(url, params={"token": token}, json={"model": "large"}) as r:
            assert r.status == 204
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            assert (await r.json())["model"] == "large"


async def test_a_worker_that_stops_leaves_its_model_served_for_the_grace_period(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # A deploy restarts the only worker: its model must not be refused meanwhile.
    async with running_parley(redis_url, redis, models=CATALOG, model_wait_s=30) as parley:
        parley.worker.stop()
        await asyncio.wait_for(parley.worker.stopped.wait(), 10)
        async with http.get(f"{parley.url}/models") as r:
            assert all(m["available"] for m in (await r.json())["models"])
        token = await session_of(parley, http, "small")
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("queued for the next worker")
            (queued,) = of_type(await read_until(ws, count("queued", 1)), "queued")
        assert queued["message"]["content"] == "queued for the next worker"


async def test_servers_restarted_close_unserved_messages_under_one_consumer_name(
    redis: Redis[str], redis_url: str
) -> None:
    # No worker at all: each server in turn closes the message queued meanwhile, reading
    # the 16 streams of both models; a restart adds no consumer to their groups.
    settings = ServerSettings(redis_url=redis_url, models=CATALOG, model_wait_s=WAIT_S)
    for n in range(5):
        async with lifespan(settings)(create_app(settings)) as state:
            store = state["store"]
            session = await store.sessions.create_session("ada", model="large")
            await store.queue.enqueue(session.token, f"message {n}", max_pending=10, model="large")
            assert await state["pools"].watch_once() == 1
    for model in ("small", "large"):
        for stream in keys.model_streams(model):
            consumers = await consumers_of(redis, stream, keys.CONSUMER_GROUP)
            assert consumers == {keys.SERVER_CONSUMER: 0}, (stream, consumers)
