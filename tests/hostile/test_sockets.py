"""Sockets per session, bounded over several real ``python -m server`` processes, with
leases that lapse when the process holding them dies."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from storage import keys
from storage.leases import leases_key
from testkit.overrides import declare
from testkit.processes import Proc
from tests.hostile.servers import new_session, servers

pytestmark = pytest.mark.system

LEASE_S = 3.0

OVERRIDES = declare(
    MAX_SOCKETS_PER_SESSION=(3, "the bound is reached with a few sockets"),
    SOCKET_LEASE_SECONDS=(LEASE_S, "a dead server's sockets lapse within the test"),
    RATE_SOCKET_OPENS_PER_CLIENT=(
        400,
        "sockets are opened every 50 ms until the leases lapse (320 tries), from 127.0.0.1",
    ),
)


def ws_url(proc: Proc) -> str:
    return f"{proc.url.replace('http', 'ws')}/chat"


async def refusal(http: aiohttp.ClientSession, proc: Proc, token: str) -> tuple[int, str]:
    """The status and ``detail`` of a WebSocket handshake that is refused (an HTTP GET
    with the upgrade headers, so the body can be read)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with http.get(f"{proc.url}/chat", params={"token": token}, headers=headers) as r:
        assert r.status != 101, "the handshake was accepted"
        return r.status, (await r.json())["detail"]


async def connect_when_allowed(
    http: aiohttp.ClientSession, proc: Proc, token: str, timeout_s: float
) -> aiohttp.ClientWebSocketResponse:
    """Connect, retrying while the handshake is refused with 429 (a lease still held)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await http.ws_connect(ws_url(proc), params={"token": token})
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 429, e
            await asyncio.sleep(0.05)


async def test_sockets_per_session_are_bounded_over_servers_and_lapse_with_a_dead_one(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    async with (
        servers(redis_url, tmp_path / "logs", count=2, overrides=OVERRIDES) as cluster,
        aiohttp.ClientSession() as http,
    ):
        a, b = cluster.servers
        token = await new_session(http, a)
        open_sockets = [
            await http.ws_connect(ws_url(a), params={"token": token}),
            await http.ws_connect(ws_url(a), params={"token": token}),
            await http.ws_connect(ws_url(b), params={"token": token}),
        ]
        assert await redis.zcard(leases_key(token)) == 3
        for proc in (a, b):
            status, detail = await refusal(http, proc, token)
            assert status == 429 and "3 open sockets" in detail
        # Another session is not concerned.
        other = await new_session(http, b, "bob")
        async with http.ws_connect(ws_url(b), params={"token": other}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_json(timeout=10))["type"] == "queued"

        # A socket that closes gives its place back.
        await open_sockets.pop().close()
        open_sockets.append(await connect_when_allowed(http, b, token, timeout_s=5))

        # A server that dies holds its two leases until they lapse.
        cluster.kill(a)
        await cluster.wait_exit(a)
        killed_at = time.monotonic()
        status, _ = await refusal(http, b, token)
        assert status == 429, "the dead server's leases still count for a while"
        revived = [await connect_when_allowed(http, b, token, timeout_s=LEASE_S + 5)]
        lapsed_after_s = time.monotonic() - killed_at
        # The dead server's second lease may lapse a renewal tick after its first.
        revived.append(await connect_when_allowed(http, b, token, timeout_s=LEASE_S + 5))
        await revived[0].send_str("after the crash")
        assert (await revived[0].receive_json(timeout=10))["type"] == "queued"
        for ws in open_sockets + revived:
            await ws.close()
    print(f"\nleases of the killed server lapsed {lapsed_after_s:.1f} s after the kill")
    assert lapsed_after_s <= LEASE_S + 2
    # The leases share the session's hash slot (Redis Cluster).
    assert key_slot(leases_key(token).encode()) == key_slot(keys.session_key(token).encode())
