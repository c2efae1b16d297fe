"""A conversation's model and system prompt: the slash commands that show and change them.

``/models`` lists what the deployment offers (``GET /models``), ``/model ID`` and
``/system TEXT`` change the open conversation's (``PATCH /session``): the next reply
uses them. With no conversation open they choose for the next one, as ``--model`` and
``--system-prompt`` do. Both wait for the replies in progress first (the command spec
says so), so that the server does not refuse a new model while one is being written
and the next reply is the first to follow the change.
"""

from __future__ import annotations

from dataclasses import replace

from protocol.wire import ModelInfo
from terminal.api import ApiError
from terminal.chat import Chat, UsageError

#: Said when ``PATCH /session`` refuses a new model with 409: since /model waits for this
#: client's own replies first, the messages waiting were sent from elsewhere.
STILL_WAITING = (
    "the model cannot change while messages wait for replies (sent from another "
    "window?): wait for them, then /model again"
)


def named(model: ModelInfo) -> str:
    """A model as people read it: ``Large (large)``, or its id if it has no label."""
    return f"{model.label} ({model.id})" if model.label != model.id else model.id


async def offer(chat: Chat, model_id: str) -> ModelInfo:
    """The model ``model_id`` of the deployment's catalog.

    Raises:
        UsageError: the deployment offers no such model.
        terminal.api.ApiError: the server did not answer.
    """
    catalog = (await chat.api.models()).models
    for model in catalog:
        if model.id == model_id:
            return model
    ids = ", ".join(model.id for model in catalog)
    raise UsageError(f"unknown model {model_id}: the models are {ids} (/models describes them)")


def whose(chat: Chat) -> str:
    """Whose choice /model and /system show and change, in words."""
    return "this conversation" if chat.current else "the next conversation"


async def list_models(chat: Chat, arg: str) -> None:
    """Print the models, marking the default and the one in use."""
    catalog = (await chat.api.models()).models
    opened = chat.current
    current = opened.conversation.model if opened else chat.choice.model or ""
    chat.print(chat.renderer.models(catalog, current, whose(chat)))


async def choose_model(chat: Chat, arg: str) -> None:
    """Change the model of the open conversation (or of the next one)."""
    model_id = arg.strip()
    if not model_id or " " in model_id:
        raise UsageError("usage: /model ID, an ID from /models")
    model = await offer(chat, model_id)
    opened = chat.current
    if opened is None:
        chat.choice = replace(chat.choice, model=model.id)
        chat.notice(f"the next conversation will use {named(model)}")
        return
    try:
        await chat.api.change(opened.token, {"model": model.id})
    except ApiError as e:
        if e.status == 409:
            raise UsageError(STILL_WAITING) from e
        if e.status == 400 and not e.session_gone:  # the catalog changed since offer()
            raise UsageError(f"the server refused the model {model.id}: {e.detail}") from e
        raise
    opened.conversation.model = model.id
    chat.notice(f"replies now come from {named(model)}")


async def system_prompt(chat: Chat, arg: str) -> None:
    """Show (no text), set, or reset (``-``) the system prompt of the open conversation
    (or of the next one)."""
    text = arg.strip()
    opened = chat.current
    if not text:
        current = opened.conversation.system_prompt if opened else chat.choice.system_prompt
        if current:
            chat.notice(f"the system prompt of {whose(chat)}:")
            chat.print(chat.renderer.quote(current))
        else:
            chat.notice(f"{whose(chat)} follows the deployment's system prompt")
        return
    prompt = "" if text == "-" else text
    if opened is None:
        chat.choice = replace(chat.choice, system_prompt=prompt or None)
    else:
        try:
            await chat.api.change(opened.token, {"system_prompt": prompt})
        except ApiError as e:
            if e.status == 400 and not e.session_gone:
                raise UsageError(f"the system prompt is refused: {e.detail}") from e
            raise
        opened.conversation.system_prompt = prompt
    followed = "its own system prompt" if prompt else "the deployment's system prompt"
    chat.notice(f"{whose(chat)} now follows {followed}")
