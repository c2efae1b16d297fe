"""A conversation's model and system prompt in the web client, in a real Chromium against
a real server, worker and Redis: chosen at the start, changed later in the settings
dialog (refused while a reply is due), shown in the header and, once replies come from
several models, on each reply; a model no worker serves, explained.

The catalog offers two models; the stand-in model records each request, so a test sees
the ``model`` (the catalog entry's ``api_model``) and the system message the worker sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect
from redis.asyncio import Redis

from runtime.catalog import ModelOffer
from runtime.config import DEFAULT_SYSTEM_PROMPT
from tests.browser.shots import readme_shot
from tests.browser.test_chat import finished_reply, partial_reply, replies, send, start_session
from tests.browser.test_conversations import tab_to
from tests.support.browser import snap, web_parley
from tests.support.parley import Parley

pytestmark = pytest.mark.browser

CATALOG = [
    ModelOffer(id="swift", label="Swift", description="Quick, short answers."),
    ModelOffer(
        id="deep",
        label="Deep Thinker",
        description="Slower, more thorough answers.",
        api_model="org/deep-instruct",
    ),
]
STANDIN_MODEL = "standin"  # what the worker sends for a model without an api_model


@pytest.fixture
async def models(redis_url: str, redis: Redis[str], web_dist: Path) -> AsyncIterator[Parley]:
    """A stack offering two models, whose stand-in answers quickly."""
    async with web_parley(redis_url, redis, web_dist, models=CATALOG) as parley:
        parley.standin.tokens = 8
        parley.standin.delay_ms = 5
        yield parley


def settings_button(page: Page) -> Locator:
    """The header's button that names the model and opens the settings."""
    return page.locator("header").get_by_role("button", name="Model:")


def dialog(page: Page) -> Locator:
    return page.get_by_role("dialog", name="Conversation settings")


def reply_models(page: Page) -> Locator:
    return replies(page).locator(".reply-model")


def last_request(parley: Parley) -> dict[str, Any]:
    """The chat request the worker sent the stand-in model last."""
    assert parley.prompts(), "the model got no request"
    request: dict[str, Any] = parley.prompts()[-1]
    return request


async def change_settings(page: Page, model: str | None = None, prompt: str | None = None) -> None:
    """Open the settings, choose ``model`` (a label) and ``prompt``, and save."""
    await settings_button(page).click()
    await expect(dialog(page)).to_be_visible()
    if model is not None:
        await dialog(page).get_by_label("Model").select_option(label=model)
    if prompt is not None:
        await dialog(page).get_by_label("System prompt").fill(prompt)
    await dialog(page).get_by_role("button", name="Save").click()


async def test_a_conversation_starts_with_the_chosen_model_and_system_prompt(
    page: Page, models: Parley
) -> None:
    await page.goto(models.url)
    picker = page.get_by_label("Model")
    # The default is preselected; each model says what it is for.
    await expect(picker).to_have_value("swift")
    await expect(picker.locator("option")).to_have_text(["Swift (default)", "Deep Thinker"])
    await expect(page.get_by_text("Quick, short answers.")).to_be_visible()
    await page.get_by_role("textbox", name="Your name").fill("Ada")
    await picker.select_option("deep")
    await expect(page.get_by_text("Slower, more thorough answers.")).to_be_visible()
    await page.get_by_label("System prompt").fill("Answer like a ship's captain.")
    await readme_shot(page, "models")
    await page.get_by_role("button", name="Start chatting").click()
    await expect(page.locator('[data-connection="open"]')).to_be_visible()

    await expect(settings_button(page)).to_have_accessible_name(
        "Model: Deep Thinker, own system prompt"
    )
    await send(page, "Where are we headed?")
    await finished_reply(page, 0)
    request = last_request(models)
    assert request["model"] == "org/deep-instruct"
    assert request["messages"][0] == {"role": "system", "content": "Answer like a ship's captain."}
    # One model wrote every reply: no reply names it.
    await expect(reply_models(page)).to_have_count(0)

    # A reload shows the same choice (from the session, not from this page's memory).
    await page.reload()
    await expect(settings_button(page)).to_have_accessible_name(
        "Model: Deep Thinker, own system prompt"
    )
    await settings_button(page).click()
    await expect(dialog(page).get_by_label("Model")).to_have_value("deep")
    await expect(dialog(page).get_by_label("System prompt")).to_have_value(
        "Answer like a ship's captain."
    )


async def test_changing_the_model_and_resetting_the_prompt_apply_to_the_next_reply(
    page: Page, models: Parley
) -> None:
    await start_session(page, models.url)
    await expect(settings_button(page)).to_have_accessible_name("Model: Swift")
    await change_settings(page, prompt="Rhyme every answer.")
    await expect(dialog(page)).to_have_count(0)
    await send(page, "First question")
    await finished_reply(page, 0)
    request = last_request(models)
    assert request["model"] == STANDIN_MODEL
    assert request["messages"][0] == {"role": "system", "content": "Rhyme every answer."}

    # Another model, and the deployment's prompt again.
    await settings_button(page).click()
    await dialog(page).get_by_label("Model").select_option(label="Deep Thinker")
    await dialog(page).get_by_role("button", name="Use the default prompt").click()
    await expect(dialog(page).get_by_label("System prompt")).to_have_value("")
    await dialog(page).get_by_role("button", name="Save").click()
    await expect(dialog(page)).to_have_count(0)
    await expect(settings_button(page)).to_have_accessible_name("Model: Deep Thinker")

    # The replies before the change name their model once there are two.
    await expect(reply_models(page)).to_have_text(["Written by Swift"])
    await send(page, "Second question")
    await finished_reply(page, 1)
    await expect(reply_models(page)).to_have_text(["Written by Swift", "Written by Deep Thinker"])
    request = last_request(models)
    assert request["model"] == "org/deep-instruct"
    assert request["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}

    await page.reload()
    await expect(reply_models(page)).to_have_text(["Written by Swift", "Written by Deep Thinker"])
    await settings_button(page).click()
    await expect(dialog(page)).to_be_visible()
    await snap(page, "settings-dialog")


async def test_a_model_change_is_refused_while_a_reply_is_written(
    page: Page, models: Parley
) -> None:
    models.standin.tokens = 60
    models.standin.delay_ms = 100
    await start_session(page, models.url)
    await send(page, "Tell me a long story")
    await partial_reply(page, 0)

    await settings_button(page).click()
    await dialog(page).get_by_label("Model").select_option(label="Deep Thinker")
    await expect(dialog(page)).to_contain_text("the model can change once it has finished")
    await dialog(page).get_by_role("button", name="Save").click()
    refusal = dialog(page).get_by_role("alert")
    await expect(refusal).to_contain_text("A reply is still being written, so nothing was changed")
    # Still open, still the old model; the reply goes on meanwhile.
    await expect(dialog(page)).to_be_visible()
    await expect(replies(page).nth(0)).to_have_attribute("data-streaming", "true")
    await dialog(page).get_by_role("button", name="Cancel").click()
    await expect(settings_button(page)).to_have_accessible_name("Model: Swift")

    # Once the reply is done, the same change is taken.
    await finished_reply(page, 0)
    await change_settings(page, model="Deep Thinker")
    await expect(dialog(page)).to_have_count(0)
    await expect(settings_button(page)).to_have_accessible_name("Model: Deep Thinker")


async def test_the_settings_dialog_works_with_the_keyboard_alone(
    page: Page, models: Parley
) -> None:
    await start_session(page, models.url)
    button = settings_button(page)

    # Enter opens it with the focus on the model; Escape closes it, keeping everything.
    await tab_to(page, "Model: Swift")
    await page.keyboard.press("Enter")
    await expect(dialog(page)).to_be_visible()
    picker = dialog(page).get_by_label("Model")
    await expect(picker).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(picker).to_have_value("deep")
    await page.keyboard.press("Escape")
    await expect(dialog(page)).to_have_count(0)
    await expect(button).to_be_focused()
    await expect(button).to_have_accessible_name("Model: Swift")

    # Again: a model, a prompt typed with a new line, then Save by Tab and Enter.
    await page.keyboard.press("Enter")
    await expect(picker).to_be_focused()
    await expect(picker).to_have_value("swift")
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("Tab")
    await expect(dialog(page).get_by_label("System prompt")).to_be_focused()
    await page.keyboard.type("Be brief.")
    await page.keyboard.press("Enter")  # a new line, not a submit
    await page.keyboard.type("Use lists.")
    await expect(dialog(page)).to_be_visible()
    await tab_to(page, "Save")
    await page.keyboard.press("Enter")
    await expect(dialog(page)).to_have_count(0)
    await expect(button).to_be_focused()
    await expect(button).to_have_accessible_name("Model: Deep Thinker, own system prompt")

    await page.get_by_role("textbox", name="Message").focus()  # where the page puts it
    await page.keyboard.type("hello")
    await page.keyboard.press("Enter")
    await finished_reply(page, 0)
    request = last_request(models)
    assert request["model"] == "org/deep-instruct"
    assert request["messages"][0] == {"role": "system", "content": "Be brief.\nUse lists."}


async def test_the_model_and_its_settings_fit_a_phone(phone: Page, models: Parley) -> None:
    await start_session(phone, models.url)
    button = settings_button(phone)
    await expect(button).to_have_accessible_name("Model: Swift")
    await expect(button).to_be_in_viewport(ratio=1)
    await button.click()
    box = await dialog(phone).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await expect(dialog(phone).get_by_role("button", name="Save")).to_be_in_viewport()
    await snap(phone, "settings-phone")
    await phone.keyboard.press("Escape")
    await expect(dialog(phone)).to_have_count(0)


async def test_a_model_no_worker_serves_is_explained_and_another_can_be_chosen(
    redis_url: str, redis: Redis[str], web_dist: Path, page: Page
) -> None:
    async with web_parley(
        redis_url, redis, web_dist, models=CATALOG, worker_models="swift"
    ) as parley:
        parley.standin.tokens = 8
        parley.standin.delay_ms = 5
        await page.goto(parley.url)
        await page.get_by_role("textbox", name="Your name").fill("Ada")
        await page.get_by_label("Model").select_option("deep")
        await page.get_by_role("button", name="Start chatting").click()
        await expect(page.locator('[data-connection="open"]')).to_be_visible()

        await send(page, "Anyone there?")
        message = page.locator('li[data-role="user"]').nth(0)
        await expect(message.get_by_role("alert")).to_contain_text(
            "This conversation's model is not available right now"
        )
        await expect(message).to_have_attribute("data-status", "refused")
        await snap(page, "model-unavailable")
        assert parley.standin.requests == []

        await message.get_by_role("button", name="Choose another model").click()
        await dialog(page).get_by_label("Model").select_option("swift")
        await dialog(page).get_by_role("button", name="Save").click()
        await expect(settings_button(page)).to_have_accessible_name("Model: Swift")
        await message.get_by_role("button", name="Send again").click()
        await finished_reply(page, 0)
        assert last_request(parley)["model"] == STANDIN_MODEL
