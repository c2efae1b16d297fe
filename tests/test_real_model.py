"""End to end with the real embedded model: xllamacpp serving SmolLM2-135M-Instruct.

Through the whole pipeline (POST /token, WebSocket, worker, model) with Parley's default
system prompt, at temperature 0 so that the replies are the same on every run.

The 135M model cannot carry a fact from one turn to the next: to "My name is Ada." then
"What is my name?" it answers "My name is Elena, and I'm a creative writing
assistant...", although the second prompt holds the first turn. That memory is tested
with the stand-in model (tests/system/test_invariants.py), not here.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from stack.model import EmbeddedModel
from tests.support.events import count, of_type, read_until
from tests.support.parley import running_parley


async def ask(ws: aiohttp.ClientWebSocketResponse, text: str) -> list[dict[str, Any]]:
    """Send ``text``; return the events up to its ``done`` (or an ``error``)."""
    await ws.send_str(text)
    return await read_until(ws, lambda ev: count("done", 1)(ev) or count("error", 1)(ev), 120)


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_a_real_reply_streams_and_is_recorded(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession, embedded_model: EmbeddedModel
) -> None:
    async with running_parley(
        redis_url,
        redis,
        llm_base_url=embedded_model.base_url,
        llm_model=embedded_model.model,
        llm_max_tokens=48,
        llm_temperature=0.0,
    ) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            events = await ask(ws, "What is the capital of France?")
            assert not of_type(events, "error"), events
            events += await ask(ws, "And of Italy?")
        assert not of_type(events, "error"), events
        done = of_type(events, "done")
        assert len(done) == 2
        print("real model replies:", [d["reply"]["content"] for d in done])
        assert "Paris" in done[0]["reply"]["content"], "a fact the model knows"
        assert done[1]["reply"]["content"].strip(), "a reply with content"
        streamed = "".join(
            e["content"]
            for e in events
            if e["type"] == "token" and e["message_id"] == done[0]["message_id"]
        )
        assert streamed == done[0]["reply"]["content"]
        async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
            history = (await r.json())["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert [history[1]["content"], history[3]["content"]] == [
            d["reply"]["content"] for d in done
        ]
