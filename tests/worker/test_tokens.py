"""Real token counts: the estimate calibrated by the model's own counts (``usage`` and
``/tokenize``), and prompts the model refuses as too long told apart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from testkit.standin import StandinModel
from worker.model.errors import LLMRejected, LLMUnavailable
from worker.model.llm import LLMClient, LLMConfig, PromptMessage
from worker.model.overflow import ContextOverflow, context_overflow
from worker.model.tokens import (
    CALIBRATION_WINDOW_BYTES,
    DEFAULT_BYTES_PER_TOKEN,
    MAX_BYTES_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    MIN_BYTES_PER_TOKEN,
    TokenCounter,
)


@pytest.fixture
async def standin() -> AsyncIterator[StandinModel]:
    async with StandinModel(tokens=4) as model:
        yield model


@pytest.fixture
async def client(standin: StandinModel) -> AsyncIterator[LLMClient]:
    assert standin.base_url is not None
    async with LLMClient(LLMConfig(base_url=standin.base_url, model="m", max_retries=0)) as c:
        yield c


def test_the_estimate_starts_cautious_and_learns_the_models_ratio() -> None:
    counter = TokenCounter()
    assert counter.bytes_per_token == DEFAULT_BYTES_PER_TOKEN
    assert counter.estimate("x" * 30) == 10
    counter.observe(400, 100)
    counter.observe(600, 150)
    assert counter.bytes_per_token == 4.0
    assert counter.estimate("x" * 30) == 8  # 7.5 rounded up
    counter.observe(0, 5)  # nothing to learn from
    counter.observe(5, 0)
    assert counter.observations == 2


def test_the_ratio_stays_within_bounds_and_follows_recent_counts() -> None:
    nonsense = TokenCounter()
    nonsense.observe(10_000, 1)
    assert nonsense.bytes_per_token == MAX_BYTES_PER_TOKEN
    nonsense.observe(10, 100_000)
    assert nonsense.bytes_per_token == MIN_BYTES_PER_TOKEN
    drifting = TokenCounter()
    drifting.observe(CALIBRATION_WINDOW_BYTES, CALIBRATION_WINDOW_BYTES // 2)  # 2 bytes a token
    for _ in range(20):
        drifting.observe(CALIBRATION_WINDOW_BYTES // 4, CALIBRATION_WINDOW_BYTES // 20)  # 5
    assert drifting.bytes_per_token > 4.9


def test_a_prompts_usage_counts_without_the_message_overhead() -> None:
    counter = TokenCounter()
    counter.observe_prompt(["a" * 40, "b" * 40], 20 + 2 * MESSAGE_OVERHEAD_TOKENS)
    assert counter.bytes_per_token == 4.0


async def test_each_reported_usage_calibrates_the_client(
    standin: StandinModel, client: LLMClient
) -> None:
    prompt = [PromptMessage(role="user", content=" ".join(["word"] * 20))]
    assert [d async for d in client.stream(prompt)]
    # The stand-in counts a token per word, 20; the counter takes the overhead off.
    assert client.tokens.observations == 1
    size = len(prompt[0].content)
    assert client.tokens.bytes_per_token == size / (20 - MESSAGE_OVERHEAD_TOKENS)


async def test_each_model_behind_one_api_is_calibrated_on_its_own(
    standin: StandinModel, client: LLMClient
) -> None:
    prompt = [PromptMessage(role="user", content=" ".join(["word"] * 20))]
    assert [d async for d in client.stream(prompt, model="org/other-model")]
    assert client.counter("org/other-model").observations == 1
    assert client.tokens.observations == 0  # the configured model learned nothing
    assert client.counter(client.config.model) is client.tokens


async def test_count_tokens_asks_llama_cpps_tokenize(
    standin: StandinModel, client: LLMClient
) -> None:
    assert client.config.tokenize_url == standin.base_url.removesuffix("/v1") + "/tokenize"  # type: ignore[union-attr]
    assert await client.count_tokens("one two three") == 3
    assert standin.tokenized == ["one two three"]
    assert client.can_tokenize is True
    assert client.tokens.bytes_per_token == len("one two three") / 3


async def test_a_server_without_tokenize_is_asked_once(
    standin: StandinModel, client: LLMClient
) -> None:
    standin.tokenize = False
    assert await client.count_tokens("one two") is None
    standin.tokenize = True
    assert await client.count_tokens("one two") is None  # not asked again
    assert client.can_tokenize is False and standin.tokenized == []
    assert client.tokens.observations == 0


# The servers' own words for a prompt beyond the context (see worker/model/overflow.py).
OVERFLOWS = [
    pytest.param(
        400,
        "request (631 tokens) exceeds the available context size (512 tokens), try increasing it",
        ContextOverflow(512, 631),
        id="llama.cpp",
    ),
    pytest.param(
        400,
        "the request exceeds the available context size, try increasing the context size "
        "or enable context shift",
        ContextOverflow(),
        id="llama.cpp-older",
    ),
    pytest.param(
        400,
        "This model's maximum context length is 2048 tokens. However, you requested 2100 "
        "tokens (2000 in the messages, 100 in the completion). Please reduce the length of "
        "the messages or completion.",
        ContextOverflow(2048, 2100),
        id="vllm",
    ),
    pytest.param(
        400,
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",
        ContextOverflow(8192, 9000),
        id="openai",
    ),
    pytest.param(
        400,
        "Your input exceeds the context window of this model. Please adjust your input "
        "and try again.",
        ContextOverflow(),
        id="openai-newer",
    ),
    pytest.param(
        422,
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
        ContextOverflow(4096, 4000),
        id="tgi",
    ),
    pytest.param(
        422,
        "Input validation error: `inputs` must have less than 4096 tokens. Given: 5000",
        ContextOverflow(4096, 5000),
        id="tgi-inputs",
    ),
]


@pytest.mark.parametrize(("status", "message", "expected"), OVERFLOWS)
def test_each_servers_words_for_a_prompt_too_long(
    status: int, message: str, expected: ContextOverflow
) -> None:
    error = LLMRejected(f"model server answered {status}: {message}", status=status)
    assert context_overflow(error) == expected


def test_other_refusals_are_not_overflows() -> None:
    assert (
        context_overflow(LLMRejected("model server answered 400: bad 'model'", status=400)) is None
    )
    assert context_overflow(LLMRejected("maximum context length is 8 tokens", status=401)) is None
    not_rejected = LLMUnavailable("maximum context length is 8 tokens", status=503)
    assert context_overflow(not_rejected) is None


def test_the_smaller_window_is_at_least_half_and_what_the_figures_call_for() -> None:
    assert ContextOverflow().shrink() == 0.5
    assert ContextOverflow(512, 631).shrink() == 0.5
    assert ContextOverflow(1000, 4000).shrink() == pytest.approx(0.2)
