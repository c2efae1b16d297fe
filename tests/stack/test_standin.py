"""The stand-in model server: its OpenAI wire format, control endpoints and CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.standin import StandinModel, reply_text, reply_tokens
from worker.model.llm import LLMClient, LLMConfig, PromptMessage

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
async def standin() -> AsyncIterator[StandinModel]:
    async with StandinModel(tokens=5) as model:
        yield model


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(model: StandinModel, path: str) -> str:
    assert model.base_url is not None
    return model.base_url.removesuffix("/v1") + path


def test_reply_is_deterministic_and_keeps_the_prompt() -> None:
    assert reply_tokens("hi  there", 6) == ["Reply ", "to: ", "hi  ", "there ", "lorem ", "ipsum"]
    assert reply_text("hi", 3) == "Reply to: hi"
    long_prompt = " ".join(f"w{i}" for i in range(20))
    assert reply_text(long_prompt, 4) == "Reply to: " + long_prompt  # never cut
    assert len(reply_tokens("", 100)) == 100


async def test_stream_chunks(standin: StandinModel, http: aiohttp.ClientSession) -> None:
    async with http.post(url(standin, "/v1/chat/completions"), json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = (await r.read()).decode()

    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert contents == reply_tokens("ping", 5)
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert standin.completed == 1


async def test_non_stream_reply(standin: StandinModel, http: aiohttp.ClientSession) -> None:
    async with http.post(url(standin, "/v1/chat/completions"), json=CHAT) as r:
        assert r.status == 200
        body = await r.json()

    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": reply_text("ping", 5)}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert standin.requests == [CHAT]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        {**CHAT, "stream": "yes"},
        {"messages": CHAT["messages"]},
        "not json",
    ],
)
async def test_bad_body_is_a_400_openai_error(
    standin: StandinModel, http: aiohttp.ClientSession, body: object
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.post(url(standin, "/v1/chat/completions"), data=data) as r:
        assert r.status == 400
        error = (await r.json())["error"]

    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("invalid request")
    assert len(standin.requests) == 1  # recorded all the same


async def test_models_and_health(standin: StandinModel, http: aiohttp.ClientSession) -> None:
    async with http.get(url(standin, "/v1/models")) as r:
        assert (await r.json())["data"][0]["id"] == "standin"
    async with http.get(url(standin, "/health")) as r:
        assert r.status == 200


async def test_faults_settings_and_records_over_http(
    standin: StandinModel, http: aiohttp.ClientSession
) -> None:
    chat = url(standin, "/v1/chat/completions")
    fault = {"kind": "fail", "status": 503, "retry_after": 2}
    async with http.post(url(standin, "/_faults"), json=fault) as r:
        assert (await r.json())["faults_queued"] == 1
    async with http.post(url(standin, "/_faults"), json={"kind": "explode"}) as r:
        assert r.status == 400
    async with http.post(url(standin, "/_settings"), json={"tokens": 3}) as r:
        assert (await r.json())["tokens"] == 3

    async with http.post(chat, json=CHAT, headers={"X-Trace": "t1"}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "2"
        assert (await r.json())["error"]["type"] == "server_error"
    async with http.post(chat, json=CHAT) as r:
        assert (await r.json())["choices"][0]["message"]["content"] == reply_text("ping", 3)

    async with http.get(url(standin, "/_requests")) as r:
        assert await r.json() == [CHAT, CHAT]
    async with http.get(url(standin, "/_headers")) as r:
        assert (await r.json())[0]["X-Trace"] == "t1"
    async with http.post(url(standin, "/_reset")) as r:
        stats = await r.json()
    assert stats["requests"] == 0
    assert stats["completed"] == 0
    assert standin.requests == []


async def test_many_concurrent_streams(standin: StandinModel) -> None:
    standin.tokens = 20
    standin.delay_ms = 5
    assert standin.base_url is not None
    async with LLMClient(LLMConfig(base_url=standin.base_url, model="m")) as client:

        async def one(i: int) -> str:
            prompt = [PromptMessage(role="user", content=f"n{i}")]
            return "".join([d async for d in client.stream(prompt)])

        replies = await asyncio.gather(*(one(i) for i in range(300)))

    assert replies == [reply_text(f"n{i}", 20) for i in range(300)]
    assert standin.completed == 300
    assert standin.in_flight == 0


async def test_cli_serves_and_stops_on_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testkit.standin",
        "--port",
        "0",
        "--tokens",
        "3",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        base_url = line.rsplit(" ", 1)[-1].strip()
        async with http.post(base_url + "/chat/completions", json=CHAT) as r:
            assert (await r.json())["choices"][0]["message"]["content"] == reply_text("ping", 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
