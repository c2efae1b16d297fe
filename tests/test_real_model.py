"""End to end with the real embedded model: xllamacpp serving SmolLM2-135M-Instruct.

Through the whole pipeline (POST /token, WebSocket, worker, model) with Parley's default
system prompt, at temperature 0 so that the replies are the same on every run.

The 135M model cannot carry a fact from one turn to the next: to "My name is Ada." then
"What is my name?" it answers "My name is Elena, and I'm a creative writing
assistant...", although the second prompt holds the first turn. That memory is tested
with the stand-in model (tests/system/test_invariants.py), not here; so is the rolling
summary's (tests/worker/test_summary.py): here the real model's summary is shown.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from stack.model import EmbeddedModel
from storage.keys import SUMMARY_GROUP, SUMMARY_STREAM
from tests.support.events import count, of_type, read_until
from tests.support.parley import running_parley
from worker.model.llm import LLMClient, LLMConfig, PromptMessage
from worker.model.tokens import TokenCounter, estimate_tokens


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


def calibration_texts() -> list[str]:
    """Texts of several kinds, the same on every run: the documentation's paragraphs
    (prose, tables, commands), pieces of Python and Lua sources, and sentences in other
    scripts."""
    root = Path(__file__).parent.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    paragraphs = [p for page in pages for p in page.read_text(encoding="utf-8").split("\n\n")]
    texts = [p.strip() for p in paragraphs if len(p.strip()) >= 80][:80]
    for source in (
        sorted((root / "worker").glob("*.py"))[:6] + sorted((root / "storage").glob("*.lua"))[:4]
    ):
        text = source.read_text(encoding="utf-8")
        texts += [text[i : i + 800] for i in range(0, min(len(text), 3200), 800)]
    texts += [
        "Le modèle répond en français quand on lui parle de la France et de Paris.",
        "Der Arbeiter faltet die ältesten Nachrichten in eine Zusammenfassung.",
        "会话的摘要记录它覆盖的最后一条消息的序号。",
        "Résumé: 42 🙂 — naïve café, coöperate; ½ + ¼ = ¾.",
    ]
    return texts


def relative_errors(estimate: Callable[[str], int], counted: list[tuple[str, int]]) -> list[float]:
    return sorted(abs(estimate(text) - n) / n for text, n in counted)


def quantile(values: list[float], q: float) -> float:
    return values[round(q * (len(values) - 1))]


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_the_token_estimate_calibrated_on_the_models_counts(
    embedded_model: EmbeddedModel,
) -> None:
    """The README's calibration figures: the estimate against llama.cpp's /tokenize,
    before (3 bytes a token) and after calibration on other texts (every other text
    calibrates, the rest are measured)."""
    config = LLMConfig(base_url=embedded_model.base_url, model=embedded_model.model)
    async with LLMClient(config) as llm:
        texts = calibration_texts()
        counts = [await llm.count_tokens(text) for text in texts]
        assert all(n for n in counts), "the embedded model counts with /tokenize"
        counted = [(t, n) for t, n in zip(texts, counts, strict=True) if n]
        calibrated = TokenCounter()
        for text, n in counted[0::2]:
            calibrated.observe(len(text.encode("utf-8")), n)
        measured = counted[1::2]
        before = relative_errors(estimate_tokens, measured)
        after = relative_errors(calibrated.estimate, measured)
        # A reply's usage calibrates the client too (the prompt's tokens, less overhead).
        prompt = [PromptMessage(role="user", content=counted[0][0])]
        fresh = LLMClient(config)
        async with fresh:
            async for _ in fresh.stream(prompt, max_tokens=1):
                pass
    print(
        f"\ntoken estimate against /tokenize, {len(measured)} texts: "
        f"3 bytes/token median {statistics.median(before):.1%} p95 {quantile(before, 0.95):.1%}; "
        f"calibrated {calibrated.bytes_per_token:.2f} bytes/token "
        f"median {statistics.median(after):.1%} p95 {quantile(after, 0.95):.1%}; "
        f"from one reply's usage: {fresh.tokens.bytes_per_token:.2f} bytes/token"
    )
    assert fresh.tokens.observations == 1
    assert statistics.median(after) < statistics.median(before)
    assert quantile(after, 0.95) < quantile(before, 0.95)


async def summary_jobs_done(redis: Redis[str]) -> None:
    """Return once the workers have taken and finished every summary job."""
    async with asyncio.timeout(240):
        while True:
            groups = await redis.xinfo_groups(SUMMARY_STREAM)
            group = next((g for g in groups if g["name"] == SUMMARY_GROUP), None)
            if group and group["pending"] == 0 and group["lag"] == 0:
                return
            await asyncio.sleep(0.2)


@pytest.mark.model
@pytest.mark.timeout(600)
async def test_a_fact_folded_into_the_summary_by_the_real_model(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession, embedded_model: EmbeddedModel
) -> None:
    """A fact stated first leaves a 2-turn window; the embedded model summarizes it. The
    mechanism is checked (the summary covers the fact's turn); whether the 135M model
    keeps the fact, and answers from it, is printed, not asserted (README: it does not)."""
    async with running_parley(
        redis_url,
        redis,
        llm_base_url=embedded_model.base_url,
        llm_model=embedded_model.model,
        llm_max_tokens=32,
        llm_temperature=0.0,
        memory_summary=True,
        memory_max_messages=4,
        memory_summary_trigger_tokens=10_000,
    ) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            for text in (
                "My name is Ada and my secret number is 42.",
                "What is the capital of France?",
                "What colour is the sky?",
                "How many legs does a spider have?",
            ):
                assert not of_type(await ask(ws, text), "error")
            await summary_jobs_done(redis)
            answer = await ask(ws, "What is my secret number?")
        session = await parley.worker.store.sessions.get_session(token, touch=False)
    assert session.summary is not None and session.summary.seq >= 1, "the fact's turn folded"
    reply = of_type(answer, "done")[0]["reply"]["content"]
    print(
        f"\nsummary of turns 1-{session.summary.seq} ({session.summary.tokens} tokens): "
        f"{session.summary.text!r}\nfact kept in the summary: {'42' in session.summary.text}; "
        f"'What is my secret number?' -> {reply!r}"
    )
