"""A message told ``queued`` that a Redis failover made vanish: its socket is told.

A failover can promote a replica that never got the enqueue script's writes: the
message leaves history, its stream entry goes with it and the session's ``seq`` rolls
back, so nothing in Redis says it existed. Here that loss is made by hand (no worker
runs meanwhile), and the hub's Pub/Sub connection is killed as a failover kills it.
A regenerate lost so leaves the turn as it stood before, answered.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from redis.asyncio import Redis

from storage import keys
from storage.base import json_get_command, json_reply
from storage.connection import is_cluster
from tests.support.events import Event, count, of_type, read_until
from tests.support.parley import PinnedWorkerSettings, running_parley, started_worker
from worker.consumer import Worker


def _lost(events: list[Event]) -> bool:
    return any(e["type"] == "error" and e["code"] == "message_lost" for e in events)


async def _lose(redis: Redis[str], token: str, model: str, message_id: str) -> None:
    """What a failover that lost the message's enqueue leaves: history without it, its
    ``seq`` rolled back, its stream entry gone."""
    session = keys.session_key(token)
    match = f'$.messages[?(@.id=="{message_id}")]'
    found: Any = json_reply(await redis.execute_command(*json_get_command(session, match)))
    (message,) = found
    await redis.execute_command("JSON.DEL", session, match)
    await redis.execute_command("JSON.SET", session, "$.seq", str(message["seq"] - 1))
    assert await redis.xdel(keys.message_stream_of(token, model), message["entry"]) == 1


async def _kill_hub_connections(redis: Redis[str]) -> None:
    """Close the server's Pub/Sub connections from the Redis side, as a failover does
    (on every node of a Redis Cluster: each holds the connections of its slots)."""
    nodes = (
        [Redis(host=n.host, port=n.port, decode_responses=True) for n in redis.get_nodes()]  # type: ignore[attr-defined]
        if is_cluster(redis)
        else [redis]
    )
    killed = 0
    for node in nodes:
        for client in await node.client_list(_type="pubsub"):
            if client.get("name", "").startswith("parley-server-"):
                await node.client_kill_filter(_id=client["id"])
                killed += 1
        if node is not redis:
            await node.aclose()  # type: ignore[attr-defined]
    assert killed, "no hub connection to close"


async def test_a_message_gone_from_history_is_closed_with_message_lost_on_resync(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        # No worker takes the message before it is lost (its model stays served).
        parley.worker.stop()
        await asyncio.wait_for(parley.worker.stopped.wait(), 10)
        model = parley.server_settings.default_model
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("vanishes")
            (queued,) = of_type(await read_until(ws, count("queued", 1)), "queued")
            await _lose(redis, token, model, queued["message_id"])

            await _kill_hub_connections(redis)
            events = await read_until(ws, _lost, timeout_s=10)
            (lost,) = [e for e in events if e["type"] == "error" and e["message_id"]]
            assert (lost["message_id"], lost["code"]) == (queued["message_id"], "message_lost")

            # The session goes on: a worker answers the next message.
            settings = PinnedWorkerSettings(
                **{
                    **parley.worker_settings.model_dump(),
                    "consumer_name": f"test-worker-{uuid.uuid4().hex[:6]}",
                }
            )

            async def ready(worker: Worker) -> bool:
                return await redis.zscore(keys.pool_key(model), worker.consumer) is not None

            async with started_worker(settings, ready):
                await ws.send_str("after")
                events = await read_until(ws, count("done", 1))
        (again,) = of_type(events, "queued")
        (done,) = of_type(events, "done")
        assert done["message_id"] == again["message_id"] != queued["message_id"]
        assert done["reply"]["content"].startswith("Reply to: after")
        assert not _lost(events)


async def test_a_full_socket_looks_at_history_before_it_refuses(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # One message may wait: the socket's bound is reached by the first.
    async with running_parley(redis_url, redis, max_pending_messages=1) as parley:
        parley.worker.stop()
        await asyncio.wait_for(parley.worker.stopped.wait(), 10)
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("vanishes")
            (queued,) = of_type(await read_until(ws, count("queued", 1)), "queued")
            await _lose(redis, token, parley.server_settings.default_model, queued["message_id"])
            await ws.send_str("next")
            events = await read_until(ws, count("queued", 1))
        (lost,) = of_type(events, "error")
        assert (lost["message_id"], lost["code"]) == (queued["message_id"], "message_lost")
        assert of_type(events, "queued")[0]["message"]["content"] == "next"


async def test_a_regenerate_lost_is_closed_with_message_lost(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        session = keys.session_key(token)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("one")
            (done,) = of_type(await read_until(ws, count("done", 1)), "done")
            message_id = done["message_id"]
            entry = f'$.messages[?(@.id=="{message_id}")].entry'
            (before,) = json_reply(await redis.execute_command(*json_get_command(session, entry)))
            parley.worker.stop()
            await asyncio.wait_for(parley.worker.stopped.wait(), 10)
            await ws.send_json({"type": "regenerate"})
            await read_until(ws, count("revised", 1))
            # The failover's earlier state: the turn answered, under its first entry.
            (after,) = json_reply(await redis.execute_command(*json_get_command(session, entry)))
            await redis.execute_command("JSON.SET", session, entry, f'"{before}"')
            await redis.execute_command("JSON.SET", session, "$.replied_seq", "1")
            model = parley.server_settings.default_model
            assert await redis.xdel(keys.message_stream_of(token, model), after) == 1

            await _kill_hub_connections(redis)
            events = await read_until(ws, _lost, timeout_s=10)
        (lost,) = [e for e in events if e["type"] == "error" and e["message_id"]]
        assert lost["message_id"] == message_id
