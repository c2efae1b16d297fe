"""The ``real-model`` scenario: the real model asked directly, and through Parley.

The embedded model (llama.cpp's server in xllamacpp, SmolLM2-135M-Instruct, 4 slots) is
asked the same kind of question two ways, in alternating rounds so that machine noise hits
both alike:

- direct: ``POST /v1/chat/completions`` with ``stream: true``, the body Parley's worker
  sends for a session's first message (its system prompt, the user message,
  ``max_tokens``, temperature 0);
- through Parley (1 server, 1 worker on that model): the message is sent on a new
  session's WebSocket.

Each round asks ``sessions`` questions at once. Measured per question, at the client:
time to the first non-blank content (the worker drops leading whitespace, so a blank
delta would flatter the direct path) and time to the end of the reply.

Every question is new to the model (``"... the number <n>."``), so llama.cpp's prompt
cache reuses the same shared prefix on both paths, and never a whole prompt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.runner import run_loop
from bench.settings import real_model_overrides
from bench.stats import Distribution, ratio
from runtime.config import DEFAULT_SYSTEM_PROMPT
from stack.model import EmbeddedModel
from stack.redis import EmbeddedRedis
from testkit.delivery import follow
from testkit.driver import ChatDriver
from testkit.ports import free_port
from testkit.processes import Cluster
from worker.config import WorkerSettings

logger = logging.getLogger(__name__)

FLUSH_MS_DEFAULT: float = WorkerSettings.model_fields["stream_flush_ms"].default
"""The workers' own ``STREAM_FLUSH_MS`` default (ms)."""


@dataclass(frozen=True)
class RealModelOptions:
    """What the ``real-model`` scenario runs.

    Attributes:
        sessions: questions asked at once in each round (the model has 4 slots).
        rounds: rounds per path; the paths alternate, direct first.
        max_tokens: longest reply (tokens), both paths.
        flush_ms: the workers' ``STREAM_FLUSH_MS`` (ms): deltas coalesced over this window.
        reply_timeout_s: a round's replies must all end within this long (s).
    """

    sessions: int = 4
    rounds: int = 5
    max_tokens: int = 32
    flush_ms: float = FLUSH_MS_DEFAULT
    reply_timeout_s: float = 120.0


@dataclass(frozen=True)
class PathResult:
    """One way of asking the model, over every round.

    Attributes:
        first_token_ms: question sent -> first non-blank content (ms).
        done_ms: question sent -> end of the reply (ms): the end of the SSE stream
            directly, the ``done`` event through Parley.
        reply_chars: the replies' lengths (characters), to check both paths generated
            alike.
        tokens_per_s: each reply's tokens (counted by the model's ``/tokenize``) over
            the time from its first token to its end (tokens/s).
        replies: questions answered.
        failures: questions without a whole reply (HTTP or ``error`` event, timeout).
    """

    first_token_ms: Distribution
    done_ms: Distribution
    reply_chars: Distribution
    tokens_per_s: Distribution
    replies: int
    failures: int


@dataclass(frozen=True)
class RealModelResult:
    """Both paths, and how much slower Parley is (medians, Parley / direct)."""

    options: RealModelOptions
    model: str
    direct: PathResult
    parley: PathResult
    first_token_ratio: float | None
    done_ratio: float | None

    @property
    def failures(self) -> int:
        """Questions that got no whole reply, both paths."""
        return self.direct.failures + self.parley.failures


@dataclass
class _Samples:
    first_token_ms: list[float]
    done_ms: list[float]
    reply_chars: list[float]
    texts: list[str]
    failures: int = 0
    tokens_per_s: list[float] | None = None

    def add(self, first_token_ms: float, done_ms: float, text: str) -> None:
        self.first_token_ms.append(first_token_ms)
        self.done_ms.append(done_ms)
        self.reply_chars.append(len(text))
        self.texts.append(text)

    async def count_tokens(self, http: aiohttp.ClientSession, root: str) -> None:
        """Each reply's generation rate (tokens/s), counted by the model's tokenizer."""
        self.tokens_per_s = []
        for text, first, done in zip(self.texts, self.first_token_ms, self.done_ms, strict=True):
            async with http.post(f"{root}/tokenize", json={"content": text}) as response:
                tokens = len((await response.json())["tokens"])
            if done > first:
                self.tokens_per_s.append(tokens / (done - first) * 1000)

    def result(self) -> PathResult:
        return PathResult(
            first_token_ms=Distribution.of(self.first_token_ms),
            done_ms=Distribution.of(self.done_ms),
            reply_chars=Distribution.of(self.reply_chars),
            tokens_per_s=Distribution.of(self.tokens_per_s or []),
            replies=len(self.done_ms),
            failures=self.failures,
        )


def run(options: RealModelOptions, work_dir: Path) -> RealModelResult:
    """Start Redis, the embedded model, 1 server and 1 worker; measure; stop them all.

    ``work_dir`` receives Redis's data and every process's log.

    Raises:
        stack.model.EmbeddedModelError: the model is not installed or did not start.
    """
    with (
        EmbeddedRedis(port=free_port(), data_dir=work_dir / "redis") as redis,
        EmbeddedModel(port=free_port(), log_dir=work_dir / "logs", parallel=4) as model,
    ):
        return run_loop(_measure(options, redis.url, model, work_dir / "logs"))


async def _measure(
    options: RealModelOptions, redis_url: str, model: EmbeddedModel, log_dir: Path
) -> RealModelResult:
    # The worker's, which Cluster keeps at its default whatever a .env says.
    system_prompt = DEFAULT_SYSTEM_PROMPT
    opened = options.sessions * options.rounds + 1  # 1: the warm-up question
    overrides = real_model_overrides(options.max_tokens, options.flush_ms, opened)
    body = {
        "model": model.model,
        "stream": True,
        "max_tokens": options.max_tokens,
        "temperature": 0.0,
    }
    direct = _Samples([], [], [], [])
    parley = _Samples([], [], [], [])
    async with (
        Cluster(
            redis_url, model.base_url, log_dir, llm_model=model.model, overrides=overrides
        ) as cluster,
        aiohttp.ClientSession() as http,
    ):
        await cluster.start(servers=1, workers=1)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            url = f"{model.base_url}/chat/completions"
            ask = _Asker(http, driver, url, system_prompt, body, options.reply_timeout_s)
            # One question each way first, so the model and connections are warm; not counted.
            await ask.directly(_Samples([], [], [], []), 1)
            await ask.through_parley(_Samples([], [], [], []), 1)
            for round_ in range(1, options.rounds + 1):
                await ask.directly(direct, options.sessions)
                await ask.through_parley(parley, options.sessions)
                logger.info("round %d of %d done", round_, options.rounds)
        root = model.base_url.removesuffix("/v1")
        await direct.count_tokens(http, root)
        await parley.count_tokens(http, root)
    d, p = direct.result(), parley.result()
    return RealModelResult(
        options=options,
        model=model.model,
        direct=d,
        parley=p,
        first_token_ratio=ratio(p.first_token_ms.median, d.first_token_ms.median),
        done_ratio=ratio(p.done_ms.median, d.done_ms.median),
    )


@dataclass
class _Asker:
    """Asks the model new questions, ``count`` at once, directly or through Parley."""

    http: aiohttp.ClientSession
    driver: ChatDriver
    url: str  # the model's chat completions URL
    system_prompt: str
    body: dict[str, Any]  # the chat completion request, without its messages
    timeout_s: float
    questions: Iterator[str] = field(default_factory=lambda: _questions())

    async def directly(self, samples: _Samples, count: int) -> None:
        """Ask the model itself, with Parley's system prompt; record in ``samples``."""
        async with asyncio.timeout(self.timeout_s):
            await asyncio.gather(
                *(
                    _ask_directly(self.http, self.url, self.system_prompt, self.body, q, samples)
                    for q in itertools.islice(self.questions, count)
                )
            )

    async def through_parley(self, samples: _Samples, count: int) -> None:
        """Ask through Parley, one new session each; record in ``samples``: the first
        ``token`` and the ``done`` of each reply (a question with either missing fails)."""
        traces = await self.driver.open(count)
        await asyncio.gather(*(t.say(next(self.questions)) for t in traces))
        await self.driver.wait_replies(self.timeout_s, traces)
        for t in traces:
            replies = follow(t.sent, t.received).replies
            reply = replies[0] if replies else None
            if reply is None or not reply.tokens or not reply.dones or reply.sent is None:
                samples.failures += 1
                continue
            (first_at, _), (done_at, text) = reply.tokens[0], reply.dones[0]
            samples.add((first_at - reply.sent.at) * 1000, (done_at - reply.sent.at) * 1000, text)


def _questions() -> Iterator[str]:
    """Questions of one shape, each new to the model."""
    for n in itertools.count(101):
        yield f"Tell me one fact about the number {n}."


async def _ask_directly(
    http: aiohttp.ClientSession,
    url: str,
    system_prompt: str,
    body: dict[str, Any],
    question: str,
    samples: _Samples,
) -> None:
    """Ask ``question`` with a streamed chat completion; record its timings in ``samples``."""
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question},
    ]
    first_token_at: float | None = None
    parts: list[str] = []
    started = time.perf_counter()
    try:
        async with http.post(url, json={**body, "messages": messages}) as response:
            if response.status != 200:
                logger.warning("direct: HTTP %d: %s", response.status, await response.text())
                samples.failures += 1
                return
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                choices = json.loads(data).get("choices") or [{}]
                content = (choices[0].get("delta") or {}).get("content") or ""
                if first_token_at is None and content.strip():
                    first_token_at = time.perf_counter()
                parts.append(content)
    except aiohttp.ClientError as e:
        logger.warning("direct: %s", e)
        samples.failures += 1
        return
    ended = time.perf_counter()
    if first_token_at is None:
        logger.warning("direct: empty reply to %r", question)
        samples.failures += 1
        return
    samples.add((first_token_at - started) * 1000, (ended - started) * 1000, "".join(parts).strip())
