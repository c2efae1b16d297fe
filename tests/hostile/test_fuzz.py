"""Fuzzing ``WS /chat`` of a real ``python -m server`` with Hypothesis-generated frames,
and its handshake (and a REST route) with generated ``Origin``, ``Host``,
``X-Forwarded-For`` and ``Authorization`` headers.

Ten sockets, each on a session of its own, get 10,000 frames between them: random bytes
(binary frames), random Unicode (lone surrogates too, as text frames that are not UTF-8
and as ``\\ud800`` escapes in JSON), deep nesting, commands with wrong types, huge
numbers and huge strings. The server runs without a worker and with
``MAX_PENDING_MESSAGES=1``, so a text frame that is a message is queued once per session
and refused (``too_many_pending``) after: both are normal effects.

Every socket must stay open to the end (a sentinel frame at the end of each socket's
share is answered), every event the server sends must be a valid server event, the
server's log must hold no traceback, and its resident memory must stay flat.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from protocol.wire import SERVER_EVENT, ErrorCode, ErrorEvent
from testkit.overrides import declare
from tests.hostile.frames import Frame, generate, generate_handshakes
from tests.hostile.servers import new_session, rss_mb, servers, tracebacks

pytestmark = pytest.mark.system

SOCKETS = 10
FRAMES = 10_000
#: Resident memory may grow this much (MB) over the run.
RSS_SLACK_MB = 20.0

ONE_PENDING = declare(
    MAX_PENDING_MESSAGES=(1, "the frames' messages are refused past the first, not queued"),
)
BEHIND_A_PROXY = declare(
    TRUSTED_PROXIES=(
        "127.0.0.1",
        "the client stands for a proxy: its X-Forwarded-For is read",
    ),
)


class SocketRun:
    """One socket's share of the frames, and what came back."""

    def __init__(self, index: int, frames: list[Frame]) -> None:
        self.index = index
        self.frames = frames
        self.sent = 0
        self.events = 0
        self.codes: dict[str, int] = {}
        self.bad_events: list[str] = []
        self.close_code: int | None = None
        self.sentinel = f"sentinel-{index}"

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send every frame, then the sentinel, while reading until it is answered."""
        reader = asyncio.create_task(self._read(ws))
        for _, data in self.frames:
            if reader.done():
                break  # closed by the server: reported below
            try:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                elif _is_utf8(data):
                    await ws.send_str(data)
                else:  # lone surrogates: a text frame whose bytes are not UTF-8
                    raw = data.encode("utf-8", "surrogatepass")
                    await ws.send_frame(raw, aiohttp.WSMsgType.TEXT)
            except (aiohttp.ClientError, ConnectionError):
                break  # closed by the server: the reader saw why
            self.sent += 1
        else:
            await ws.send_str(json.dumps({"type": self.sentinel}))
        await reader

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                self.close_code = ws.close_code
                return
            self.events += 1
            try:
                event = SERVER_EVENT.validate_json(message.data)
            except ValueError as e:
                self.bad_events.append(f"{message.data[:200]!r}: {e}")
                continue
            if isinstance(event, ErrorEvent):
                self.codes[event.code.value] = self.codes.get(event.code.value, 0) + 1
                if event.code is ErrorCode.UNKNOWN_COMMAND and self.sentinel in event.detail:
                    return


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def test_ten_thousand_hostile_frames_close_no_socket(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    started = time.monotonic()
    frames = generate(FRAMES, seed=20261202)
    generated_s = time.monotonic() - started
    shares = [frames[i::SOCKETS] for i in range(SOCKETS)]
    runs = [SocketRun(i, share) for i, share in enumerate(shares)]
    async with (
        servers(redis_url, tmp_path / "logs", overrides=ONE_PENDING) as cluster,
        aiohttp.ClientSession() as http,
    ):
        (server,) = cluster.servers
        sockets = []
        for run in runs:
            token = await new_session(http, server, f"fuzz-{run.index}")
            sockets.append(
                await http.ws_connect(
                    f"{server.url.replace('http', 'ws')}/chat",
                    params={"token": token},
                    max_msg_size=0,
                )
            )
        # Warm up (a message, an error and a resume on each socket) before measuring.
        for ws in sockets:
            await ws.send_str("warm up")
            await ws.send_str(json.dumps({"type": "dance"}))
            await ws.send_str(json.dumps({"type": "resume", "after": "0-0"}))
        for ws in sockets:
            for _ in range(2):
                await ws.receive(timeout=10)
        rss_before = rss_mb(server)
        async with asyncio.timeout(60):
            await asyncio.gather(*(run.run(ws) for run, ws in zip(runs, sockets, strict=True)))
        rss_after = rss_mb(server)
        for ws in sockets:
            await ws.close()
        logged = tracebacks(server)
    elapsed_s = time.monotonic() - started

    sent = sum(r.sent for r in runs)
    closes = {r.index: r.close_code for r in runs if r.close_code is not None}
    codes: dict[str, int] = {}
    for r in runs:
        for code, n in r.codes.items():
            codes[code] = codes.get(code, 0) + n
    print(
        f"\nfuzz: {sent} frames sent on {SOCKETS} sockets in {elapsed_s:.1f} s "
        f"(generation {generated_s:.1f} s); events received {sum(r.events for r in runs)}; "
        f"sockets closed {len(closes)} (codes {sorted(map(int, closes.values()))}), with 1011: "
        f"{sum(code == 1011 for code in closes.values())}; tracebacks in the server log "
        f"{len(logged)}; server RSS {rss_before:.1f} MB before, {rss_after:.1f} MB after "
        f"({rss_after - rss_before:+.1f} MB); error codes {dict(sorted(codes.items()))}"
    )
    assert not closes, f"sockets closed by the server (index: code): {closes}"
    assert sent >= FRAMES
    assert not logged, "tracebacks in the server's log:\n" + "\n".join(logged[:10])
    bad = [b for r in runs for b in r.bad_events]
    assert not bad, f"events that are not valid server events: {bad[:5]}"
    assert rss_after - rss_before <= RSS_SLACK_MB
    assert codes.get("invalid_frame", 0) > 0 and codes.get("too_many_pending", 0) > 0


async def test_text_frames_that_are_not_utf8_get_invalid_frame_and_the_socket_stays(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    not_utf8 = [
        b'{"type":"message","content":"\xed\xa0\x80"}',  # a UTF-8-encoded lone surrogate
        b"\xff\xfe plain",
        b"caf\xc3",  # cut in the middle of a character
    ]
    async with (
        servers(redis_url, tmp_path / "logs") as cluster,
        aiohttp.ClientSession() as http,
    ):
        (server,) = cluster.servers
        token = await new_session(http, server)
        ws_url = f"{server.url.replace('http', 'ws')}/chat"
        async with http.ws_connect(ws_url, params={"token": token}) as ws:
            for raw in not_utf8:
                await ws.send_frame(raw, aiohttp.WSMsgType.TEXT)
                error = SERVER_EVENT.validate_json((await ws.receive(timeout=10)).data)
                assert isinstance(error, ErrorEvent), error
                assert error.code is ErrorCode.INVALID_FRAME and "UTF-8" in error.detail
            await ws.send_str("still open")
            queued = SERVER_EVENT.validate_json((await ws.receive(timeout=10)).data)
            assert queued.type == "queued"
        assert not tracebacks(server)


HANDSHAKES = 400


async def test_hostile_handshake_headers_get_4xx_never_5xx(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    """Malformed origins and hosts (``http://[::1``, ports out of range or not numbers),
    forwarded addresses that are not addresses, and odd credentials: each handshake is
    accepted or refused with a 4xx, each REST call answers below 500, and the server
    logs no traceback."""
    handshakes = generate_handshakes(HANDSHAKES, seed=20261207)
    statuses: dict[int, int] = {}
    unsent = 0
    async with (
        servers(redis_url, tmp_path / "logs", overrides=BEHIND_A_PROXY) as cluster,
        aiohttp.ClientSession() as http,
    ):
        (server,) = cluster.servers
        token = await new_session(http, server)
        ws_url = f"{server.url.replace('http', 'ws')}/chat"
        for headers in handshakes:
            try:
                async with http.ws_connect(ws_url, params={"token": token}, headers=headers):
                    status = 101
            except aiohttp.WSServerHandshakeError as e:
                status = e.status
            except (ValueError, aiohttp.ClientConnectionError):
                unsent += 1  # a header aiohttp will not send, or a request h11 drops
                continue
            statuses[status] = statuses.get(status, 0) + 1
            try:
                async with http.get(
                    f"{server.url}/refresh_token", params={"token": token}, headers=headers
                ) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except (ValueError, aiohttp.ClientConnectionError):
                unsent += 1
        logged = tracebacks(server)
    print(f"\nhandshake fuzz: statuses {dict(sorted(statuses.items()))}, not sent {unsent}")
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(101, 0) > 0 and statuses.get(400, 0) > 0 and statuses.get(403, 0) > 0
    assert unsent < HANDSHAKES // 4
    assert not logged, "tracebacks in the server's log:\n" + "\n".join(logged[:10])
