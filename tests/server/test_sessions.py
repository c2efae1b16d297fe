"""REST: POST /token, GET /refresh_token, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import aiohttp
import pytest

from storage import keys
from tests.support.parley import UNKNOWN_TOKEN, Parley

GONE = {"detail": "Session expired or does not exist"}


async def test_token_creates_an_empty_session(parley: Parley, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{parley.url}/token", params={"name": "  Ada  "}) as r:
        assert r.status == 200
        body = await r.json()
    assert set(body) == {"token", "name", "session_start", "messages"}
    assert uuid.UUID(body["token"]).version == 4
    assert body["name"] == "Ada"
    assert body["messages"] == []
    assert body["session_start"].endswith("Z")
    datetime.fromisoformat(body["session_start"])
    ttl = await parley.redis.ttl(keys.session_key(body["token"]))
    assert 0 < ttl <= parley.server_settings.session_ttl_seconds


async def test_token_name_missing_is_422(parley: Parley, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{parley.url}/token") as r:
        assert r.status == 422
        assert "detail" in await r.json()


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
async def test_token_name_empty_blank_or_long_is_400(
    parley: Parley, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.post(f"{parley.url}/token", params={"name": name}) as r:
        assert r.status == 400
        assert "name" in (await r.json())["detail"]


async def test_token_name_of_100_characters_is_fine(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{parley.url}/token", params={"name": "x" * 100}) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    "token", ["not-a-uuid", "", "1234", UNKNOWN_TOKEN, "' OR 1=1 --", "{}" * 20]
)
async def test_refresh_bad_or_unknown_token_is_400(
    parley: Parley, http: aiohttp.ClientSession, token: str
) -> None:
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 400
        assert await r.json() == GONE


async def test_refresh_returns_the_session_and_renews_its_ttl(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    await parley.redis.expire(keys.session_key(token), 5)
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["token"] == token and body["name"] == "ada" and body["messages"] == []
    assert await parley.redis.ttl(keys.session_key(token)) > 5


async def test_refresh_after_expiry_is_400(parley: Parley, http: aiohttp.ClientSession) -> None:
    token = await parley.create_session(http)
    await parley.redis.delete(keys.session_key(token))  # what the TTL does when it runs out
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 400
        assert await r.json() == GONE


async def test_health_and_readiness(parley: Parley, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{parley.url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{parley.url}/readyz") as r:
        assert r.status == 200
    # A running worker re-creates a missing group at once; stop it to see the probe fail.
    parley.worker.stop()
    await asyncio.wait_for(parley.worker.stopped.wait(), 10)
    await parley.redis.xgroup_destroy(keys.MESSAGE_STREAMS[5], keys.CONSUMER_GROUP)
    async with http.get(f"{parley.url}/readyz") as r:
        assert r.status == 503
        assert "consumer group" in (await r.json())["detail"]


async def test_root_serves_a_page(parley: Parley, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{parley.url}/") as r:
        assert r.status == 200
        assert "Parley" in await r.text()
