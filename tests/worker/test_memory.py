"""The prompt builder's memory budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.models import StoredMessage
from worker.memory import HistoryTooShort, build_prompt, estimate_tokens, history_window


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
