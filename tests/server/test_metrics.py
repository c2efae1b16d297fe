"""Prometheus metrics: /metrics on the server, the worker's counters."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.support.events import count, read_until
from tests.support.parley import Parley


async def scrape(parley: Parley, http: aiohttp.ClientSession) -> dict[str, float]:
    async with http.get(f"{parley.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def replies_done() -> float:
    return REGISTRY.get_sample_value("parley_replies_total", {"outcome": "done"}) or 0.0


async def test_metrics_count_what_happened(parley: Parley, http: aiohttp.ClientSession) -> None:
    before, done_before = await scrape(parley, http), replies_done()
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("count me")
        events = await read_until(ws, count("done", 1))
        during = await scrape(parley, http)
    assert during["parley_sockets"] == before["parley_sockets"] + 1
    async with asyncio.timeout(10):  # the server closes its side after the client did
        while (after := await scrape(parley, http))["parley_sockets"] != before["parley_sockets"]:  # noqa: ASYNC110  (polls another process)
            await asyncio.sleep(0.01)
    assert after["parley_messages_accepted_total"] == before["parley_messages_accepted_total"] + 1
    relayed = after["parley_events_relayed_total"] - before["parley_events_relayed_total"]
    assert relayed == len(events) - 1  # every event but "queued" came through the relay
    assert replies_done() == done_before + 1
