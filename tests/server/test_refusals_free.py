"""A refusal spends nothing: a message, regenerate, edit or socket refused for any reason
gives its admission back, so the budget counts only what was accepted."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from storage.admission import limit_key
from tests.support.events import Event, count, of_type, read_until
from tests.support.parley import Parley, running_parley
from tests.support.quota import messages_counting


async def spent(redis: Redis[str], limit: str, subject: str) -> int:
    """Admissions counting now in ``limit``'s window of ``subject`` (a session's
    messages: in its document)."""
    if limit == "messages":
        return await messages_counting(redis, subject)
    return int(await redis.zcard(limit_key(limit, subject)))


async def settles_at(redis: Redis[str], limit: str, subject: str, expected: int) -> int:
    """``spent`` once it is ``expected`` (a server gives an admission back after it has
    answered), or as it stands after 5 s."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while await spent(redis, limit, subject) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    return await spent(redis, limit, subject)


async def refused(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, str]) -> str:
    """Send ``frame``; the code of the error it got."""
    await ws.send_json(frame)
    events: list[Event] = await read_until(ws, count("error", 1))
    (error,) = of_type(events, "error")
    return str(error["code"])


async def test_refused_regenerates_leave_the_message_budget_as_it_was(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """As seen: three regenerates refused while a reply was written spent the budget,
    and the next messages got ``too_many_requests``."""
    # Two messages a window: the budget this test spends on purpose.
    async with running_parley(redis_url, redis, rate_messages_per_session=2) as parley:
        token = await parley.create_session(http)
        parley.standin.hang_next()  # the first reply stays in progress
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("first")
            await read_until(ws, count("queued", 1))
            for _ in range(3):
                assert await refused(ws, {"type": "regenerate"}) == "reply_in_progress"
            assert await spent(redis, "messages", token) == 1
            await ws.send_str("second")
            events = await read_until(ws, lambda es: bool(of_type(es, "queued")) or bool(es))
        assert [e["type"] for e in events] == ["queued"]
        assert await spent(redis, "messages", token) == 2


async def _each_refusal(parley: Parley, http: aiohttp.ClientSession, redis: Redis[str]) -> None:
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        # Nothing to regenerate or edit yet.
        assert await refused(ws, {"type": "regenerate"}) == "not_last_message"
        await ws.send_str("one")
        await read_until(ws, count("done", 1))
        assert await spent(redis, "messages", token) == 1
        edit = {"type": "edit", "message_id": "not-the-last", "content": "x"}
        assert await refused(ws, edit) == "not_last_message"
        # The session holds one message, its most (MAX_SESSION_MESSAGES=1).
        assert await refused(ws, {"type": "message", "content": "two"}) == "session_full"
        assert await spent(redis, "messages", token) == 1
        await ws.send_json({"type": "regenerate"})
        await read_until(ws, count("done", 1))
        # One earlier version kept, the most (MAX_MESSAGE_VERSIONS=1).
        assert await refused(ws, {"type": "regenerate"}) == "too_many_versions"
        assert await spent(redis, "messages", token) == 2


async def test_every_refusal_of_the_store_gives_the_admission_back(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # Small bounds, so each refusal can be reached in a few frames.
    async with running_parley(
        redis_url, redis, max_session_messages=1, max_message_versions=1
    ) as parley:
        await _each_refusal(parley, http, redis)


async def test_too_many_pending_and_overloaded_give_the_admission_back(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # One message may wait; the partition's backlog holds two (so a second session hits it).
    async with running_parley(redis_url, redis, max_pending_messages=1, max_backlog=1) as parley:
        token = await parley.create_session(http)
        parley.standin.hang_next()
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("one")
            await read_until(ws, count("queued", 1))
            assert await refused(ws, {"type": "message", "content": "two"}) in {
                "too_many_pending",
                "overloaded",
            }
            assert await spent(redis, "messages", token) == 1


async def test_a_model_no_worker_serves_gives_the_admission_back(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        # The pool of the session's model is gone (its worker seen long ago).
        await redis.delete(*[k async for k in redis.scan_iter("parley:pool:*")])
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            assert await refused(ws, {"type": "message", "content": "x"}) == "model_unavailable"
        assert await spent(redis, "messages", token) == 0


async def test_a_refused_socket_gives_its_open_back(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # Two opens a window and one socket at once from an address: what this test spends.
    async with running_parley(
        redis_url, redis, rate_socket_opens_per_client=2, max_sockets_per_client=1
    ) as parley:
        token = await parley.create_session(http)
        address = "127.0.0.1"
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            assert await spent(redis, "socket_opens", address) == 1
            for _ in range(3):  # refused by the open-sockets cap: given back
                async with http.ws_connect(parley.ws_url, params={"token": token}) as extra:
                    message = await extra.receive_json()
                    assert message["code"] == "too_many_requests"
                    assert "open at once" in message["detail"]
            assert await spent(redis, "socket_opens", address) == 1
            await ws.close()
        # A socket with a bad token is refused at the handshake: given back too.
        bad = "00000000-0000-4000-8000-000000000000"
        try:
            async with http.ws_connect(parley.ws_url, params={"token": bad}):
                pass
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 403
        assert await settles_at(redis, "socket_opens", address, 1) == 1
        assert await settles_at(redis, "sockets", address, 0) == 0  # the first one closed
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("still admitted")
            await read_until(ws, count("done", 1))
        assert await spent(redis, "socket_opens", address) == 2


async def test_a_message_that_cannot_fit_the_models_context_is_refused_at_admission(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # A model with a small context (64 tokens), as the catalog can say.
    small = ModelOffer(id="default", label="Small", context_tokens=64)
    async with running_parley(redis_url, redis, models=[small]) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            # 400 bytes: at least 100 tokens by admission's count, with the system prompt.
            long = "word " * 80
            await ws.send_json({"type": "message", "content": long})
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
            assert error["code"] == "message_too_long"
            assert "context of 64 tokens" in error["detail"]
            assert await spent(redis, "messages", token) == 0
            await ws.send_str("a short one fits")
            await read_until(ws, count("done", 1))
        assert len(parley.standin.requests) == 1  # the long one never reached the model
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            contents = [m["content"] for m in (await r.json())["messages"]]
        assert long not in contents
        # A session's own system prompt counts in place of the deployment's.
        body = {"system_prompt": "Answer as a pirate would. " * 12}
        async with http.post(f"{parley.url}/token", params={"name": "b"}, json=body) as r:
            assert r.status == 200, await r.text()
            own = (await r.json())["token"]
        async with http.ws_connect(parley.ws_url, params={"token": own}) as ws:
            await ws.send_str("hi")
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
            assert error["code"] == "message_too_long"


async def test_a_refused_new_session_or_owner_is_given_back(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """A ``POST /token`` refused for its name, owner or model (400, 422) spends none of
    the address's sessions, given back before the answer is sent."""
    async with running_parley(
        redis_url, redis, rate_owners_per_client=1, rate_sessions_per_client=1
    ) as parley:
        url = parley.url
        refusals = [
            ({"name": "  "}, None, 400),  # a blank name
            ({}, None, 422),  # no name
            ({"name": "ada", "owner": "not-an-owner"}, None, 400),
            ({"name": "ada"}, {"model": "no-such-model"}, 400),
        ]
        for params, body, code in refusals:
            async with http.post(f"{url}/token", params=params, json=body) as r:
                assert r.status == code, await r.text()
            assert await spent(redis, "sessions", "127.0.0.1") == 0
        async with http.post(f"{url}/owner") as r:
            owner = (await r.json())["owner"]
        async with http.post(f"{url}/token", params={"name": "ada", "owner": owner}) as r:
            assert r.status == 200, await r.text()  # the one session of the window
        assert await spent(redis, "sessions", "127.0.0.1") == 1
        async with http.post(f"{url}/token", params={"name": "ada"}) as r:
            assert r.status == 429
