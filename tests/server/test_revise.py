"""Regenerate and edit: the last turn answered again, its earlier versions kept, once."""

from __future__ import annotations

from typing import Any

import aiohttp
from redis.asyncio import Redis

from protocol.wire import ChatMessage
from runtime.catalog import ModelOffer
from storage import keys
from storage.base import json_get_command, json_reply
from tests.support.events import Event, count, of_type, read_until
from tests.support.parley import Parley, running_parley


async def history(parley: Parley, http: aiohttp.ClientSession, token: str) -> list[dict[str, Any]]:
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 200, await r.text()
        messages: list[dict[str, Any]] = (await r.json())["messages"]
        return messages


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two messages are the same (a field left at its default may be absent)."""
    return ChatMessage.model_validate(a) == ChatMessage.model_validate(b)


def errors(events: list[Event]) -> list[str]:
    return [e["code"] for e in of_type(events, "error")]


async def answered(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    """Send ``text``; its ``done`` event's reply."""
    await ws.send_str(text)
    events = await read_until(ws, count("done", 1))
    (done,) = of_type(events, "done")
    reply: dict[str, Any] = done["reply"]
    return reply


async def test_regenerate_answers_again_and_keeps_the_old_reply_as_a_version(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            earlier = await answered(ws, "first")
            old = await answered(ws, "second")
            old_user = (await history(parley, http, token))[2]
            prompts = len(parley.prompts())
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("done", 1))
        assert events[0]["type"] == "revised"
        assert {e["type"] for e in events} <= {"revised", "token", "done"}
        (revised,) = of_type(events, "revised")
        (done,) = of_type(events, "done")
        assert revised["message_id"] == done["message_id"]
        assert revised["message"]["content"] == "second"
        # The event carries the version it kept, not the turn's every version.
        assert "versions" not in revised["message"]
        assert revised["version_count"] == 1
        version = revised["version"]
        assert (version["content"], version["timestamp"]) == ("second", old_user["timestamp"])
        assert same(version["reply"], old)
        new = done["reply"]
        assert new["id"] != old["id"]
        assert "".join(e["content"] for e in of_type(events, "token")) == new["content"]
        # The model was asked once more, without the reply being replaced.
        assert len(parley.prompts()) == prompts + 1
        prompt = parley.prompts()[-1]["messages"]
        assert prompt[-1] == {"role": "user", "content": "second"}
        assert [m["content"] for m in prompt if m["role"] == "assistant"] == [earlier["content"]]

        messages = await history(parley, http, token)
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "first"),
            ("assistant", messages[1]["content"]),
            ("user", "second"),
            ("assistant", new["content"]),
        ]
        assert messages[3]["id"] == new["id"]
        assert same(messages[2], {**revised["message"], "versions": [version]})
        assert "versions" not in messages[0]


async def test_edit_replaces_the_last_message_and_keeps_what_it_replaced(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            old = await answered(ws, "what is 2+3?")
            (message,) = [m for m in await history(parley, http, token) if m["role"] == "user"]
            await ws.send_json({"type": "edit", "message_id": message["id"], "content": "2+2?"})
            events = await read_until(ws, count("done", 1))
            # A second edit keeps both earlier versions, oldest first.
            await ws.send_json({"type": "edit", "message_id": message["id"], "content": "1+1?"})
            again = await read_until(ws, count("done", 1))
        (revised,) = of_type(events, "revised")
        assert revised["message"]["content"] == "2+2?"
        assert revised["message"]["timestamp"] >= message["timestamp"]
        assert "versions" not in revised["message"]
        version = revised["version"]
        assert (version["content"], version["timestamp"]) == ("what is 2+3?", message["timestamp"])
        assert same(version["reply"], old)
        # The second revision's event holds the second version only, numbered.
        (second,) = of_type(again, "revised")
        assert (second["version"]["content"], second["version_count"]) == ("2+2?", 2)
        (done,) = of_type(events, "done")
        assert done["reply"]["content"].startswith("Reply to: 2+2?")
        assert parley.prompts()[-1]["messages"][-1] == {"role": "user", "content": "1+1?"}

        messages = await history(parley, http, token)
        assert [(m["role"], m["content"][:13]) for m in messages] == [
            ("user", "1+1?"),
            ("assistant", "Reply to: 1+1"),
        ]
        versions = messages[0]["versions"]
        assert [(v["content"], v["reply"]["content"][:13]) for v in versions] == [
            ("what is 2+3?", "Reply to: wha"),
            ("2+2?", "Reply to: 2+2"),
        ]
        assert same(of_type(again, "done")[0]["reply"], messages[1])


async def test_refusals_have_clear_codes_and_change_nothing(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, max_message_versions=1) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("error", 1))
            assert errors(events) == ["not_last_message"]
            assert of_type(events, "error")[0]["message_id"] is None

            await answered(ws, "one")
            await answered(ws, "two")
            first, _, last, _ = await history(parley, http, token)
            refusals = [
                ({"type": "edit", "message_id": first["id"], "content": "x"}, "not_last_message"),
                ({"type": "edit", "message_id": last["id"], "content": "  "}, "empty_message"),
                (
                    {"type": "edit", "message_id": last["id"], "content": "x" * 4001},
                    "message_too_long",
                ),
                ({"type": "edit", "content": "x"}, "invalid_frame"),
            ]
            for command, code in refusals:
                await ws.send_json(command)
                events = await read_until(ws, count("error", 1))
                assert errors(events) == [code], command
            before = await history(parley, http, token)

            # While a reply is generated (or messages wait), nothing can be revised.
            parley.standin.tokens, parley.standin.delay_ms = 100, 20
            await ws.send_str("three")
            await read_until(ws, count("token", 1))
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("error", 1))
            assert errors(events) == ["reply_in_progress"]
            assert "revised" not in [e["type"] for e in events]
            await read_until(ws, count("done", 1), timeout_s=30)

            # The bound of versions: one earlier version, then too_many_versions.
            parley.standin.tokens, parley.standin.delay_ms = 6, 0
            await ws.send_json({"type": "regenerate"})
            await read_until(ws, count("done", 1))
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("error", 1))
            assert errors(events) == ["too_many_versions"]
        after = await history(parley, http, token)
        assert after[:4] == before
        assert len(after) == 6 and len(after[4]["versions"]) == 1


async def test_a_stopped_reply_regenerated_runs_to_its_end(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        # 100 tokens over 5 s: the stop lands mid-reply however busy the machine is.
        parley.standin.tokens, parley.standin.delay_ms = 100, 50
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("go on")
            await read_until(ws, count("token", 2))
            await ws.send_json({"type": "stop"})
            (stopped,) = of_type(await read_until(ws, count("done", 1)), "done")
            assert stopped["reply"]["stopped"] is True
            parley.standin.delay_ms = 0
            await ws.send_json({"type": "regenerate"})
            (done,) = of_type(await read_until(ws, count("done", 1)), "done")
        assert done["reply"]["stopped"] is False
        assert len(done["reply"]["content"].split()) == 100
        (user, reply) = await history(parley, http, token)
        assert user["versions"][0]["reply"]["stopped"] is True
        assert reply["id"] == done["reply"]["id"]


async def test_a_failed_reply_regenerated_keeps_no_empty_version(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            parley.standin.fail_next(400)
            await ws.send_str("hello")
            events = await read_until(ws, count("error", 1))
            assert errors(events) == ["llm_rejected"]
            await ws.send_json({"type": "regenerate"})
            events = await read_until(ws, count("done", 1))
        (revised,) = of_type(events, "revised")
        assert "versions" not in revised["message"]
        assert "version" not in revised and revised["version_count"] == 0
        (user, reply) = await history(parley, http, token)
        assert "versions" not in user
        assert reply["content"].startswith("Reply to: hello")


async def test_revised_turns_reach_every_socket_on_every_server_and_resume(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with (
        running_parley(redis_url, redis) as first,
        running_parley(redis_url, redis, consumer_name="second-worker") as second,
    ):
        token = await first.create_session(http)
        async with (
            http.ws_connect(first.ws_url, params={"token": token}) as one,
            http.ws_connect(second.ws_url, params={"token": token}) as two,
        ):
            await one.send_str("hi")
            (done,) = of_type(await read_until(one, count("done", 1)), "done")
            cursor = done["event_id"]
            await read_until(two, count("done", 1))
            await one.send_json({"type": "regenerate"})
            seen = await read_until(two, count("done", 1))
            mine = await read_until(one, count("done", 1))
        assert [e["type"] for e in seen] == [e["type"] for e in mine]
        assert seen[0]["type"] == "revised"
        # A socket that was away resumes after the first reply: it gets the revision,
        # then the new reply, exactly once each.
        async with http.ws_connect(
            second.ws_url, params={"token": token, "after": cursor}
        ) as three:
            replayed = await read_until(three, count("done", 1))
        assert [e["event_id"] for e in replayed] == [e["event_id"] for e in seen]
        messages = await history(first, http, token)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["id"] == of_type(seen, "done")[0]["reply"]["id"]


async def test_export_holds_the_versions(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            old = await answered(ws, "the question")
            (message, _) = await history(parley, http, token)
            await ws.send_json({"type": "edit", "message_id": message["id"], "content": "better"})
            await read_until(ws, count("done", 1))
        url = f"{parley.url}/session/export"
        async with http.get(url, params={"token": token, "format": "json"}) as r:
            exported = await r.json()
        assert exported["messages"][0]["versions"][0]["content"] == "the question"
        assert same(exported["messages"][0]["versions"][0]["reply"], old)
        async with http.get(url, params={"token": token, "format": "markdown"}) as r:
            text = await r.text()
        assert "### Earlier version 1: ada," in text
        # Titles run by default, and the title may quote either version ("Reply to:
        # Message: better"): the order asserted is the body's, below the title.
        body = text[text.index("\n") :]
        assert body.index("the question") < body.index(old["content"]) < body.index("better")


async def test_versions_live_beside_the_session_and_go_with_it(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await answered(ws, "first")
            await ws.send_json({"type": "regenerate"})
            await read_until(ws, count("done", 1))
        (document,) = json_reply(
            await redis.execute_command(*json_get_command(keys.session_key(token)))
        )
        assert all("versions" not in m for m in document["messages"])
        assert await redis.exists(keys.versions_key(token)) == 1
        assert (await history(parley, http, token))[0]["versions"]
        async with http.delete(f"{parley.url}/session", params={"token": token}) as r:
            assert r.status == 204
        assert await redis.exists(keys.versions_key(token)) == 0


async def test_a_session_at_its_bound_of_bytes_refuses_messages_and_revisions(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, max_session_bytes=3000) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            for n in range(10):  # about 1 KB a turn: the message, and a reply quoting it
                await ws.send_str(f"{n} " + "x" * 300)
                events = await read_until(
                    ws, lambda es: bool(of_type(es, "done") + of_type(es, "error"))
                )
                if of_type(events, "error"):
                    break
            (refusal,) = of_type(events, "error")
            assert refusal["code"] == "session_full"
            assert refusal["detail"].startswith("the conversation holds ")
            assert "bytes, and 3000 at most" in refusal["detail"]
            before = await history(parley, http, token)
            assert len(before) >= 4
            last = before[-2]["id"]
            for command in (
                {"type": "regenerate"},
                {"type": "edit", "message_id": last, "content": "y" * 300},
            ):
                await ws.send_json(command)
                events = await read_until(ws, count("error", 1))
                assert errors(events) == ["session_full"], command
                assert "revised" not in [e["type"] for e in events]
        assert await history(parley, http, token) == before
        assert await redis.exists(keys.versions_key(token)) == 0


async def test_regenerates_of_a_turn_are_bounded_even_when_every_reply_fails(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """A failed reply keeps no version, so the versions bound never stopped a turn
    regenerated again and again after failures: each asked the model once more."""
    # Two regenerates or edits a turn: the bound this test reaches.
    async with running_parley(redis_url, redis, max_attempts_per_turn=2) as parley:
        token = await parley.create_session(http)
        parley.standin.fail_next(400, count=3)  # refused by the model: not retried
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("one")
            assert errors(await read_until(ws, count("error", 1))) == ["llm_rejected"]
            for _ in range(2):
                await ws.send_json({"type": "regenerate"})
                events = await read_until(ws, count("error", 1))
                assert events[0]["type"] == "revised"
                assert errors(events) == ["llm_rejected"]
            await ws.send_json({"type": "regenerate"})
            (refusal,) = of_type(await read_until(ws, count("error", 1)), "error")
        assert refusal["code"] == "too_many_attempts" and refusal["message_id"] is None
        assert len(parley.standin.requests) == 3


async def test_an_edit_that_cannot_fit_the_models_context_is_refused(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # A model with a small context (64 tokens), as the catalog can say.
    small = ModelOffer(id="default", label="Small", context_tokens=64)
    async with running_parley(redis_url, redis, models=[small]) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await answered(ws, "hi")
            before = await history(parley, http, token)
            last = before[0]["id"]
            await ws.send_json({"type": "edit", "message_id": last, "content": "word " * 80})
            (refusal,) = of_type(await read_until(ws, count("error", 1)), "error")
        assert refusal["code"] == "message_too_long"
        assert "context of 64 tokens" in refusal["detail"]
        assert await history(parley, http, token) == before
