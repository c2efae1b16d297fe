"""The worker's failure paths: model errors, cut streams, poison entries, takeover."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.store import Store
from tests.support.events import count, of_type, read_until
from tests.support.parley import Parley, running_parley

FAST_RETRIES = {"llm_backoff_base_s": 0.01, "llm_backoff_max_s": 0.05, "llm_max_retries": 2}


async def history(parley: Parley, http: aiohttp.ClientSession, token: str) -> list[dict[str, Any]]:
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        messages: list[dict[str, Any]] = (await r.json())["messages"]
        return messages


@pytest.mark.parametrize(
    ("status", "times", "code"),
    [
        (410, 1, "llm_rejected"),
        (400, 1, "llm_rejected"),
        (401, 1, "llm_rejected"),
        (429, 3, "rate_limited"),
        (503, 3, "llm_unavailable"),
    ],
)
async def test_model_errors_reach_the_client_and_the_message_stays(
    redis_url: str,
    redis: Redis[str],
    http: aiohttp.ClientSession,
    status: int,
    times: int,
    code: str,
) -> None:
    async with running_parley(redis_url, redis, **FAST_RETRIES) as parley:
        parley.standin.fail_next(status, count=times)
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("are you there?")
            events = await read_until(ws, count("error", 1))
            (error,) = of_type(events, "error")
            assert error["code"] == code
            assert error["message_id"] == of_type(events, "queued")[0]["message_id"]
            assert "event_id" in error
            # The worker goes on serving: the next message is answered.
            await ws.send_str("and now?")
            events = await read_until(ws, count("done", 1))
        assert len(parley.prompts()) == times + 1  # 4xx never retried
        assert [(m["role"], m["content"][:8]) for m in await history(parley, http, token)] == [
            ("user", "are you "),
            ("user", "and now?"),
            ("assistant", "Reply to"),
        ]
        assert await Store(redis, CommonSettings()).streams.pending_count() == 0


async def test_retried_503_is_invisible_to_the_client(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, **FAST_RETRIES) as parley:
        parley.standin.fail_next(503, count=2)
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            events = await read_until(ws, count("done", 1))
        assert not of_type(events, "error") and not of_type(events, "restart")
        assert len(parley.prompts()) == 3


async def test_stream_cut_mid_reply_restarts_it_once(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, **FAST_RETRIES, stream_flush_ms=0) as parley:
        parley.standin.tokens = 10
        parley.standin.delay_ms = 5
        parley.standin.cut_next(after_tokens=3)
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me")
            events = await read_until(ws, count("done", 1))
        kinds = [e["type"] for e in events]
        restart = kinds.index("restart")
        assert "token" in kinds[:restart], "partial text came before the restart"
        after = "".join(e["content"] for e in events[restart:] if e["type"] == "token")
        (done,) = of_type(events, "done")
        assert after == done["reply"]["content"]
        assert [m["role"] for m in await history(parley, http, token)] == ["user", "assistant"]


async def test_undecodable_entry_is_dead_lettered_and_acked(
    parley: Parley, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    entry_id = await redis.xadd(keys.MESSAGE_STREAMS[3], {"token": "x", "seq": "not a number"})
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("still served?")
        await read_until(ws, count("done", 1))
    async with asyncio.timeout(10):
        while not await redis.xlen(keys.DEAD_LETTER_STREAM):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    [(_, fields)] = await redis.xrange(keys.DEAD_LETTER_STREAM)
    assert fields["entry_id"] == entry_id and fields["reason"] == "undecodable"
    assert fields["stream"] == keys.MESSAGE_STREAMS[3]
    store = Store(redis, CommonSettings())
    async with asyncio.timeout(10):
        # A first reply's entry is acked just after its done, once its title job is queued.
        while await store.streams.pending_count():  # noqa: ASYNC110  (Redis state: no event to wait on)
            await asyncio.sleep(0.02)


async def _queue_and_abandon(redis: Redis[str], deliveries: int) -> tuple[str, str, str]:
    """Queue a message and let a consumer that then dies read it ``deliveries`` times."""
    store = Store(redis, CommonSettings())
    await store.streams.ensure_group()
    session = await store.sessions.create_session("ada")
    message = await store.queue.enqueue(session.token, "who took this?", max_pending=10)
    stream = keys.message_stream_of(session.token)
    [[_, [(entry_id, _)]]] = await redis.xreadgroup(
        keys.CONSUMER_GROUP, "dead-worker", {stream: ">"}
    )
    for _ in range(deliveries - 1):
        await redis.xclaim(stream, keys.CONSUMER_GROUP, "dead-worker", 0, [entry_id])
    return session.token, message.id, entry_id


async def test_dead_consumers_entry_is_taken_over_and_answered_once(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, message_id, _ = await _queue_and_abandon(redis, deliveries=1)
    async with (
        running_parley(redis_url, redis, claim_idle_ms=300) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        events = await read_until(ws, count("done", 1))
        # The dead consumer never began the reply: no partial text to discard.
        assert not of_type(events, "restart")
        (done,) = of_type(events, "done")
        assert done["message_id"] == message_id
        assert [m["role"] for m in await history(parley, http, token)] == ["user", "assistant"]
    assert await Store(redis, CommonSettings()).streams.pending_count() == 0


async def test_entry_failing_too_often_goes_to_the_dead_letter_stream(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    token, message_id, entry_id = await _queue_and_abandon(redis, deliveries=3)
    async with (
        running_parley(redis_url, redis, claim_idle_ms=300, max_deliveries=3) as parley,
        http.ws_connect(parley.ws_url, params={"token": token, "after": "0-0"}) as ws,
    ):
        (error,) = of_type(await read_until(ws, count("error", 1)), "error")
        assert error["code"] == "delivery_failed" and error["message_id"] == message_id
        [(_, fields)] = await redis.xrange(keys.DEAD_LETTER_STREAM)
        assert fields["entry_id"] == entry_id
        assert not parley.standin.requests, "no further try"
        # The session goes on: the next message is answered.
        await ws.send_str("next one")
        done = of_type(await read_until(ws, count("done", 1)), "done")
        assert done[0]["reply"]["content"].startswith("Reply to: next one")
    assert await Store(redis, CommonSettings()).sessions.replied_seq(token) == 2
