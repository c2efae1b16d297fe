"""Short-term memory: the prompt of one reply, built from the session's history and its
rolling summary.

The prompt is the system prompt, then the session's summary (the turns it covers, up to
its ``seq``, folded into a few lines by :mod:`worker.summary`), then the newest whole
turns after the summary that fit the budget, then the message itself. Token counts are
estimates, calibrated by the model's own counts (:mod:`worker.model.tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage.models import HistoryEntry, SummaryRecord, conversation
from worker.model.llm import PromptMessage
from worker.model.tokens import MESSAGE_OVERHEAD_TOKENS, estimate_tokens

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "SUMMARY_HEADING",
    "HistoryTooShort",
    "PromptPlan",
    "Turn",
    "answered_turns",
    "build_prompt",
    "estimate_tokens",
    "history_window",
    "plan_prompt",
    "summary_due",
    "turn_tokens",
    "turns_to_fold",
]

#: A user message and its reply.
Turn = tuple[HistoryEntry, HistoryEntry]
#: Counts the tokens of a text (e.g. :meth:`worker.model.tokens.TokenCounter.estimate`).
Count = Callable[[str], int]

#: What introduces the summary, after the system prompt, in the prompt's system message.
SUMMARY_HEADING = "Summary of the conversation before the messages below:"


def _cost(message: HistoryEntry, count: Count) -> int:
    return count(message.content) + MESSAGE_OVERHEAD_TOKENS


def turn_tokens(turns: Sequence[Turn], count: Count = estimate_tokens) -> int:
    """The tokens ``turns`` take in a prompt, as ``count`` counts them, with the
    messages' overhead."""
    return sum(_cost(user, count) + _cost(reply, count) for user, reply in turns)


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


def answered_turns(
    history: Sequence[HistoryEntry], *, after: int = 0, before: int | None = None
) -> list[Turn]:
    """The turns of ``history`` (any order) whose user message has a reply and a ``seq``
    above ``after`` and below ``before`` (None: any), oldest first."""
    ordered = conversation(history)
    return [
        (m, ordered[i + 1])
        for i, m in enumerate(ordered[:-1])
        if m.role == "user"
        and ordered[i + 1].role == "assistant"
        and (m.seq or 0) > after
        and (before is None or (m.seq or 0) < before)
    ]


@dataclass(frozen=True)
class PromptPlan:
    """A prompt and what it was made of.

    Attributes:
        messages: the prompt.
        message: the user message it answers.
        recent: the answered turns after the summary and before ``message`` that the
            history given holds, oldest first (the prompt may hold fewer).
        kept: how many of the newest of ``recent`` the prompt holds.
        history_tokens: tokens (as counted) of the summary and the turns it holds.
        summary: the summary it holds, if any.
    """

    messages: list[PromptMessage]
    message: HistoryEntry
    recent: list[Turn]
    kept: int
    history_tokens: int
    summary: SummaryRecord | None


def plan_prompt(
    history: Sequence[HistoryEntry],
    seq: int,
    *,
    system_prompt: str,
    max_messages: int,
    max_tokens: int,
    complete: bool = True,
    summary: SummaryRecord | None = None,
    count: Count = estimate_tokens,
    keep_previous: bool = True,
) -> PromptPlan:
    """The prompt for the reply to user message ``seq``, and what it holds.

    The prompt is the system prompt, then ``summary`` (if any, and if it fits in
    ``max_tokens``), then the newest turns after the summary's ``seq`` (a user message
    and its reply, whole) that fit in ``max_messages`` messages and what is left of
    ``max_tokens`` tokens, then user message ``seq`` itself. With ``keep_previous``, the
    turn just before is kept even over budget or covered by the summary, so the model
    sees what it is answering after. Messages sent after ``seq``, earlier messages that
    got no reply (they failed), and the other turns the summary covers are left out.
    The summary joins the system prompt in one system message: some chat templates
    refuse a second one.

    Args:
        history: the session's stored messages, in any order: all of them, or (with
            ``complete`` false) the newest ones in recording order.
        seq: the number of the user message to answer.
        complete: whether ``history`` is the whole history.
        summary: the session's rolling summary (None: none, or not used).
        count: the tokens of a text (an estimate; ``summary.tokens`` is used as is).
        keep_previous: keep the turn before ``seq`` even over budget.

    Raises:
        HistoryTooShort: ``history`` is not complete and older messages might change
            the prompt (the budget was not reached before the summary, or message
            ``seq`` is missing).
        LookupError: ``history`` has no user message numbered ``seq``.
    """
    ordered = conversation(history)
    message = next((m for m in ordered if m.role == "user" and m.seq == seq), None)
    if message is None:
        if not complete:
            raise HistoryTooShort(f"message {seq} is not among the newest messages")
        raise LookupError(f"no user message with seq {seq}")
    # A summary made after a regenerate or edit of an earlier turn is not ours; one
    # over the whole budget is left out.
    if summary is not None and (summary.seq >= seq or summary.tokens > max_tokens):
        summary = None
    recent = answered_turns(ordered, after=_shown_after(summary, seq, keep_previous), before=seq)
    budget = max_tokens - (summary.tokens if summary is not None else 0)
    kept, used, full = _newest_within_budget(recent, max_messages, budget, count, keep_previous)
    if not (complete or full or _reaches(ordered, summary)) and 2 * len(kept) + 2 <= max_messages:
        # A suffix of the recording order holds its user messages' whole turns: the
        # choice is final once the budget stops it, it uses every message allowed, or
        # it reaches back to the summary.
        raise HistoryTooShort(f"the newest messages hold {len(kept)} turns before {seq}")
    prompt = _messages(system_prompt, summary, kept, message)
    tokens = used + (summary.tokens if summary is not None else 0)
    return PromptPlan(prompt, message, recent, len(kept), tokens, summary)


def _shown_after(summary: SummaryRecord | None, seq: int, keep_previous: bool) -> int:
    """The last turn not shown as it was in the prompt of message ``seq``: the
    summary's, but with ``keep_previous`` the turn just before is shown even when the
    summary covers it (a regenerate or edit of the newest turn after a summary folded
    the one before)."""
    after = summary.seq if summary is not None else 0
    return min(after, seq - 2) if keep_previous else after


def _reaches(ordered: Sequence[HistoryEntry], summary: SummaryRecord | None) -> bool:
    """Whether ``ordered`` holds a user message that ``summary`` covers."""
    return summary is not None and any(
        m.role == "user" and (m.seq or 0) <= summary.seq for m in ordered
    )


def _messages(
    system_prompt: str, summary: SummaryRecord | None, kept: list[Turn], message: HistoryEntry
) -> list[PromptMessage]:
    """The chat messages: one system message (the prompt, then the summary under
    :data:`SUMMARY_HEADING`), the turns ``kept``, then ``message``."""
    system = system_prompt
    if summary is not None:
        system = f"{system}\n\n" if system else ""
        system += f"{SUMMARY_HEADING}\n{summary.text}"
    prompt = [PromptMessage(role="system", content=system)] if system else []
    for user, reply in kept:
        prompt.append(PromptMessage(role="user", content=user.content))
        prompt.append(PromptMessage(role="assistant", content=reply.content))
    prompt.append(PromptMessage(role="user", content=message.content))
    return prompt


def build_prompt(
    history: Sequence[HistoryEntry],
    seq: int,
    *,
    system_prompt: str,
    max_messages: int,
    max_tokens: int,
    complete: bool = True,
    summary: SummaryRecord | None = None,
    count: Count = estimate_tokens,
) -> list[PromptMessage]:
    """The chat messages sent to the model for the reply to user message ``seq``: the
    prompt of :func:`plan_prompt` (same arguments and errors)."""
    return plan_prompt(
        history,
        seq,
        system_prompt=system_prompt,
        max_messages=max_messages,
        max_tokens=max_tokens,
        complete=complete,
        summary=summary,
        count=count,
    ).messages


def _newest_within_budget(
    turns: list[Turn], max_messages: int, max_tokens: int, count: Count, keep_newest: bool
) -> tuple[list[Turn], int, bool]:
    """The newest of ``turns`` (given oldest first) that fit in ``max_messages``
    messages and ``max_tokens`` tokens, oldest first, the tokens they take, and whether
    the budget left some out. With ``keep_newest``, the newest turn is kept even over
    budget."""
    kept: list[Turn] = []
    used_messages, used_tokens = 0, 0
    for user, reply in reversed(turns):
        cost = _cost(user, count) + _cost(reply, count)
        over = used_messages + 2 > max_messages or used_tokens + cost > max_tokens
        if over and (kept or not keep_newest):
            return kept[::-1], used_tokens, True
        kept.append((user, reply))
        used_messages += 2
        used_tokens += cost
    return kept[::-1], used_tokens, False


def summary_due(
    recent: Sequence[Turn], *, trigger_tokens: int, max_messages: int, count: Count
) -> bool:
    """Whether turns not yet summarized, ``recent``, call for a summary: more than
    ``trigger_tokens`` tokens, or more than ``max_messages - 2`` messages (the next
    prompt, one turn longer, would no longer hold them all)."""
    return turn_tokens(recent, count) > trigger_tokens or 2 * len(recent) > max_messages - 2


def turns_to_fold(
    recent: Sequence[Turn], *, trigger_tokens: int, max_messages: int, count: Count
) -> list[Turn]:
    """The oldest of ``recent`` (oldest first) to fold into the summary: as few as leave
    at most half of ``trigger_tokens`` tokens and half of ``max_messages`` messages, so
    that several replies go by before the next summary; never the newest turn, which
    the next reply's prompt must hold as it is."""
    fold = 0
    left = list(recent)
    while len(left) > 1 and (
        turn_tokens(left, count) > trigger_tokens // 2 or 2 * len(left) > max_messages // 2
    ):
        left.pop(0)
        fold += 1
    return list(recent[:fold])
