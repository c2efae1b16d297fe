"""Two sockets of one session on two server processes; stop across processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from testkit.processes import Cluster
from testkit.standin import StandinModel
from tests.support.events import count, of_type, read_until

pytestmark = pytest.mark.system


@pytest.mark.timeout(120)
async def test_two_tabs_on_two_servers_and_a_stop_from_either(
    redis: Redis[str], redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        StandinModel(tokens=200, delay_ms=20) as model,  # a 4 s reply
        Cluster(redis_url, model.base_url or "", tmp_path / "logs") as cluster,
    ):
        await cluster.start(servers=2, workers=2)
        one, two = (s.url for s in cluster.servers)
        async with http.post(f"{one}/token", params={"name": "ada"}) as r:
            token = (await r.json())["token"]
        ws_one, ws_two = (f"{url.replace('http', 'ws', 1)}/chat" for url in (one, two))
        async with (
            http.ws_connect(ws_one, params={"token": token}) as tab1,
            http.ws_connect(ws_two, params={"token": token}) as tab2,
        ):
            # Tab 1 sends; both tabs see the reply stream; tab 2 stops it.
            await tab1.send_str("tell me everything")
            seen1 = await read_until(tab1, count("token", 3))
            seen2 = await read_until(tab2, count("token", 3))
            sent = time.perf_counter()
            await tab2.send_str(json.dumps({"type": "stop"}))
            seen2 += await read_until(tab2, count("done", 1))
            took_s = time.perf_counter() - sent
            seen1 += await read_until(tab1, count("done", 1))
            assert took_s < 0.5, f"stopped after {took_s * 1000:.0f} ms"
            (done1,), (done2,) = of_type(seen1, "done"), of_type(seen2, "done")
            assert done1 == done2 and done1["reply"]["stopped"] is True
            for seen in (seen1, seen2):
                streamed = "".join(e["content"] for e in of_type(seen, "token"))
                assert streamed == done1["reply"]["content"]

            # Tab 2 sends the next one; it is answered in full, on both tabs.
            model.tokens, model.delay_ms = 12, 0
            await tab2.send_str("the short version")
            next2 = await read_until(tab2, count("done", 1))
            next1 = await read_until(tab1, count("done", 1))
            assert of_type(next1, "done") == of_type(next2, "done")
            assert of_type(next2, "done")[0]["reply"]["stopped"] is False
        # The stopped reply was cancelled at the model, the next one completed (the
        # title, asked after the first reply, may still be on its way).
        completed = [t.prompt for t in model.timings]
        assert model.cancelled == 1
        assert "the short version" in completed and "tell me everything" not in completed
        async with http.get(f"{two}/refresh_token", params={"token": token}) as r:
            history = (await r.json())["messages"]
        assert [(m["role"], m["stopped"]) for m in history] == [
            ("user", False),
            ("assistant", True),
            ("user", False),
            ("assistant", False),
        ]
        assert not cluster.log_errors()
