"""Choosing a conversation's model and system prompt from ``python -m terminal``, end to
end on the real stack: flags, /models, /model, /system, and their refusals in words.

Each test runs its own Parley whose catalog offers ``small`` (the default, the worker's
own model, ``standin``) and ``large`` (asked of the model API as
``org/large-instruct``); the stand-in model records every request it answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from runtime.config import DEFAULT_SYSTEM_PROMPT
from terminal.client import ChatClient
from terminal.render import REPLY_PREFIX
from tests.support.parley import running_parley
from tests.terminal.harness import run_cli

pytestmark = pytest.mark.system

CATALOG = [
    ModelOffer(id="small", label="Small", description="fast"),
    ModelOffer(id="large", label="Large", api_model="org/large-instruct"),
]


def asked(request: dict[str, Any]) -> tuple[str, str]:
    """The model and the system prompt of a chat request the stand-in received."""
    system = request["messages"][0]
    assert system["role"] == "system", request
    return request["model"], system["content"]


def after_reply(output: str, text: str) -> str:
    """The line after the reply that begins with ``text`` (its notes, if it has some)."""
    lines = output.splitlines()
    (start,) = (i for i, line in enumerate(lines) if line.startswith(REPLY_PREFIX + text))
    return lines[start + 1].strip() if start + 1 < len(lines) else ""


async def test_a_new_conversation_is_answered_by_the_model_and_prompt_of_its_flags(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    # No title: the resumed conversation's header names it as untitled.
    async with running_parley(
        redis_url, redis, models=CATALOG, conversation_titles=False
    ) as parley:
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", "--model", "large",
            "--system-prompt", "Be terse.", stdin="hello\n", config_home=tmp_path,
        )  # fmt: skip
        assert status == 0, output
        assert "-- new conversation: model large, own system prompt --" in output
        assert f"{REPLY_PREFIX}Reply to: hello" in output
        assert [asked(r) for r in parley.prompts()] == [("org/large-instruct", "Be terse.")]

        status, output = await run_cli(
            "--url", parley.url, "--resume", "1", stdin="/system\n", config_home=tmp_path
        )
    assert status == 0, output
    header = output.splitlines()[0]
    assert header.startswith("-- untitled: conversation of Ada, started ")
    assert header.endswith(", model large, own system prompt --")
    assert "-- the system prompt of this conversation: --\n     Be terse.\n" in output


async def test_model_and_system_change_the_next_reply_which_then_names_its_model(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    typed = (
        "first\n/model large\n/system Be terse.\nsecond\n"
        "/system\n/system -\n/system\n/model small\nthird\n"
    )
    async with running_parley(redis_url, redis, models=CATALOG) as parley:
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", stdin=typed, config_home=tmp_path
        )
        assert status == 0, output
        assert [asked(r) for r in parley.prompts()] == [
            ("standin", DEFAULT_SYSTEM_PROMPT),
            ("org/large-instruct", "Be terse."),
            ("standin", DEFAULT_SYSTEM_PROMPT),
        ]
        assert "-- replies now come from Large (large) --" in output
        assert "-- this conversation now follows its own system prompt --" in output
        assert "-- the system prompt of this conversation: --\n     Be terse.\n" in output
        assert "-- this conversation now follows the deployment's system prompt --" in output
        assert "-- this conversation follows the deployment's system prompt --" in output
        # One model so far: no note; two: each reply names its own.
        assert after_reply(output, "Reply to: first") == "-- replies now come from Large (large) --"
        assert after_reply(output, "Reply to: second") == "(by large)"
        assert after_reply(output, "Reply to: third") == "(by small)"

        status, output = await run_cli(
            "--url", parley.url, "--resume", "1", stdin="", config_home=tmp_path
        )
    assert status == 0, output
    assert output.splitlines()[0].endswith(", model small --")
    notes = [after_reply(output, f"Reply to: {n}") for n in ("first", "second", "third")]
    assert notes == ["(by small)", "(by large)", "(by small)"]


async def test_models_lists_the_catalog_marking_the_default_and_the_one_in_use(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    typed = "/help\n/models\n/model large\n/models\nhi\n/models\n"
    async with running_parley(redis_url, redis, models=CATALOG) as parley:
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", stdin=typed, config_home=tmp_path
        )
        assert status == 0, output
        assert [asked(r)[0] for r in parley.prompts()] == ["org/large-instruct"]
    for usage in ("/models", "/model ID", "/system [TEXT|-]"):
        assert f"\n  {usage} " in output  # /help lists it
    first, second, third = output.split("-- /model ID chooses one --\n")[:3]
    assert "* small  Small: fast  (default, the next conversation)\n  large  Large\n" in first
    assert "-- the next conversation will use Large (large) --" in second
    assert "  small  Small: fast  (default)\n* large  Large  (the next conversation)\n" in second
    assert "  small  Small: fast  (default)\n* large  Large  (this conversation)\n" in third


async def test_a_refused_choice_is_said_in_words(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    async with running_parley(
        redis_url, redis, models=CATALOG, max_system_prompt_chars=20
    ) as parley:
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", "--model", "huge", stdin="hi\n",
            config_home=tmp_path,
        )  # fmt: skip
        assert status == 1
        assert (
            "! unknown model huge: the models are small, large (/models describes them)" in output
        )
        assert not parley.standin.requests  # nothing was sent

        typed = f"hi\n/model huge\n/model\n/system {'x' * 21}\nagain\n"
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", stdin=typed, config_home=tmp_path
        )
        assert status == 0, output
        assert (
            "! unknown model huge: the models are small, large (/models describes them)" in output
        )
        assert "! usage: /model ID, an ID from /models" in output
        assert (
            "! the system prompt is refused: system_prompt must be at most 20 characters" in output
        )
        assert [asked(r) for r in parley.prompts()] == [("standin", DEFAULT_SYSTEM_PROMPT)] * 2


async def test_a_new_model_is_refused_while_a_reply_is_written_for_another_window(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    async with (
        running_parley(redis_url, redis, models=CATALOG) as parley,
        ChatClient(parley.url) as elsewhere,
    ):
        view = await elsewhere.create_session("Ada")
        await elsewhere.connect()
        parley.standin.hang_next()  # the other window's reply is never finished
        await elsewhere.send("hi")
        await asyncio.wait_for(parley.standin.wait_until(lambda: parley.standin.in_flight == 1), 30)

        status, output = await run_cli(
            "--url", parley.url, "--token", view.token, stdin="/model large\n",
            config_home=tmp_path,
        )  # fmt: skip
        assert status == 0, output
        assert (
            "! the model cannot change while messages wait for replies (sent from another "
            "window?): wait for them, then /model again"
        ) in output
        reloaded = await elsewhere.load_session(view.token)
    assert reloaded.model == ""  # unchanged: the default


async def test_an_unserved_model_is_said_with_what_to_do(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    typed = "hi\n/model small\nhi again\n"
    async with running_parley(redis_url, redis, models=CATALOG, worker_models="small") as parley:
        status, output = await run_cli(
            "--url", parley.url, "--name", "Ada", "--model", "large", stdin=typed,
            config_home=tmp_path,
        )  # fmt: skip
        assert [asked(r)[0] for r in parley.prompts()] == ["standin"]
    assert status == 0, output
    assert (
        "! no worker serves this conversation's model (large) now, so the message is not "
        "answered: choose another with /model ID (/models lists them), or send it again later"
    ) in output
    assert "model_unavailable" not in output  # words, not the wire's code
    assert f"{REPLY_PREFIX}Reply to: hi again" in output
