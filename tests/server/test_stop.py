"""The stop command: the reply being generated ends at once, recorded once as stopped."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage.store import Store
from tests.support.events import count, of_type, read_until
from tests.support.parley import Parley, running_parley


async def history(parley: Parley, http: aiohttp.ClientSession, token: str) -> list[dict[str, Any]]:
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        messages: list[dict[str, Any]] = (await r.json())["messages"]
        return messages


async def test_stop_mid_reply_ends_it_within_500_ms_and_records_it_once(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        parley.standin.tokens = 200
        parley.standin.delay_ms = 20  # a 4 s reply
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me a long story")
            before = await read_until(ws, count("token", 3))
            sent = time.perf_counter()
            await ws.send_json({"type": "stop"})
            events = await read_until(ws, count("done", 1))
            took_s = time.perf_counter() - sent
            (done,) = of_type(events, "done")
            assert took_s < 0.5, f"stopped after {took_s * 1000:.0f} ms"
            assert done["reply"]["stopped"] is True
            # The model request was aborted, not run to its end.
            await parley.standin.wait_until(lambda: parley.standin.cancelled == 1)
            assert parley.standin.completed == 0
            partial = done["reply"]["content"]
            # The partial reply is what was streamed, no more.
            assert partial == "".join(e["content"] for e in of_type(before + events, "token"))
            assert partial.startswith("Reply to: tell") and len(partial.split()) < 200

            # The next message works normally and its prompt holds the partial reply.
            parley.standin.tokens = 12
            parley.standin.delay_ms = 0
            await ws.send_str("shorter please")
            events = await read_until(ws, count("done", 1))
            (done2,) = of_type(events, "done")
            assert done2["reply"]["stopped"] is False
        assert parley.prompts()[-1]["messages"][-2] == {
            "role": "assistant",
            "content": partial,
        }
        messages = await history(parley, http, token)
        assert [(m["role"], m["stopped"]) for m in messages] == [
            ("user", False),
            ("assistant", True),
            ("user", False),
            ("assistant", False),
        ]
        assert messages[1]["content"] == partial


async def test_stop_reaches_the_reply_through_another_socket_and_server(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # Two servers, one worker: the stop is sent to a server that does not hold the
    # socket the message came from.
    async with (
        running_parley(redis_url, redis) as first,
        running_parley(redis_url, redis, consumer_name="second-worker") as second,
    ):
        for model in (first.standin, second.standin):
            model.tokens, model.delay_ms = 200, 20
        token = await first.create_session(http)
        async with (
            http.ws_connect(first.ws_url, params={"token": token}) as sender,
            http.ws_connect(second.ws_url, params={"token": token}) as stopper,
        ):
            await sender.send_str("go on and on")
            await read_until(stopper, count("token", 2))
            await stopper.send_str(json.dumps({"type": "stop"}))
            seen_by_sender = await read_until(sender, count("done", 1))
            seen_by_stopper = await read_until(stopper, count("done", 1))
        assert of_type(seen_by_sender, "done") == of_type(seen_by_stopper, "done")
        assert of_type(seen_by_sender, "done")[0]["reply"]["stopped"] is True


async def test_stop_with_nothing_to_stop_does_nothing(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_json({"type": "stop"})
        await ws.send_str("hello")
        events = await read_until(ws, count("done", 1))
    assert [e["type"] for e in events if e["type"] not in ("token",)] == ["queued", "done"]
    assert of_type(events, "done")[0]["reply"]["stopped"] is False


async def test_stop_before_the_reply_starts_sends_no_model_request(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    store = Store(redis, CommonSettings(redis_url=redis_url))
    session = await store.sessions.create_session("ada")
    await store.streams.ensure_group()
    message = await store.queue.enqueue(session.token, "never mind", max_pending=5)
    assert await store.sessions.stop(session.token) == message.seq
    async with running_parley(redis_url, redis) as parley:
        async with http.ws_connect(parley.ws_url, params={"token": session.token}) as ws:
            await ws.send_json({"type": "resume", "after": "0-0"})
            events = await read_until(ws, count("done", 1))
        done = of_type(events, "done")[0]
        assert done["reply"] == done["reply"] | {"content": "", "stopped": True}
        # No reply was asked for (a title may be: the stopped reply is recorded).
        assert parley.prompts() == []
        async with asyncio.timeout(5):
            while await store.streams.pending_count():  # noqa: ASYNC110  (the ack follows the done)
                await asyncio.sleep(0.05)
