"""Hostile cursors and commands on ``WS /chat``: ids beyond the newest event, ids that are
not stream ids, floods of ``resume``, bounded replays, cursors older than the events
kept; against a real Redis, a real worker and the stand-in model (the in-process app)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from fastapi import WebSocket
from redis.asyncio import Redis

from protocol.event_ids import stream_id_key
from protocol.wire import TokenEvent
from runtime.config import CommonSettings
from server.relay import EventRelay
from storage import keys
from storage.hub import RESYNC
from storage.store import Store
from tests.support.events import Event, count, kept, of_type, read_until, trim_past
from tests.support.parley import Parley, running_parley

BEYOND = "99999999999999-0"


def resume(after: str) -> str:
    return json.dumps({"type": "resume", "after": after})


def live_done(events: list[Event]) -> bool:
    """Whether the reply to the message "live" (the newest event) has arrived."""
    return any(e["reply"]["content"].startswith("Reply to: live") for e in of_type(events, "done"))


def reply_done(text: str) -> Callable[[list[Event]], bool]:
    """A condition: the reply to the message ``text`` has arrived."""
    return lambda events: any(
        e["reply"]["content"].startswith(f"Reply to: {text}") for e in of_type(events, "done")
    )


def ids(events: list[Event]) -> list[str]:
    return [e["event_id"] for e in events if "event_id" in e]


async def test_after_beyond_the_newest_event_is_refused_and_live_events_flow(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token, "after": BEYOND}) as ws:
        (error,) = await read_until(ws, count("error", 1))
        assert error["code"] == "invalid_frame" and "beyond" in error["detail"]
        await ws.send_str("hello")
        events = await read_until(ws, count("done", 1))
    assert of_type(events, "done")[0]["reply"]["content"].startswith("Reply to: hello")


async def test_resume_beyond_the_newest_event_is_refused_and_live_events_flow(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("first")
        first = await read_until(ws, count("done", 1))
        await ws.send_str(resume(BEYOND))
        (error,) = await read_until(ws, count("error", 1))
        assert error["code"] == "invalid_frame" and "beyond" in error["detail"]
        await ws.send_str("second")
        second = await read_until(ws, count("done", 1))
    assert of_type(second, "done")[0]["reply"]["content"].startswith("Reply to: second")
    assert set(ids(first)).isdisjoint(ids(second)), "the cursor did not move back"


async def test_malformed_ids_deep_json_and_lone_surrogates_get_errors_on_an_open_socket(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    cases = [
        ('{"a":' * 5000 + "1" + "}" * 5000, "invalid_frame"),
        ('{"type":"message","content":' + "[" * 5000 + "]" * 5000 + "}", "invalid_frame"),
        ("[" * 5000 + "]" * 5000, "message_too_long"),  # not an object: plain content
        ('{"type":"message","content":"\\ud800 x"}', "invalid_frame"),
        ('{"type":"message","content":"x","\\udfff":1}', "invalid_frame"),
        ('{"type":"message","content":' + "9" * 5000 + "}", "message_too_long"),  # not JSON
        (resume("\u0661\u0662-\u0660"), "invalid_frame"),  # digits, not ASCII ones
        (resume("²-0"), "invalid_frame"),
        (resume("18446744073709551616-0"), "invalid_frame"),  # over 64 bits
        (resume("1-"), "invalid_frame"),
        (resume("0"), "invalid_frame"),
        (json.dumps({"type": "x" * 10_000}), "unknown_command"),  # echoed clipped
        (json.dumps({"type": "message", "content": "x" * 100_000}), "message_too_long"),
    ]
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for frame, code in cases:
            await ws.send_str(frame)
            (error,) = await read_until(ws, count("error", 1))
            assert error["code"] == code, (frame[:60], error)
            assert len(error["detail"]) < 500
        await ws.send_str("still here")
        events = await read_until(ws, count("done", 1))
    assert of_type(events, "done")[0]["reply"]["content"].startswith("Reply to: still here")


async def test_resume_replays_at_most_its_bound_and_the_rest_without_a_gap(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    limit = 3
    async with running_parley(
        redis_url, redis, resume_max_events=limit, resume_burst=100
    ) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            for n in range(4):
                await ws.send_str(f"m{n}")
            before = ids(await read_until(ws, count("done", 4)))
        assert len(before) > 2 * limit

        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str(resume("0-0"))
            first = await read_until(ws, count("error", 1))
            assert first[-1]["code"] == "resume_truncated"
            assert ids(first) == before[:limit]
            # Sent while this socket is behind: its reply's events wait in the stream.
            await ws.send_str("live")
            got = ids(first)
            rounds = 1
            while True:
                await ws.send_str(resume(got[-1]))
                events = await read_until(ws, lambda e: bool(of_type(e, "error")) or live_done(e))
                got += ids(events)
                rounds += 1
                if live_done(events):
                    break
                assert len(ids(events)) == limit
                assert [e["code"] for e in of_type(events, "error")] == ["resume_truncated"]
        stored = [event_id for event_id, _ in await redis.xrange(keys.events_key(token))]
    assert got == stored, "every stored event once, in order, none skipped"
    assert rounds > 2


async def test_resume_flood_gets_too_many_resumes_and_the_socket_stays(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, resume_burst=3, resume_rate_per_s=0.01) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            await read_until(ws, count("done", 1))
            for _ in range(10):
                await ws.send_str(resume("0-0"))
            await ws.send_str(json.dumps({"type": "end"}))
            events = await read_until(
                ws, lambda ev: any(e.get("code") == "unknown_command" for e in ev)
            )
            errors = [e["code"] for e in of_type(events, "error")]
            assert errors.count("too_many_resumes") == 7, errors
            assert len(of_type(events, "done")) == 3, "three resumes replayed the reply"
            await ws.send_str("still here")
            await read_until(ws, count("done", 1))


async def away_while_the_stream_moves_on(
    parley: Parley, http: aiohttp.ClientSession, token: str
) -> str:
    """A client reads one reply and leaves; another socket of the session then talks
    until the event after the first one's cursor is trimmed away. The cursor, returned."""
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("before")
        cursor = ids(await read_until(ws, count("done", 1)))[-1]
    missed = await trim_past(http, parley.ws_url, parley.redis, token, cursor)
    events_maxlen = parley.server_settings.events_maxlen
    assert len(missed) > events_maxlen, "more than EVENTS_MAXLEN events written meanwhile"
    return cursor


def live_after(kept_ids: list[str], events: list[Event]) -> None:
    """The events after the replay are the live reply to "live", after every kept one."""
    assert live_done(events)
    assert all(stream_id_key(i) > stream_id_key(kept_ids[-1]) for i in ids(events))


async def test_a_cursor_older_than_the_events_kept_gets_a_gap_then_the_kept_then_live(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # EVENTS_MAXLEN small: a few replies are more than the stream keeps.
    async with running_parley(redis_url, redis, events_maxlen=5) as parley:
        token = await parley.create_session(http)
        cursor = await away_while_the_stream_moves_on(parley, http, token)
        stored = await kept(redis, token)
        assert stream_id_key(stored[0]) > stream_id_key(cursor)

        params = {"token": token, "after": cursor}
        async with http.ws_connect(parley.ws_url, params=params) as ws:
            replayed = await read_until(ws, lambda e: ids(e)[-1:] == stored[-1:])
            await ws.send_str("live")
            live = await read_until(ws, live_done)
    gap, *rest = replayed
    assert gap["type"] == "gap" and gap["oldest_event_id"] == stored[0], gap
    assert cursor in gap["detail"] and "refresh_token" in gap["detail"]
    assert ids(rest) == stored and all("event_id" in e for e in rest), "then the kept events"
    assert not of_type(live, "gap")
    live_after(stored, live)


async def test_a_resume_command_older_than_the_events_kept_gets_a_gap_first(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, events_maxlen=5, resume_max_events=1000) as parley:
        token = await parley.create_session(http)
        cursor = await away_while_the_stream_moves_on(parley, http, token)
        stored = await kept(redis, token)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str(resume(cursor))
            replayed = await read_until(ws, lambda e: ids(e)[-1:] == stored[-1:])
            await ws.send_str("live")
            live = await read_until(ws, live_done)
    assert replayed[0] == {
        "type": "gap",
        "oldest_event_id": stored[0],
        "detail": replayed[0]["detail"],
    }
    assert ids(replayed[1:]) == stored
    live_after(stored, live)


async def test_cursors_within_the_events_kept_get_no_gap(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """The control: the newest event, the oldest event kept itself, and the stream's
    start, each as ``?after=`` and as ``resume``, replay what follows them with no gap
    event; and a socket without a cursor gets none either."""
    async with running_parley(redis_url, redis, events_maxlen=5, resume_max_events=1000) as parley:
        token = await parley.create_session(http)
        await away_while_the_stream_moves_on(parley, http, token)
        for name, index in (("newest", -1), ("oldest", 0), ("start", None)):
            stored = await kept(redis, token)
            after = stored[index] if index is not None else "0-0"
            expected = stored[stored.index(after) + 1 :] if index is not None else stored
            async with http.ws_connect(
                parley.ws_url, params={"token": token, "after": after}
            ) as ws:
                await ws.send_str(resume(after))
                await ws.send_str(name)
                events = await read_until(ws, reply_done(name))
            assert not of_type(events, "gap"), name
            assert [i for i in ids(events) if i in stored] == expected + expected, name
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("fresh")
            events = await read_until(ws, reply_done("fresh"))
        assert not of_type(events, "gap")


class RecordingSocket:
    """The sending side of a WebSocket, recording what it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def test_a_resync_past_the_events_kept_gets_a_gap_too(redis: Redis[str]) -> None:
    """A socket whose queue overflowed catches up from its own cursor: if the stream moved
    on past it meanwhile, that is a gap as well."""
    token = str(uuid.uuid4())
    stream = keys.events_key(token)

    async def append(n: int) -> None:
        event = TokenEvent(message_id="m", content=str(n)).model_dump_json(exclude={"event_id"})
        await redis.xadd(stream, {"event": event}, maxlen=5, approximate=False)

    socket = RecordingSocket()
    relay = EventRelay(cast(WebSocket, socket), token, Store(redis, CommonSettings()))
    await append(0)
    await relay.replay("0")
    assert [e["content"] for e in socket.sent] == ["0"]
    for n in range(1, 10):
        await append(n)  # published while the socket's queue was full: missed live
    await relay.deliver(RESYNC)
    stored = await kept(redis, token)
    gap, *rest = socket.sent[1:]
    assert gap["type"] == "gap" and gap["oldest_event_id"] == stored[0]
    assert ids(rest) == stored and [e["content"] for e in rest] == ["5", "6", "7", "8", "9"]
