"""A regenerated reply whose worker is SIGKILLed mid-reply is taken over and recorded
once; real server and worker processes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from testkit.jobs import of_kind
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.records import pending_owners
from testkit.standin import StandinModel
from tests.support.events import count, of_type, read_until

pytestmark = pytest.mark.system

OVERRIDES = declare(
    CLAIM_IDLE_MS=(1000, "the killed worker's reply taken over in 1 s, not 5"),
)


@pytest.mark.timeout(120)
async def test_a_regenerated_reply_survives_its_worker_and_is_recorded_once(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        StandinModel(tokens=40, delay_ms=50) as model,  # 2 s a reply
        Cluster(redis_url, model.base_url or "", tmp_path / "logs", overrides=OVERRIDES) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        server = cluster.servers[0].url
        async with http.post(f"{server}/token", params={"name": "ada"}) as r:
            token = (await r.json())["token"]
        ws_url = server.replace("http", "ws", 1) + "/chat"
        async with http.ws_connect(ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me")
            (first,) = of_type(await read_until(ws, count("done", 1), timeout_s=30), "done")
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("token", 2), timeout_s=30)
            owner = (await pending_owners(cluster.redis))[first["message_id"]]
            await cluster.replace(cluster.worker_by_consumer(owner))
            events += await read_until(ws, count("done", 1), timeout_s=60)
        assert [e["type"] for e in events][:1] == ["revised"]
        assert of_type(events, "restart"), "the new reply was not taken over mid-reply"
        (done,) = of_type(events, "done")
        after_restart = events[max(i for i, e in enumerate(events) if e["type"] == "restart") :]
        assert (
            "".join(e["content"] for e in of_type(after_restart, "token"))
            == done["reply"]["content"]
        )
        async with http.get(f"{server}/refresh_token", params={"token": token}) as r:
            messages = (await r.json())["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["id"] == done["reply"]["id"]
        (version,) = messages[0]["versions"]
        assert version["reply"]["id"] == first["reply"]["id"]
        # The first reply, the regenerated one, its takeover (a title is no reply).
        assert len(of_kind(model.requests, "reply")) == 3
