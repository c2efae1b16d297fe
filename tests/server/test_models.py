"""A session's model and system prompt: offered by GET /models, chosen at creation or
later, used by the worker, shown in history and export."""

from __future__ import annotations

from typing import Any

import aiohttp
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from runtime.config import DEFAULT_SYSTEM_PROMPT
from storage.store import Store
from tests.support.events import of_type, read_until
from tests.support.parley import Parley, running_parley

CATALOG = [
    ModelOffer(id="small", label="Small", description="fast"),
    ModelOffer(id="large", label="Large", api_model="org/large-instruct"),
]


async def start(
    parley: Parley, http: aiohttp.ClientSession, body: dict[str, Any] | None = None
) -> aiohttp.ClientResponse:
    return await http.post(f"{parley.url}/token", params={"name": "ada"}, json=body)


async def reply_to(parley: Parley, http: aiohttp.ClientSession, token: str, text: str) -> Any:
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str(text)
        events = await read_until(ws, lambda e: bool(of_type(e, "done") or of_type(e, "error")))
    return events[-1]


async def test_models_are_listed_default_first(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with (
        running_parley(redis_url, redis, models=CATALOG) as parley,
        http.get(f"{parley.url}/models") as r,
    ):
        assert r.status == 200
        body = await r.json()
    assert body == {
        "models": [
            {
                "id": "small",
                "label": "Small",
                "description": "fast",
                "default": True,
                "available": True,
            },
            {
                "id": "large",
                "label": "Large",
                "description": "",
                "default": False,
                "available": True,
            },
        ]
    }


async def test_a_session_answers_with_its_model_and_system_prompt_and_can_change_them(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, models=CATALOG) as parley:
        async with await start(
            parley, http, {"model": "large", "system_prompt": "  Be terse.  "}
        ) as r:
            assert r.status == 200, await r.text()
            view = await r.json()
        token = view["token"]
        assert (view["model"], view["system_prompt"]) == ("large", "Be terse.")

        done = await reply_to(parley, http, token, "hello")
        assert done["reply"]["model"] == "large"
        request = parley.prompts()[-1]
        assert request["model"] == "org/large-instruct"
        assert request["messages"][0] == {"role": "system", "content": "Be terse."}

        # Changed later: the next reply uses the new choice, the old reply keeps its model.
        url = f"{parley.url}/session"
        body = {"model": "small", "system_prompt": ""}
        async with http.patch(url, params={"token": token}, json=body) as r:
            assert r.status == 204, await r.text()
        done = await reply_to(parley, http, token, "again")
        assert done["reply"]["model"] == "small"
        request = parley.prompts()[-1]
        assert request["model"] == "standin"  # the worker's own LLM_MODEL
        assert request["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}

        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            history = await r.json()
        assert history["model"] == "small" and "system_prompt" not in history
        assert [m.get("model") for m in history["messages"]] == [None, "large", None, "small"]
        async with http.get(f"{url}/export", params={"token": token}) as r:
            exported = await r.json()
        assert (exported["model"], exported["system_prompt"]) == ("small", "")
        assert exported["messages"][1]["model"] == "large"


async def test_a_session_without_a_choice_is_answered_as_before(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, system_prompt="Deployment prompt.") as parley:
        async with await start(parley, http) as r:
            view = await r.json()
        assert set(view) == {"token", "name", "session_start", "messages"}
        done = await reply_to(parley, http, view["token"], "hi")
        assert done["reply"]["model"] == "default"
        request = parley.prompts()[-1]
        assert request["messages"][0] == {"role": "system", "content": "Deployment prompt."}
        assert request["model"] == "standin"


async def test_bad_choices_are_refused_clearly(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, max_system_prompt_chars=20
    ) as parley:
        refusals = [
            ({"model": "huge"}, 400, "unknown model 'huge'"),
            ({"model": ""}, 400, "unknown model"),
            ({"system_prompt": "x" * 21}, 400, "at most 20 characters"),
            ({"temperature": 2}, 422, "temperature"),
        ]
        for body, status, detail in refusals:
            async with await start(parley, http, body) as r:
                assert r.status == status, body
                assert detail in await r.text(), body
        async with await start(parley, http) as r:
            token = (await r.json())["token"]
        url = f"{parley.url}/session"
        for body, status, detail in [*refusals, ({}, 422, "at least one of")]:
            async with http.patch(url, params={"token": token}, json=body) as r:
                assert r.status == status, body
                assert detail in await r.text(), body
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            assert "model" not in await r.json()

    async with (
        running_parley(redis_url, redis, max_system_prompt_chars=0) as parley,
        await start(parley, http, {"system_prompt": "mine"}) as r,
    ):
        assert r.status == 400
        assert "does not take a session's own system prompt" in await r.text()


async def test_a_model_the_worker_does_not_offer_fails_the_reply_clearly(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, models=CATALOG) as parley:
        async with await start(parley, http, {"model": "large"}) as r:
            token = (await r.json())["token"]
        # The deployment dropped the model from its catalog since.
        await Store(redis, parley.server_settings).owners.update_session(
            token, {"model": "retired"}
        )
        error = await reply_to(parley, http, token, "hello")
        assert error["type"] == "error"
        assert error["code"] == "model_unavailable"
        assert "choose another" in error["detail"]
        assert not parley.standin.requests
        # The session goes on once it chooses an offered model.
        async with http.patch(
            f"{parley.url}/session", params={"token": token}, json={"model": "small"}
        ) as r:
            assert r.status == 204
        done = await reply_to(parley, http, token, "hello again")
        assert done["type"] == "done"
