"""Model tokens counted from the model's own usage (or estimated) and charged to quotas."""

from __future__ import annotations

import asyncio
import contextvars

import aiohttp
from redis.asyncio import Redis

from storage import keys
from storage.admission import digest
from testkit.standin import StandinModel
from tests.support.events import count, read_until
from tests.support.parley import running_parley
from tests.support.quota import client_used, session_used
from worker.memory import estimate_tokens
from worker.model.llm import LLMClient, LLMConfig, PromptMessage
from worker.model.response import track_usage

PROMPT = [
    PromptMessage(role="system", content="Be brief."),
    PromptMessage(role="user", content="hello world"),
]


async def _read(client: LLMClient) -> str:
    return "".join([d async for d in client.stream(PROMPT)])


async def test_usage_is_the_models_own_count_in_the_reading_task() -> None:
    async with StandinModel(tokens=8) as model:
        assert model.base_url is not None
        async with LLMClient(LLMConfig(base_url=model.base_url, model="m")) as client:
            usage = track_usage()
            # Read in a task of its own, as the worker does: the context carries it.
            await asyncio.create_task(_read(client))
            assert (usage.prompt_tokens, usage.completion_tokens) == (4, 8)
            assert usage.reported
            # Another context's usage is its own.
            other = contextvars.copy_context()
            other.run(track_usage)
            await _read(client)
            assert usage.completion_tokens == 16  # two replies read in this context


async def test_no_usage_when_the_api_reports_none() -> None:
    async with StandinModel(tokens=8) as model:
        assert model.base_url is not None
        model.report_usage = False
        async with LLMClient(LLMConfig(base_url=model.base_url, model="m")) as client:
            usage = track_usage()
            assert await _read(client)
            assert not usage.reported and usage.completion_tokens == 0


async def test_replies_are_charged_to_the_session_and_its_client(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # The replies' charges alone: a title's (charged too) would come at any time.
    async with running_parley(redis_url, redis, conversation_titles=False) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            await read_until(ws, count("done", 1))
            parley.standin.report_usage = False  # the next one is estimated
            await ws.send_str("again")
            events = await read_until(ws, count("done", 1))
        reply = next(e for e in events if e["type"] == "done")["reply"]["content"]
        prompt_1 = parley.prompts()[0]["messages"]
        first = sum(len(m["content"].split()) for m in prompt_1) + 6  # 6-token stand-in
        prompt_2 = parley.prompts()[1]["messages"]
        second = sum(estimate_tokens(m["content"]) for m in prompt_2) + estimate_tokens(reply)
        session = await session_used(redis, token)
        client = await client_used(redis, digest("127.0.0.1"))
        assert session == client == first + second


async def test_each_message_carries_its_clients_digest_to_the_worker(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    # The client travels with the message, in its stream entry, never as an address:
    # the worker charges the reply to it without a lookup of its own.
    async with running_parley(redis_url, redis) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            await read_until(ws, count("done", 1))
        [(_, fields)] = await redis.xrange(keys.message_stream_of(token))
        assert fields["client"] == digest("127.0.0.1")
        assert "127.0.0.1" not in str(fields)
        assert await parley.worker.store.sessions.client_of(token) == digest("127.0.0.1")


def _estimate(request: dict[str, object]) -> int:
    messages = request["messages"]
    assert isinstance(messages, list)
    return sum(estimate_tokens(m["content"]) for m in messages)


async def test_failed_and_retried_requests_are_charged(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """Every request the model answered is paid for: a reply that failed after its
    retries (503, each request's prompt estimated), and one that succeeded after a
    retry (the 503 estimated, then the model's own usage)."""
    # Retries at once: the test waits on its replies, not on the default backoff.
    async with running_parley(redis_url, redis, llm_backoff_base_s=0.001) as parley:
        token = await parley.create_session(http)
        tries = parley.worker_settings.llm_max_retries + 1
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            parley.standin.fail_next(503, count=tries)
            await ws.send_str("this one fails")
            failed = await read_until(ws, count("error", 1))
            assert [e["code"] for e in failed if e["type"] == "error"] == ["llm_unavailable"]
            parley.standin.fail_next(503)
            await ws.send_str("this one is retried")
            await read_until(ws, count("done", 1))
        requests = parley.standin.requests
        assert len(requests) == tries + 2
        # The failed reply: each of its requests' prompts, estimated.
        expected = sum(_estimate(r) for r in requests[:tries])
        # The retried one: its 503 estimated, then the stand-in's usage (a token a word
        # of the prompt, 6 deltas).
        expected += _estimate(requests[tries])
        last = requests[tries + 1]["messages"]
        assert isinstance(last, list)
        expected += sum(len(m["content"].split()) for m in last) + 6
        session = await session_used(redis, token)
        client = await client_used(redis, digest("127.0.0.1"))
        assert session == client == expected
