"""Rolling summary memory and the too-long retry, through a real server, worker, Redis and
the stand-in model.

The stand-in answers "Reply to: <the last user message> ..."; asked for a summary, it
echoes the summary request, which holds the turns being folded: so a fact the user
stated is in the summary exactly as often as its turn was folded into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from storage.keys import SUMMARY_GROUP, SUMMARY_STREAM, TITLE_GROUP, TITLE_STREAM
from storage.models import Session, SummaryRecord
from storage.scripts import SummaryStatus
from storage.summaries import Summaries
from testkit.standin import StandinModel
from tests.support.events import Event, count, of_type, read_until
from tests.support.parley import Parley, running_parley
from worker import jobs as jobs_module
from worker.config import WorkerSettings
from worker.memory import SUMMARY_HEADING
from worker.model.llm import LLMClient, LLMConfig
from worker.summary import INSTRUCTION, Summarizer

FACT = "my secret number is 4242"
#: Times the fact is in a summary that folded its turn once: the message, and the
#: stand-in's reply that repeats it.
ONCE = 2
#: A small window: the prompt holds 2 turns, so the fact's turn leaves it quickly.
SMALL_WINDOW: dict[str, Any] = {
    "memory_max_messages": 4,
    "memory_summary_trigger_tokens": 10_000,  # by messages only
    "memory_summary_max_tokens": 400,
}


async def chat(parley: Parley, http: aiohttp.ClientSession, token: str, *texts: str) -> list[Event]:
    """Send each text once the previous one is answered; every event received."""
    events: list[Event] = []
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        for text in texts:
            await ws.send_str(text)
            events += await read_until(ws, lambda ev: count("done", 1)(ev) or count("error", 1)(ev))
            assert not of_type(events, "error"), events
    return events


async def jobs_done(
    parley: Parley, stream: str = SUMMARY_STREAM, name: str = SUMMARY_GROUP
) -> None:
    """Return once the workers have taken and finished every job of ``stream`` (its
    group ``name``; default: the summaries)."""
    async with asyncio.timeout(20):
        while True:
            groups = await parley.redis.xinfo_groups(stream)
            group = next((g for g in groups if g["name"] == name), None)
            if group and group["pending"] == 0 and group["lag"] == 0:
                return
            await asyncio.sleep(0.05)


async def session_of(parley: Parley, token: str) -> Session:
    return await parley.worker.store.sessions.get_session(token, touch=False)


def reply_prompts(standin: StandinModel) -> list[list[dict[str, str]]]:
    """The prompts of the replies the stand-in was asked for (not the summaries)."""
    return [
        r["messages"]
        for r in standin.requests
        if not (r["messages"][0]["role"] == "system" and r["messages"][0]["content"] == INSTRUCTION)
    ]


def summary_requests(standin: StandinModel) -> list[list[dict[str, str]]]:
    return [r["messages"] for r in standin.requests if r["messages"][0]["content"] == INSTRUCTION]


@pytest.fixture
async def summarizing(redis_url: str, redis: Redis[str]) -> AsyncIterator[Parley]:
    async with running_parley(redis_url, redis, memory_summary=True, **SMALL_WINDOW) as parley:
        yield parley


async def test_a_fact_that_left_the_window_is_still_in_the_prompt(
    summarizing: Parley, http: aiohttp.ClientSession
) -> None:
    parley = summarizing
    token = await parley.create_session(http)
    await chat(parley, http, token, FACT, *(f"question {n}" for n in range(2, 7)))
    await jobs_done(parley)
    await chat(parley, http, token, "what is my secret number?")
    session = await session_of(parley, token)
    assert session.summary is not None and 1 <= session.summary.seq < 6
    prompt = reply_prompts(parley.standin)[-1]
    # The fact's turn left the window (2 turns), but the summary holds it, after the
    # system prompt; the turns in the prompt are exactly those after the summary.
    system = prompt[0]
    assert system["role"] == "system" and f"\n\n{SUMMARY_HEADING}\n" in system["content"]
    assert "4242" in system["content"]
    assert all("4242" not in m["content"] for m in prompt[1:])
    users = [m["content"] for m in prompt[1:] if m["role"] == "user"]
    after = [f"question {n}" for n in range(session.summary.seq + 1, 7)]
    assert users == [*after, "what is my secret number?"]
    # Each turn was folded once.
    assert session.summary.text.count("4242") == ONCE
    assert summary_requests(parley.standin), "the summary was asked of the model"


async def test_without_summaries_the_fact_is_gone(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, memory_summary=False, **SMALL_WINDOW) as parley:
        token = await parley.create_session(http)
        await chat(parley, http, token, FACT, *(f"question {n}" for n in range(2, 7)))
        await chat(parley, http, token, "what is my secret number?")
        prompt = reply_prompts(parley.standin)[-1]
        assert all("4242" not in m["content"] for m in prompt)
        assert (await session_of(parley, token)).summary is None
        assert not summary_requests(parley.standin)


@pytest.fixture
async def quiet(redis_url: str, redis: Redis[str]) -> AsyncIterator[Parley]:
    """A stack whose worker makes no summaries: the test runs its own summarizers."""
    async with running_parley(redis_url, redis, memory_summary=False, **SMALL_WINDOW) as parley:
        yield parley


def summarizer(parley: Parley, llm: LLMClient, consumer: str) -> Summarizer:
    settings = WorkerSettings(**{**parley.worker_settings.model_dump(), "memory_summary": True})
    store, model = parley.worker.store, settings.default_model
    return Summarizer(settings, store, llm, model, consumer, asyncio.Event())


async def test_two_workers_folding_the_same_turns_store_one_summary(
    quiet: Parley, http: aiohttp.ClientSession
) -> None:
    parley = quiet
    token = await parley.create_session(http)
    await chat(parley, http, token, FACT, *(f"question {n}" for n in range(2, 7)))
    parley.standin.ttft_ms = 200  # both summarizers read the session before either stores
    base_url = parley.standin.base_url
    assert base_url is not None
    async with (
        LLMClient(LLMConfig(base_url=base_url, model="standin")) as one,
        LLMClient(LLMConfig(base_url=base_url, model="standin")) as two,
    ):
        statuses = await asyncio.gather(
            summarizer(parley, one, "w1").summarize(token),
            summarizer(parley, two, "w2").summarize(token),
        )
        assert sorted(s for s in statuses if s is not None) == [
            SummaryStatus.STORED,
            SummaryStatus.STALE,
        ]
        first = (await session_of(parley, token)).summary
        assert first is not None and first.text.count("4242") == ONCE
        # The job again (retried after a crash): nothing is due, nothing changes.
        assert await summarizer(parley, one, "w1").summarize(token) is None
        assert (await session_of(parley, token)).summary == first


async def test_a_job_taken_over_from_a_dead_worker_is_done_once(
    quiet: Parley, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    parley = quiet
    token = await parley.create_session(http)
    await chat(parley, http, token, FACT, *(f"question {n}" for n in range(2, 7)))
    redis = parley.redis
    summaries = Summaries(redis, parley.worker_settings)
    await summaries.request_summary(token, parley.worker_settings.default_model)
    # A worker reads the job and dies before storing anything (its entry stays pending).
    await redis.xgroup_create(SUMMARY_STREAM, SUMMARY_GROUP, id="0", mkstream=True)
    assert await redis.xreadgroup(SUMMARY_GROUP, "dead", {SUMMARY_STREAM: ">"}, count=1)
    monkeypatch.setattr(jobs_module, "CLAIM_IDLE_MS", 0)
    idle = asyncio.Event()
    idle.set()
    base_url = parley.standin.base_url
    assert base_url is not None
    async with LLMClient(LLMConfig(base_url=base_url, model="standin")) as llm:
        taker = summarizer(parley, llm, "alive")
        taker.idle = idle
        task = asyncio.create_task(taker.run())
        try:
            await jobs_done(parley)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    stored = (await session_of(parley, token)).summary
    assert stored is not None and stored.text.count("4242") == ONCE
    # The dead worker comes back to life and stores what it made from no summary: stale.
    late = SummaryRecord(text="late", seq=stored.seq, tokens=1, timestamp="t")
    assert await summaries.store_summary(token, 0, late) == SummaryStatus.STALE
    assert (await session_of(parley, token)).summary == stored


async def test_a_prompt_too_long_for_the_model_is_tried_again_smaller(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, memory_max_tokens=100_000) as parley:
        token = await parley.create_session(http)
        texts = [f"message {n} " + "word " * 8 for n in range(1, 7)]
        await chat(parley, http, token, *texts[:3])
        prompts_before = len(parley.standin.requests)
        # The stand-in counts a token a word; a reply is 1-2 tokens a word of its prompt.
        parley.standin.context_tokens = 70
        events = await chat(parley, http, token, *texts[3:])
        assert len(of_type(events, "done")) == 3
        refused = [
            r for r in parley.standin.requests[prompts_before:] if _words(r["messages"]) > 70
        ]
        assert refused, "the model refused some prompt as too long"
        for prompt in reply_prompts(parley.standin)[prompts_before:]:
            if _words(prompt) <= 70:
                assert prompt[-1]["role"] == "user"


async def test_each_servers_too_long_refusal_is_retried_once(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    token = await parley.create_session(http)
    await chat(parley, http, token, "one", "two")
    # The title job the first reply queued is over: the failure below is for "three".
    await jobs_done(parley, TITLE_STREAM, TITLE_GROUP)
    vllm = (
        "This model's maximum context length is 2048 tokens. However, you requested 2100 "
        "tokens (2000 in the messages, 100 in the completion). Please reduce the length "
        "of the messages or completion."
    )
    parley.standin.fail_next(400, message=vllm)
    events = await chat(parley, http, token, "three")
    assert of_type(events, "done")[-1]["reply"]["content"].startswith("Reply to: three")
    # The refused prompt and its retry: both end with "three".
    prompts = [r for r in parley.standin.requests if r["messages"][-1]["content"] == "three"]
    first, again = prompts[-2:]
    assert len(again["messages"]) < len(first["messages"])
    # Refused again: the error reaches the session, after one retry only.
    parley.standin.fail_next(400, count=2, message=vllm)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str("four")
        errors = await read_until(ws, count("error", 1))
    assert of_type(errors, "error")[0]["code"] == "llm_rejected"
    assert parley.standin.stats()["faults_queued"] == 0


def _words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)
