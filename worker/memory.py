"""Short-term memory: the prompt of one reply, built from the session's history."""

from __future__ import annotations

import math
from collections.abc import Sequence

from storage.models import MessageRecord, conversation
from worker.llm import PromptMessage

#: Tokens counted per message for the role and the chat template's separators.
MESSAGE_OVERHEAD_TOKENS = 4

#: A user message and its reply.
Turn = tuple[MessageRecord, MessageRecord]


def estimate_tokens(text: str) -> int:
    """An upper estimate of the tokens in ``text``: one per 3 UTF-8 bytes, rounded up.

    Subword tokenizers average about 4 bytes per token on English text and fewer on
    code or other scripts, so 3 leaves headroom without shipping a tokenizer per model.
    """
    return math.ceil(len(text.encode("utf-8")) / 3)


def _cost(message: MessageRecord) -> int:
    return estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS


class HistoryTooShort(LookupError):
    """The newest messages given are not enough to tell which turns the prompt holds:
    build it again from the whole history."""


def history_window(max_messages: int) -> int:
    """How many of the newest history messages to read for a prompt of at most
    ``max_messages`` history messages.

    Replies are recorded when they finish and user messages when they arrive, so the
    turns a prompt needs can be spread over more entries than they hold: room is left
    for a burst of later messages and for messages that got no reply. If it is not
    enough, :func:`build_prompt` says so (:class:`HistoryTooShort`).
    """
    return 2 * max_messages + 40


def build_prompt(
    history: Sequence[MessageRecord],
    seq: int,
    *,
    system_prompt: str,
    max_messages: int,
    max_tokens: int,
    complete: bool = True,
) -> list[PromptMessage]:
    """The chat messages sent to the model for the reply to user message ``seq``.

    The prompt is the system prompt, then the newest earlier turns (a user message and
    its reply, whole) that fit in ``max_messages`` messages and ``max_tokens`` estimated
    tokens, then user message ``seq`` itself. The turn just before is always kept, even
    over budget, so the model sees what it is answering after. Messages sent after
    ``seq``, and earlier messages that got no reply (they failed), are left out.

    Args:
        history: the session's stored messages, in any order: all of them, or (with
            ``complete`` false) the newest ones in recording order.
        seq: the number of the user message to answer.
        complete: whether ``history`` is the whole history.

    Raises:
        HistoryTooShort: ``history`` is not complete and older messages might change
            the prompt (the budget was not reached, or message ``seq`` is missing).
        LookupError: ``history`` has no user message numbered ``seq``.
    """
    ordered = conversation(history)
    index = next((i for i, m in enumerate(ordered) if m.role == "user" and m.seq == seq), None)
    if index is None:
        if not complete:
            raise HistoryTooShort(f"message {seq} is not among the newest messages")
        raise LookupError(f"no user message with seq {seq}")
    turns: list[Turn] = [
        (m, ordered[i + 1])
        for i, m in enumerate(ordered[:index])
        if m.role == "user" and ordered[i + 1].role == "assistant"
    ]
    kept, full = _newest_within_budget(turns, max_messages, max_tokens)
    # A suffix of the recording order holds every turn whose user message it holds, so
    # its turns are the newest of the whole history's: the choice is the same once the
    # budget stops it, or when the whole budget of messages is used.
    if not complete and not full and 2 * len(kept) + 2 <= max_messages:
        raise HistoryTooShort(f"the newest messages hold {len(kept)} turns before {seq}")
    prompt = [PromptMessage(role="system", content=system_prompt)] if system_prompt else []
    for user, reply in kept:
        prompt.append(PromptMessage(role="user", content=user.content))
        prompt.append(PromptMessage(role="assistant", content=reply.content))
    prompt.append(PromptMessage(role="user", content=ordered[index].content))
    return prompt


def _newest_within_budget(
    turns: list[Turn], max_messages: int, max_tokens: int
) -> tuple[list[Turn], bool]:
    """The newest of ``turns`` (given oldest first) that fit in ``max_messages``
    messages and ``max_tokens`` estimated tokens, oldest first, and whether the budget
    left some out. The newest turn is kept even over budget."""
    kept: list[Turn] = []
    used_messages, used_tokens = 0, 0
    for user, reply in reversed(turns):
        cost = _cost(user) + _cost(reply)
        if kept and (used_messages + 2 > max_messages or used_tokens + cost > max_tokens):
            return kept[::-1], True
        kept.append((user, reply))
        used_messages += 2
        used_tokens += cost
    return kept[::-1], False
