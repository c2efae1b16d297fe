"""The prompt builder's memory budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.models import StoredMessage, SummaryRecord
from worker.memory import (
    SUMMARY_HEADING,
    HistoryTooShort,
    answered_turns,
    build_prompt,
    estimate_tokens,
    history_window,
    plan_prompt,
    summary_due,
    turn_tokens,
    turns_to_fold,
)


def history(turns: int, pending: int = 0, size: int = 10) -> list[StoredMessage]:
    messages: list[StoredMessage] = []
    for n in range(1, turns + pending + 1):
        messages.append(
            StoredMessage(
                id=f"u{n}", role="user", content=f"u{n}" + "x" * size, timestamp="t", seq=n
            )
        )
    # Replies are recorded after all the user messages, as happens when several are
    # sent before the first reply.
    for n in range(1, turns + 1):
        messages.append(
            StoredMessage(
                id=f"r{n}",
                role="assistant",
                content=f"r{n}" + "y" * size,
                timestamp="t",
                reply_to=f"u{n}",
            )
        )
    return messages


def contents(prompt: list[object]) -> list[str]:
    return [m.content[:3].rstrip("xy") for m in prompt]  # type: ignore[attr-defined]


def test_prompt_is_system_then_turns_then_the_message() -> None:
    prompt = build_prompt(
        history(2, pending=1), 3, system_prompt="S", max_messages=20, max_tokens=10_000
    )
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert contents(prompt) == ["S", "u1", "r1", "u2", "r2", "u3"]


def test_later_messages_never_enter_the_prompt() -> None:
    prompt = build_prompt(
        history(1, pending=3), 2, system_prompt="S", max_messages=20, max_tokens=10_000
    )
    assert contents(prompt) == ["S", "u1", "r1", "u2"]


def test_newest_turns_are_kept_within_the_message_budget() -> None:
    prompt = build_prompt(
        history(5, pending=1), 6, system_prompt="S", max_messages=4, max_tokens=10_000
    )
    assert contents(prompt) == ["S", "u4", "r4", "u5", "r5", "u6"]


def test_newest_turns_are_kept_within_the_token_budget() -> None:
    msgs = history(5, pending=1, size=300)
    per_turn = 2 * (estimate_tokens("u1" + "x" * 300) + 4)
    prompt = build_prompt(msgs, 6, system_prompt="", max_messages=100, max_tokens=2 * per_turn)
    assert contents(prompt) == ["u4", "r4", "u5", "r5", "u6"]


def test_the_previous_turn_is_kept_even_over_budget() -> None:
    prompt = build_prompt(
        history(3, pending=1, size=5000), 4, system_prompt="S", max_messages=1, max_tokens=1
    )
    assert contents(prompt) == ["S", "u3", "r3", "u4"]


def test_a_failed_message_without_reply_is_left_out() -> None:
    msgs = history(1, pending=2)  # u2 failed (no reply), u3 is being answered
    prompt = build_prompt(msgs, 3, system_prompt="S", max_messages=20, max_tokens=10_000)
    assert contents(prompt) == ["S", "u1", "r1", "u3"]


def test_unknown_seq_is_an_error() -> None:
    with pytest.raises(LookupError):
        build_prompt(history(1), 7, system_prompt="S", max_messages=20, max_tokens=10_000)


def test_token_estimate_counts_bytes() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("é" * 3) == 2  # 6 bytes


@st.composite
def recorded_history(draw: st.DrawFn) -> tuple[list[StoredMessage], int]:
    """A session's history as recorded when message ``seq`` is to be answered: user
    messages as they arrived, replies to the earlier ones in seq order (some failed and
    have none), interleaved as the arrivals and replies happened."""
    seq = draw(st.integers(1, 30))
    later = draw(st.integers(0, 5))
    messages: list[StoredMessage] = []
    sent, replied = 0, 0
    while replied < seq - 1 or sent < seq + later:
        if sent < seq + later and (sent <= replied or draw(st.booleans())):
            sent += 1
            size = draw(st.integers(0, 60))
            messages.append(
                StoredMessage(
                    id=f"u{sent}", role="user", content="u" * size, timestamp="t", seq=sent
                )
            )
            continue
        replied += 1
        if draw(st.integers(0, 9)) > 0:  # one in ten fails: no reply
            size = draw(st.integers(0, 60))
            messages.append(
                StoredMessage(
                    id=f"r{replied}",
                    role="assistant",
                    content="r" * size,
                    timestamp="t",
                    reply_to=f"u{replied}",
                )
            )
    return messages, seq


@settings(max_examples=300, deadline=None)
@given(
    recorded_history(),
    st.integers(1, 60),
    st.integers(2, 12),
    st.integers(10, 200),
)
def test_the_newest_messages_give_the_same_prompt_or_say_they_cannot(
    case: tuple[list[StoredMessage], int], window: int, max_messages: int, max_tokens: int
) -> None:
    messages, seq = case
    budget = {"system_prompt": "S", "max_messages": max_messages, "max_tokens": max_tokens}
    whole = build_prompt(messages, seq, **budget)  # type: ignore[arg-type]
    try:
        newest = build_prompt(messages[-window:], seq, complete=False, **budget)  # type: ignore[arg-type]
    except HistoryTooShort:
        return
    assert newest == whole


def test_the_window_read_is_enough_for_a_steady_conversation() -> None:
    """One message at a time, each answered: the window holds what the prompt needs."""
    messages = history(300, pending=1)
    ordered = [m for pair in zip(messages[:300], messages[301:], strict=True) for m in pair]
    ordered.append(messages[300])
    newest = ordered[-history_window(20) :]
    prompt = build_prompt(
        newest, 301, system_prompt="S", max_messages=20, max_tokens=10_000, complete=False
    )
    assert prompt == build_prompt(
        ordered, 301, system_prompt="S", max_messages=20, max_tokens=10_000
    )


def summary(seq: int, tokens: int = 5) -> SummaryRecord:
    return SummaryRecord(text="SUMMARY", seq=seq, tokens=tokens, timestamp="t")


def test_the_summary_follows_the_system_prompt_and_replaces_the_turns_it_covers() -> None:
    prompt = build_prompt(
        history(4, pending=1),
        5,
        system_prompt="S",
        max_messages=20,
        max_tokens=10_000,
        summary=summary(2),
    )
    assert prompt[0].role == "system" and prompt[0].content == f"S\n\n{SUMMARY_HEADING}\nSUMMARY"
    assert contents(prompt)[1:] == ["u3", "r3", "u4", "r4", "u5"]


def test_the_turn_before_is_kept_even_when_the_summary_covers_it() -> None:
    """A regenerate or edit of turn 5 after a summary folded turns 1 to 4 (made after
    reply 5): invariant 2 asks for message 4 and its reply in reply 5's prompt."""
    prompt = build_prompt(
        history(4, pending=1),
        5,
        system_prompt="S",
        max_messages=20,
        max_tokens=10_000,
        summary=summary(4),
    )
    assert prompt[0].content == f"S\n\n{SUMMARY_HEADING}\nSUMMARY"
    assert contents(prompt)[1:] == ["u4", "r4", "u5"]


def test_the_summary_counts_against_the_token_budget() -> None:
    msgs = history(4, pending=1, size=300)
    per_turn = turn_tokens(answered_turns(msgs)[:1])
    budget = {"system_prompt": "", "max_messages": 100, "max_tokens": 3 * per_turn}
    assert contents(build_prompt(msgs, 5, **budget, summary=summary(1, tokens=1)))[1:] == [  # type: ignore[arg-type]
        "u3",
        "r3",
        "u4",
        "r4",
        "u5",
    ]
    plan = plan_prompt(msgs, 5, **budget, summary=summary(1, tokens=per_turn + 1))  # type: ignore[arg-type]
    assert contents(plan.messages)[1:] == ["u4", "r4", "u5"]
    assert (plan.kept, len(plan.recent)) == (1, 3)
    # A summary larger than the whole budget is left out, and the turns fill it.
    plan = plan_prompt(msgs, 5, **budget, summary=summary(1, tokens=10**6))  # type: ignore[arg-type]
    assert plan.summary is None and contents(plan.messages) == [
        "u2",
        "r2",
        "u3",
        "r3",
        "u4",
        "r4",
        "u5",
    ]


def test_a_window_that_reaches_back_to_the_summary_is_enough() -> None:
    messages = history(6, pending=1)
    ordered = [m for pair in zip(messages[:6], messages[7:], strict=True) for m in pair]
    ordered.append(messages[6])  # u1 r1 ... u6 r6 u7, as recorded one at a time
    newest = ordered[-9:]  # from u3 on
    budget = {"system_prompt": "S", "max_messages": 100, "max_tokens": 10_000}
    with pytest.raises(HistoryTooShort):
        build_prompt(newest, 7, complete=False, **budget)  # type: ignore[arg-type]
    prompt = build_prompt(newest, 7, complete=False, summary=summary(3), **budget)  # type: ignore[arg-type]
    assert prompt == build_prompt(ordered, 7, summary=summary(3), **budget)  # type: ignore[arg-type]
    assert contents(prompt)[1:] == ["u4", "r4", "u5", "r5", "u6", "r6", "u7"]


@settings(max_examples=300, deadline=None)
@given(
    recorded_history(),
    st.integers(1, 60),
    st.integers(2, 12),
    st.integers(10, 200),
    st.integers(0, 30),
)
def test_with_a_summary_the_newest_messages_give_the_same_prompt_or_say_they_cannot(
    case: tuple[list[StoredMessage], int],
    window: int,
    max_messages: int,
    max_tokens: int,
    covered: int,
) -> None:
    messages, seq = case
    budget = {"system_prompt": "S", "max_messages": max_messages, "max_tokens": max_tokens}
    kept = summary(min(covered, seq - 1), tokens=3) if covered else None
    whole = build_prompt(messages, seq, summary=kept, **budget)  # type: ignore[arg-type]
    try:
        newest = build_prompt(messages[-window:], seq, complete=False, summary=kept, **budget)  # type: ignore[arg-type]
    except HistoryTooShort:
        return
    assert newest == whole


def test_a_summary_is_due_past_the_trigger_or_near_the_message_budget() -> None:
    turns = answered_turns(history(10, size=30))
    due = {"trigger_tokens": 10_000, "max_messages": 20, "count": estimate_tokens}
    assert not summary_due(turns[:9], **due)  # type: ignore[arg-type]
    assert summary_due(turns, **due)  # type: ignore[arg-type]  # 20 messages > 18
    by_tokens = {**due, "trigger_tokens": turn_tokens(turns[:3]) - 1}
    assert not summary_due(turns[:2], **by_tokens)  # type: ignore[arg-type]
    assert summary_due(turns[:3], **by_tokens)  # type: ignore[arg-type]


def test_the_oldest_turns_are_folded_leaving_half_and_never_the_newest() -> None:
    turns = answered_turns(history(10, size=30))
    fold = {"trigger_tokens": 10_000, "max_messages": 20, "count": estimate_tokens}
    assert turns_to_fold(turns, **fold) == turns[:5]  # type: ignore[arg-type]  # 10 messages left
    tokens = {**fold, "trigger_tokens": 2 * turn_tokens(turns[:2])}
    assert turns_to_fold(turns, **tokens) == turns[:8]  # type: ignore[arg-type]
    tiny = {**fold, "trigger_tokens": 1, "max_messages": 1}
    assert turns_to_fold(turns, **tiny) == turns[:9]  # type: ignore[arg-type]
    assert turns_to_fold(turns[:1], **tiny) == []  # type: ignore[arg-type]


def test_the_smaller_window_may_leave_out_even_the_previous_turn() -> None:
    plan = plan_prompt(
        history(3, pending=1, size=300),
        4,
        system_prompt="S",
        max_messages=20,
        max_tokens=0,
        keep_previous=False,
    )
    assert contents(plan.messages) == ["S", "u4"] and plan.kept == 0
