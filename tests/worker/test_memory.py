"""The prompt builder's memory budget."""

from __future__ import annotations

import pytest

from protocol.models import StoredMessage
from worker.memory import build_prompt, estimate_tokens


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
