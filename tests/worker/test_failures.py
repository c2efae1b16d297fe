"""The worker's answers to what should never happen: a message's stream entry gone, a
message whose tries keep failing (after or before an attempt begins), a reply too long
or too slow. Real Redis, in-process server and worker, the stand-in model."""

from __future__ import annotations

from typing import Any

import aiohttp
from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.models import StoredMessage
from storage.store import Store
from tests.support.events import count, of_type, read_until
from tests.support.parley import running_parley


async def queued(redis: Redis[str], *contents: str) -> tuple[str, list[StoredMessage]]:
    """A new session with ``contents`` queued (no worker running yet)."""
    store = Store(redis, CommonSettings())
    await store.streams.ensure_group()
    session = await store.sessions.create_session("ada")
    messages = [await store.queue.enqueue(session.token, c, max_pending=10) for c in contents]
    return session.token, messages


def closing(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(type, message id, error code) of each closing event, in order."""
    return [
        (e["type"], e["message_id"], e.get("code"))
        for e in events
        if e["type"] == "done" or (e["type"] == "error" and e.get("message_id"))
    ]


async def test_an_entry_deleted_from_the_stream_is_closed_and_the_session_goes_on(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, (one, two) = await queued(redis, "one", "two")
    assert one.entry is not None
    await redis.xdel(keys.message_stream_of(token), one.entry)  # an operator's XDEL
    async with (
        running_parley(redis_url, redis) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        events = await read_until(ws, count("done", 1))
    assert closing(events) == [("error", one.id, "message_lost"), ("done", two.id, None)]
    assert len(parley.prompts()) == 1


async def test_a_pending_entry_deleted_while_its_consumer_is_dead_is_closed(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, (one, two) = await queued(redis, "one", "two")
    stream = keys.message_stream_of(token)
    await redis.xreadgroup(keys.CONSUMER_GROUP, "dead-worker", {stream: ">"})
    assert one.entry is not None
    await redis.xdel(stream, one.entry)
    async with (
        running_parley(redis_url, redis, claim_idle_ms=300) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        events = await read_until(ws, count("done", 1))
    assert closing(events) == [("error", one.id, "message_lost"), ("done", two.id, None)]
    assert await Store(redis, CommonSettings()).streams.pending_count() == 0


async def test_attempts_that_keep_failing_are_dead_lettered(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, (one,) = await queued(redis, "one")
    # A history the prompt builder cannot use: every attempt at message 1 raises.
    await redis.execute_command("JSON.SET", keys.session_key(token), "$.messages[0].seq", 99)
    async with (
        running_parley(redis_url, redis, claim_idle_ms=300, max_deliveries=3) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        events = await read_until(ws, count("error", 1))
        assert closing(events) == [("error", one.id, "delivery_failed")]
        # Delivered 3 times: two attempts began (the second after a restart) and
        # failed, raising the delivery count to 3; the third delivery gives up.
        assert len(of_type(events, "restart")) == 1
        [(_, dead)] = await redis.xrange(keys.DEAD_LETTER_STREAM)
        assert dead["message_id"] == one.id and dead["reason"] == "delivered 3 times"
        assert not parley.standin.requests
        await ws.send_str("two")
        events = await read_until(ws, count("done", 1))
    assert of_type(events, "done")[0]["reply"]["content"].startswith("Reply to: two")


async def test_a_try_failing_before_any_attempt_begins_is_dead_lettered(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, (one,) = await queued(redis, "one")
    # begin.lua fails on this session (a script error), before any attempt begins.
    await redis.execute_command("JSON.SET", keys.session_key(token), "$.replied_seq", '"broken"')
    async with (
        running_parley(redis_url, redis, claim_idle_ms=300, max_deliveries=3) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        events = await read_until(ws, count("error", 1))
        assert closing(events) == [("error", one.id, "delivery_failed")]
        assert not of_type(events, "restart"), "no attempt ever began"
        [(_, dead)] = await redis.xrange(keys.DEAD_LETTER_STREAM)
        assert dead["message_id"] == one.id
        # Closing the message mended the session: it goes on.
        await ws.send_str("two")
        events = await read_until(ws, count("done", 1))
    assert await Store(redis, CommonSettings()).sessions.replied_seq(token) == 2
    assert len(parley.prompts()) == 1


async def test_a_reply_over_its_time_is_cut_and_marked(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, reply_timeout_s=0.6, stream_flush_ms=0) as parley:
        parley.standin.tokens = 100
        parley.standin.delay_ms = 50  # 5 s in all
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me a long story")
            events = await read_until(ws, count("done", 1), timeout_s=5)
        (done,) = of_type(events, "done")
        reply = done["reply"]
        assert reply["truncated"] == "time" and reply["stopped"] is False
        assert reply["content"] == "".join(e["content"] for e in of_type(events, "token"))
        assert 0 < len(reply["content"].split()) < 100
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            history = (await r.json())["messages"]
        assert history[-1]["content"] == reply["content"]
        assert history[-1]["truncated"] == "time"


async def test_a_reply_over_its_length_is_cut_and_marked(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, reply_max_chars=12) as parley:
        parley.standin.tokens = 40
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me a long story")
            events = await read_until(ws, count("done", 1))
            await ws.send_str("and another")
            events += await read_until(ws, count("done", 1))
        first, second = of_type(events, "done")
        assert first["reply"]["truncated"] == "length"
        assert len(first["reply"]["content"]) == 12
        tokens = [e for e in of_type(events, "token") if e["message_id"] == first["message_id"]]
        assert "".join(e["content"] for e in tokens) == first["reply"]["content"]
        assert second["reply"]["truncated"] == "length"


async def test_a_last_message_whose_entry_is_gone_is_closed_by_the_sweep(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, (one,) = await queued(redis, "one")
    assert one.entry is not None
    await redis.xdel(keys.message_stream_of(token), one.entry)
    async with (
        running_parley(redis_url, redis, claim_idle_ms=200) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        # No later message waits on it: the sweep finds it.
        events = await read_until(ws, count("error", 1))
        assert closing(events) == [("error", one.id, "message_lost")]
        await ws.send_str("two")
        events = await read_until(ws, count("done", 1))
    assert len(parley.prompts()) == 1
