"""WS /chat: the full path, every bad input, resume, expiry; against real Redis."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from redis.asyncio import Redis

from storage import keys
from testkit.standin import reply_text
from tests.support.events import count, of_type, read_until
from tests.support.parley import UNKNOWN_TOKEN, Parley, running_parley


async def test_reply_streams_then_is_recorded(parley: Parley, http: aiohttp.ClientSession) -> None:
    parley.standin.tokens = 12
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str(json.dumps({"type": "message", "content": "first"}))
        await ws.send_str("second, as plain text")  # Postman users type plain text
        events = await read_until(ws, count("done", 2))
    queued, done = of_type(events, "queued"), of_type(events, "done")
    assert [q["message"]["content"] for q in queued] == ["first", "second, as plain text"]
    assert [d["message_id"] for d in done] == [q["message_id"] for q in queued]
    for q, d in zip(queued, done, strict=True):
        tokens = [e for e in events if e["type"] == "token" and e["message_id"] == q["message_id"]]
        assert tokens, "the reply streams in as token events"
        assert "".join(t["content"] for t in tokens) == d["reply"]["content"]
        assert d["reply"]["role"] == "assistant"
        assert all("event_id" in e for e in [*tokens, d])
    # Each event of a reply comes after the user message's queued event.
    assert events.index(queued[0]) < events.index(done[0])

    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        history = (await r.json())["messages"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "first"),
        ("assistant", done[0]["reply"]["content"]),
        ("user", "second, as plain text"),
        ("assistant", done[1]["reply"]["content"]),
    ]
    assert [m["id"] for m in history] == [
        queued[0]["message_id"], done[0]["reply"]["id"],
        queued[1]["message_id"], done[1]["reply"]["id"],
    ]  # fmt: skip

    # The prompt of message 2 holds message 1 and its reply, then message 2 itself.
    prompts = [r["messages"] for r in parley.prompts()]
    assert len(prompts) == 2
    assert prompts[0][0]["role"] == "system"
    assert [(m["role"], m["content"]) for m in prompts[1][1:]] == [
        ("user", "first"),
        ("assistant", done[0]["reply"]["content"]),
        ("user", "second, as plain text"),
    ]
    assert all("second" not in m["content"] for m in prompts[0])


async def test_replies_to_messages_sent_back_to_back_come_in_order(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    parley.standin.delay_ms = 2
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for n in range(6):
            await ws.send_str(f"message {n}")
        events = await read_until(ws, count("done", 6), timeout_s=30)
    done = of_type(events, "done")
    assert [d["reply"]["content"] for d in done] == [
        reply_text(f"message {n}", parley.standin.tokens) for n in range(6)
    ]
    for k, request in enumerate(parley.prompts()):
        contents = [m["content"] for m in request["messages"]]
        assert contents[-1] == f"message {k}"
        assert not any(f"message {later}" in contents for later in range(k + 1, 6))


@pytest.mark.parametrize(
    "token", [None, "", "not-a-uuid", UNKNOWN_TOKEN, "00000000-0000-0000-0000-000000000000"]
)
async def test_bad_token_is_refused_at_the_handshake(
    parley: Parley, http: aiohttp.ClientSession, token: str | None
) -> None:
    params = {} if token is None else {"token": token}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(parley.ws_url, params=params):
            pass
    assert refused.value.status == 403
    # The server goes on serving others.
    async with http.get(f"{parley.url}/healthz") as r:
        assert r.status == 200


async def test_bad_frames_get_errors_and_the_socket_stays_open(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    limit = parley.server_settings.max_message_chars
    cases = [
        (lambda ws: ws.send_str(""), "empty_message"),
        (lambda ws: ws.send_str("   \n\t "), "empty_message"),
        (lambda ws: ws.send_str(json.dumps({"type": "message", "content": ""})), "empty_message"),
        (lambda ws: ws.send_str("x" * (limit + 1)), "message_too_long"),
        (lambda ws: ws.send_bytes(b"\x00\x01binary"), "invalid_frame"),
        (lambda ws: ws.send_str(json.dumps({"type": "dance"})), "unknown_command"),
        (lambda ws: ws.send_str(json.dumps({"type": "message"})), "invalid_frame"),
        (lambda ws: ws.send_str(json.dumps({"type": "message", "content": 5})), "invalid_frame"),
        (lambda ws: ws.send_str(json.dumps({"type": "resume", "after": "soon"})), "invalid_frame"),
    ]
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for send, code in cases:
            await send(ws)
            (error,) = await read_until(ws, count("error", 1))
            assert error["code"] == code, error
            assert error["detail"] and error["message_id"] is None
        # Still open and serving: a message of exactly the limit is accepted.
        await ws.send_str("y" * limit)
        events = await read_until(ws, count("done", 1))
    assert of_type(events, "queued")[0]["message"]["content"] == "y" * limit
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert [m["role"] for m in (await r.json())["messages"]] == ["user", "assistant"]


async def test_json_without_a_type_is_plain_content(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for text in ['{"content": "hi"}', "[1, 2]", "42", "{not json"]:
            await ws.send_str(text)
        events = await read_until(ws, count("done", 4))
    assert [q["message"]["content"] for q in of_type(events, "queued")] == [
        '{"content": "hi"}', "[1, 2]", "42", "{not json"
    ]  # fmt: skip


async def test_frame_over_the_size_limit_closes_only_that_socket(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, ws_max_frame_bytes=10_000) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("z" * 20_000)
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1009  # message too big
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("still here")
            await read_until(ws, count("done", 1))


async def test_too_many_pending_messages(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, max_pending_messages=2) as parley:
        parley.standin.ttft_ms = 300
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            for n in range(3):
                await ws.send_str(f"m{n}")
            events = await read_until(ws, lambda ev: count("done", 2)(ev) and count("error", 1)(ev))
        assert [e["code"] for e in of_type(events, "error")] == ["too_many_pending"]
        assert len(of_type(events, "queued")) == 2


async def test_session_expiring_while_connected_closes_with_1008(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, session_ttl_seconds=2) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")  # activity renews the TTL; then none for 2 s
            await read_until(ws, count("done", 1))
            (error,) = await read_until(ws, count("error", 1), timeout_s=10)
            assert error["code"] == "session_expired"
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1008
        assert await redis.exists(keys.session_key(token)) == 0


async def test_message_after_expiry_gets_session_expired(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await parley.redis.delete(keys.session_key(token))
        await ws.send_str("anyone there?")
        # The message and the expiry watch may both see it: one or two errors, then 1008.
        errors = []
        async with asyncio.timeout(10):
            while (message := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                errors.append(json.loads(message.data))
        assert errors and {e["code"] for e in errors} == {"session_expired"}
        assert ws.close_code == 1008


async def test_resume_after_an_event_id_gets_the_rest_without_duplicates(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    parley.standin.tokens = 30
    parley.standin.delay_ms = 10
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("tell me a story")
        first = await read_until(ws, count("token", 2))
    last_seen = of_type(first, "token")[-1]["event_id"]
    await asyncio.sleep(0.05)  # the reply goes on while the client is away
    async with http.ws_connect(parley.ws_url, params={"token": token, "after": last_seen}) as ws:
        rest = await read_until(ws, count("done", 1))
    text = "".join(e["content"] for e in of_type(first, "token") + of_type(rest, "token"))
    assert text == of_type(rest, "done")[0]["reply"]["content"]
    ids = [e["event_id"] for e in of_type(first, "token") + rest]
    assert len(ids) == len(set(ids)), "no event twice"

    # The resume command does the same on an open socket.
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str(json.dumps({"type": "resume", "after": last_seen}))
        again = await read_until(ws, count("done", 1))
    assert [e["event_id"] for e in again] == [e["event_id"] for e in rest]


async def test_resume_mid_reply_on_another_server_process(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with (
        running_parley(redis_url, redis) as first,
        running_parley(redis_url, redis) as second,
    ):
        for model in (first.standin, second.standin):
            model.tokens, model.delay_ms = 40, 20
        token = await first.create_session(http)
        async with http.ws_connect(first.ws_url, params={"token": token}) as ws:
            await ws.send_str("tell me a story")
            seen = await read_until(ws, count("token", 2))
        # Lost mid-reply; the client reconnects to the other server and resumes from its
        # cursor (a `resume` sent after connecting races the live events: see the README).
        last_seen = of_type(seen, "token")[-1]["event_id"]
        async with http.ws_connect(
            second.ws_url, params={"token": token, "after": last_seen}
        ) as ws:
            rest = await read_until(ws, count("done", 1))
            assert of_type(rest, "token"), "the reply was still streaming"
            # Then live events: the next reply arrives on the same socket.
            await ws.send_str("and then?")
            rest += await read_until(ws, count("done", 1))
    tokens = of_type(seen, "token") + of_type(rest, "token")
    ids = [e["event_id"] for e in seen + rest if "event_id" in e]
    assert len(ids) == len(set(ids)), "no event twice"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))), "in order"
    first_done, second_done = of_type(rest, "done")
    first_tokens = [e for e in tokens if e["message_id"] == first_done["message_id"]]
    assert "".join(e["content"] for e in first_tokens) == first_done["reply"]["content"]
    assert second_done["reply"]["content"].startswith("Reply to: and then?")


async def test_two_sockets_of_one_session_both_see_the_reply(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    other = await parley.create_session(http, "bob")
    async with (
        http.ws_connect(parley.ws_url, params={"token": token}) as tab1,
        http.ws_connect(parley.ws_url, params={"token": token}) as tab2,
        http.ws_connect(parley.ws_url, params={"token": other}) as bob,
    ):
        await tab2.send_str("from tab two")
        one = await read_until(tab1, count("done", 1))
        two = await read_until(tab2, count("done", 1))
        assert of_type(one, "done") == of_type(two, "done")
        # Either tab can send: the other sees the reply stream too.
        await tab1.send_str("from tab one")
        one_more = await read_until(tab1, count("done", 1))
        two_more = await read_until(tab2, count("done", 1))
        assert of_type(one_more, "token") == of_type(two_more, "token")
        assert of_type(two_more, "done")[0]["reply"]["content"].startswith("Reply to: from tab one")
        await bob.send_str("bob here")
        bobs = await read_until(bob, count("done", 1))
    assert of_type(bobs, "done")[0]["reply"]["content"].startswith("Reply to: bob here")
    assert all(e["message_id"] != of_type(bobs, "done")[0]["message_id"] for e in one + two)


async def test_malformed_after_is_reported_and_live_events_still_flow(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token, "after": "yesterday"}) as ws:
        (error,) = await read_until(ws, count("error", 1))
        assert error["code"] == "invalid_frame" and "after" in error["detail"]
        await ws.send_str("hello")
        await read_until(ws, count("done", 1))
