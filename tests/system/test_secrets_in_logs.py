"""No session or owner token in any log line of any process, after an ordinary chat."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from runtime.logs import fingerprint
from testkit.overrides import declare
from testkit.ports import free_port
from testkit.processes import Cluster
from testkit.standin import StandinModel
from tests.support.events import count, read_until

pytestmark = pytest.mark.system

#: The formats and the metrics' port are the test's parameters, declared with it.
LOGGED = declare(LOG_LEVEL=("DEBUG", "every line a process can write is scanned for tokens"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_session_tokens_never_reach_the_logs(
    redis: Redis[str],
    redis_url: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    log_format: str,
) -> None:
    log_dir = tmp_path / "logs"
    metrics_port = free_port()
    overrides = LOGGED | declare(
        LOG_FORMAT=(log_format, "both formats are scanned"),
        METRICS_PORT=(metrics_port, "metrics on a port of their own are scanned too"),
    )
    async with (
        StandinModel(tokens=4) as model,
        Cluster(redis_url, model.base_url or "", log_dir, overrides=overrides) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        url = cluster.servers[0].url
        gone = "00000000-0000-4000-8000-000000000000"
        async with http.post(f"{url}/owner") as r:
            owner = (await r.json())["owner"]
        tokens = []
        for name in ("ada", "bob"):
            async with http.post(f"{url}/token", params={"name": name, "owner": owner}) as r:
                tokens.append((await r.json())["token"])
        for token in tokens:
            async with http.ws_connect(
                f"{url.replace('http', 'ws', 1)}/chat", params={"token": token}
            ) as ws:
                await ws.send_str("hello")
                await read_until(ws, count("done", 1))
                await ws.send_str('{"type": "stop"}')  # logs the session on both sides
            async with http.get(f"{url}/refresh_token", params={"token": token}) as r:
                assert r.status == 200
        # The owner's requests carry both kinds of token in their query strings.
        async with http.get(f"{url}/conversations", params={"owner": owner}) as r:
            assert r.status == 200
        async with http.get(f"{url}/session/export", params={"token": tokens[0]}) as r:
            assert r.status == 200
        async with http.get(f"{url}/conversations", params={"owner": gone}) as r:
            assert r.status == 400
        # A refused socket: uvicorn logs the path of a rejected handshake too.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(f"{url.replace('http', 'ws', 1)}/chat", params={"token": gone})
        # Metrics are on METRICS_PORT only, and hold no token either.
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            metrics = await r.text()
        assert "parley_messages_accepted_total 2.0" in metrics
        assert not any(token in metrics for token in tokens)
    logs = {p.name: p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log"))}
    assert set(logs) == {"server-1.log", "worker-1.log", "worker-2.log"}
    hits = [
        f"{name}: {line}"
        for name, text in logs.items()
        for line in text.splitlines()
        for token in (*tokens, owner, gone)
        if token in line.lower()
    ]
    lines = sum(len(text.splitlines()) for text in logs.values())
    print(f"log scan: {lines} lines in {len(logs)} files, {len(hits)} holding a token")
    assert not hits, "\n".join(hits[:10])
    # The lines were written, naming the sessions by their fingerprints instead.
    server_log = logs["server-1.log"]
    assert f"/chat?token=fp-{fingerprint(tokens[0])}" in server_log
    assert f"/chat?token=fp-{fingerprint(gone)}" in server_log
    if log_format == "text":
        workers_log = logs["worker-1.log"] + logs["worker-2.log"]
        assert all(f"session={fingerprint(t)}" in server_log + workers_log for t in tokens)
        return
    # JSON lines: one message followed from the server to the worker that answered it.
    records = [json.loads(line) for text in logs.values() for line in text.splitlines()]
    for token in tokens:
        mine = [r for r in records if r.get("session") == fingerprint(token) and "seq" in r]
        ids = {r["message_id"] for r in mine if "message_id" in r}
        assert len(ids) == 1, mine
        assert {r["process"] for r in mine} == {"server", "worker"}
        assert {r["seq"] for r in mine if "message_id" in r} == {"1"}
        assert all(isinstance(r["pid"], int) and r["time"] for r in mine)
