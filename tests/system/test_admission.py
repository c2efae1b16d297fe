"""Admission control against real server processes: limits shared by every replica."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from storage.admission import limit_key
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.standin import StandinModel
from tests.support.events import count, of_type, read_until
from tests.support.quota import session_used

pytestmark = pytest.mark.system

BURST = declare(
    RATE_SESSIONS_PER_CLIENT=(20, "the burst of 100 is 5 times the budget"),
    TRUSTED_PROXIES=("127.0.0.1", "the test stands for a proxy, for the last part"),
)
MESSAGE_BUDGET = declare(
    RATE_MESSAGES_PER_SESSION=(3, "the 4th message is past the budget"),
    RATE_WINDOW_S=(2, "the window ends within the test"),
)
SOCKET_CAP = declare(MAX_SOCKETS_PER_CLIENT=(2, "the 3rd socket is past the cap"))
QUOTA = declare(
    MODEL_TOKENS_PER_SESSION=(30, "used up by the 2nd reply"),
    QUOTA_PERIOD_S=(3, "the period ends within the test"),
    CONVERSATION_TITLES=(
        False,
        "replies alone use the quota: a title, charged too, comes any time",
    ),
)


def _refusals(metrics: str, limit: str) -> float:
    match = re.search(rf'^parley_admission_refusals_total{{limit="{limit}"}} (\S+)$', metrics, re.M)
    return float(match[1]) if match else 0.0


@pytest.mark.timeout(60)
async def test_a_burst_of_new_sessions_is_refused_past_one_budget_for_all_replicas(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        StandinModel(tokens=2) as model,
        Cluster(redis_url, model.base_url or "", tmp_path / "logs", overrides=BURST) as cluster,
    ):
        await cluster.start(servers=2, workers=1)
        urls = [s.url for s in cluster.servers]
        client = {"X-Forwarded-For": "198.51.100.7"}

        async def new_session(k: int) -> tuple[int, str | None]:
            url = urls[k % 2]
            async with http.post(f"{url}/token", params={"name": "b"}, headers=client) as r:
                return r.status, r.headers.get("Retry-After")

        answers = await asyncio.gather(*(new_session(k) for k in range(100)))
        accepted = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] == 429]
        waits = sorted({int(a[1] or 0) for a in refused})
        print(
            f"burst: 100 requests over 2 replicas, {len(accepted)} accepted, {len(refused)} "
            f"refused with 429, Retry-After {waits[0]}-{waits[-1]} s"
        )
        assert len(accepted) == 20 and len(refused) == 80
        assert all(1 <= w <= 60 for w in waits)
        async with http.post(f"{urls[0]}/token", params={"name": "b"}, headers=client) as r:
            assert r.status == 429
            assert "try again in" in (await r.json())["detail"]
        # Another client behind the same (trusted) proxy has a budget of its own.
        other = {"X-Forwarded-For": "198.51.100.8"}
        async with http.post(f"{urls[1]}/token", params={"name": "c"}, headers=other) as r:
            assert r.status == 200
        # Each refusal is counted once, by the replica that refused it, by limit only.
        total = 0.0
        for url in urls:
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            total += _refusals(text, "sessions")
            assert "198.51.100" not in text
        assert total == 81


@pytest.mark.timeout(60)
async def test_messages_past_the_session_budget_wait_the_time_they_are_told(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        StandinModel(tokens=2) as model,
        Cluster(
            redis_url, model.base_url or "", tmp_path / "logs", overrides=MESSAGE_BUDGET
        ) as cluster,
    ):
        await cluster.start(servers=2, workers=1)
        one, two = (s.url.replace("http", "ws", 1) + "/chat" for s in cluster.servers)
        async with http.post(f"{cluster.servers[0].url}/token", params={"name": "ada"}) as r:
            token = (await r.json())["token"]
        async with (
            http.ws_connect(one, params={"token": token}) as tab1,
            http.ws_connect(two, params={"token": token}) as tab2,
        ):
            # Three messages from two tabs on two replicas: one budget.
            for tab, text in ((tab1, "m1"), (tab2, "m2"), (tab1, "m3")):
                await tab.send_str(text)
                await read_until(tab, count("queued", 1))
            await tab2.send_str("m4")
            (error,) = of_type(await read_until(tab2, count("error", 1)), "error")
            assert error["code"] == "too_many_requests" and error["message_id"] is None
            wait = error["retry_after_s"]
            assert 0 < wait <= 2 and f"try again in {int(-(-wait // 1))} s" in error["detail"]
            print(f"messages: 3 of 4 accepted in 2 s, the 4th refused, retry_after_s {wait}")
            # After the wait it was told, the conversation goes on.
            await asyncio.sleep(wait)
            await tab2.send_str("m4 again")
            seen = await read_until(tab2, count("queued", 1))
            assert of_type(seen, "queued")[0]["message"]["content"] == "m4 again"
            await read_until(tab1, count("done", 4))
        async with http.get(
            f"{cluster.servers[0].url}/refresh_token", params={"token": token}
        ) as r:
            history = (await r.json())["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == [
            "m1",
            "m2",
            "m3",
            "m4 again",
        ]


@pytest.mark.timeout(60)
async def test_sockets_per_client_are_capped_across_replicas(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        StandinModel(tokens=2) as model,
        Cluster(
            redis_url, model.base_url or "", tmp_path / "logs", overrides=SOCKET_CAP
        ) as cluster,
    ):
        await cluster.start(servers=2, workers=1)
        one, two = (s.url.replace("http", "ws", 1) + "/chat" for s in cluster.servers)
        async with http.post(f"{cluster.servers[0].url}/token", params={"name": "ada"}) as r:
            token = (await r.json())["token"]
        params = {"token": token}
        async with http.ws_connect(one, params=params), http.ws_connect(two, params=params) as b:
            third = await http.ws_connect(one, params=params)
            message = await third.receive(timeout=5)
            event = json.loads(message.data)
            assert event["code"] == "too_many_requests" and "2 sockets" in event["detail"]
            assert (await third.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert third.close_code == 1013
            sockets = limit_key("sockets", "127.0.0.1")
            assert await redis.zcard(sockets) == 2, "the two open sockets hold the places"
            await b.close()
            # The server gives the place back once it has seen the close: wait for that.
            async with asyncio.timeout(10):
                while await redis.zcard(sockets) > 1:  # noqa: ASYNC110  (no event to wait on)
                    await asyncio.sleep(0.02)
            # A place is free again: a new socket opens and works.
            async with http.ws_connect(two, params=params) as again:
                await again.send_str("hello")
                await read_until(again, count("done", 1))


@pytest.mark.timeout(60)
async def test_a_used_up_quota_refuses_messages_until_it_renews(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # The stand-in counts a token per word: the system prompt (8) plus each turn, plus
    # its 8-token replies: reply 1 costs 17, reply 2 costs 26, so 30 is used up after 2.
    async with (
        StandinModel(tokens=8) as model,
        Cluster(redis_url, model.base_url or "", tmp_path / "logs", overrides=QUOTA) as cluster,
    ):
        await cluster.start(servers=1, workers=1)
        url = cluster.servers[0].url
        async with http.post(f"{url}/token", params={"name": "ada"}) as r:
            token = (await r.json())["token"]
        async with http.ws_connect(
            f"{url.replace('http', 'ws', 1)}/chat", params={"token": token}
        ) as ws:
            for text in ("one", "two"):
                await ws.send_str(text)
                await read_until(ws, count("done", 1))
            used = await session_used(redis, token)
            await ws.send_str("three")
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
            assert error["code"] == "quota_exceeded" and error["message_id"] is None
            wait = error["retry_after_s"]
            assert 0 < wait <= 3 and "30 model tokens" in error["detail"]
            print(
                f"quota: 2 replies used {used} of 30 model tokens (the model's own usage), "
                f"the 3rd message refused with quota_exceeded, retry_after_s {wait}"
            )
            await asyncio.sleep(wait)  # the period it was told ends
            await ws.send_str("three")
            seen = await read_until(ws, count("done", 1))
            assert of_type(seen, "done")[0]["reply"]["content"].startswith("Reply to: three")
        assert used == 43
