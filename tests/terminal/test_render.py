"""What the terminal prints, without a terminal: Markdown, history, lists, hostile text."""

from __future__ import annotations

from typing import Literal

from protocol.wire import ChatMessage, ConversationSummary, MessageVersion, SessionView
from terminal.render import REPLY_PREFIX, Renderer, clean

TS = "2026-01-01T12:00:00.000Z"


def assistant(
    content: str, stopped: bool = False, truncated: Literal["time", "length"] | None = None
) -> ChatMessage:
    return ChatMessage(
        id="a1",
        role="assistant",
        content=content,
        timestamp=TS,
        stopped=stopped,
        truncated=truncated,
    )


def test_a_reply_is_rendered_markdown_with_a_hanging_indent() -> None:
    text = Renderer(width=40).reply(assistant("Some **bold** and `code`\n\n- one\n- two"))
    assert text == (
        f"{REPLY_PREFIX}Some bold and code\n"
        "\n"
        f"{' ' * len(REPLY_PREFIX)} • one\n"
        f"{' ' * len(REPLY_PREFIX)} • two\n"
    )


def test_a_long_reply_wraps_under_its_prefix() -> None:
    lines = Renderer(width=30).reply(assistant("word " * 12)).splitlines()
    assert len(lines) > 1
    assert all(len(line) <= 30 for line in lines)
    assert all(line.startswith(" " * len(REPLY_PREFIX) + "word") for line in lines[1:])


def test_with_color_bold_is_a_style_not_asterisks() -> None:
    text = Renderer(width=40, color=True).reply(assistant("**bold**"))
    assert "\x1b[1mbold" in text and "**" not in text


def test_control_characters_from_the_server_are_shown_not_obeyed() -> None:
    hostile = "red\x1b[31m, title\x1b]0;pwned\x07, back\r\x08, csi\x9b2J"
    assert clean(hostile) == "red^[[31m, title^[]0;pwned^G, back^M^H, csi^[2J"
    for renderer in (Renderer(width=100), Renderer(width=100, color=True)):
        shown = (
            renderer.reply(assistant(hostile)) + renderer.user(hostile) + renderer.error(hostile)
        )
        assert "\x07" not in shown and "\r" not in shown and "\x9b" not in shown
        assert "\x1b[31m," not in shown and "\x1b]0" not in shown


def test_partial_replies_are_noted() -> None:
    renderer = Renderer(width=60)
    assert renderer.reply(assistant("Hel", stopped=True)).endswith("(stopped)\n")
    assert renderer.reply(assistant("Hel", truncated="time")).endswith("(cut at its time bound)\n")


def test_a_streaming_reply_shows_its_last_lines_within_the_rows_given() -> None:
    text = Renderer(width=40).streaming("\n\n".join(f"part {n}" for n in range(10)), rows=5)
    assert text.splitlines()[0] == f"{REPLY_PREFIX}…"
    assert text.splitlines()[-1].strip() == "part 9"
    assert len(text.splitlines()) == 5


def test_history_notes_earlier_versions_and_versions_prints_them() -> None:
    old_reply = assistant("Old reply")
    message = ChatMessage(
        id="u1",
        role="user",
        content="hi again",
        timestamp=TS,
        versions=[MessageVersion(content="hi", timestamp=TS, reply=old_reply)],
    )
    view = SessionView(
        token="t", name="Ada", session_start=TS, messages=[message, assistant("New")]
    )
    renderer = Renderer(width=80)
    history = renderer.session(view, "Greetings")
    assert history.startswith("-- Greetings: conversation of Ada, started ")
    assert history.endswith(
        f"you: hi again\n     (1 earlier version: /versions)\n{REPLY_PREFIX}New\n"
    )
    versions = renderer.versions([message])
    assert "you: hi\n" + f"{REPLY_PREFIX}Old reply\n" in versions
    assert versions.endswith("-- now --\nyou: hi again\n")
    assert renderer.versions([]) == "-- no turn has earlier versions --\n"


def test_conversations_are_numbered_newest_first_with_their_activity() -> None:
    item = ConversationSummary(
        token="t", title="", name="Ada", created=TS, last_activity=TS, message_count=1
    )
    named = item.model_copy(update={"title": "Trip", "message_count": 4})
    text = Renderer(width=80).conversations([named, item], total=3)
    first, second, more = text.splitlines()
    assert first.startswith("  1. Trip  ·  2026-01-0") and first.endswith("·  4 messages")
    assert second.startswith("  2. (untitled, Ada)") and second.endswith("·  1 message")
    assert more == "-- the newest 2 of 3 --"
    assert Renderer().conversations([], total=0) == "-- no conversations yet --\n"


def test_each_conversation_of_the_list_is_one_line() -> None:
    """A title or name with line breaks, escapes or bidi overrides (from before the
    server refused them) cannot add lines to the list or reorder it."""
    item = ConversationSummary(
        token="t",
        title="Trip\n  3. Forged\r\x1b[2K\u202eexe.txt",
        name="Ada",
        created=TS,
        last_activity=TS,
        message_count=1,
    )
    untitled = item.model_copy(update={"title": "", "name": "Ada\n\tLovelace"})
    lines = Renderer(width=80).conversations([item, untitled], total=2).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  1. Trip 3. Forged [2K exe.txt  ·  ")
    assert lines[1].startswith("  2. (untitled, Ada Lovelace)  ·  ")
    assert not [c for line in lines for c in line if ord(c) < 32 or c == "\u202e"]


def test_the_header_names_the_model_and_a_custom_system_prompt() -> None:
    renderer = Renderer(width=120)
    plain = SessionView(token="t", name="Ada", session_start=TS, messages=[])
    assert renderer.session(plain).endswith(", default model --\n")
    chosen = plain.model_copy(update={"model": "large", "system_prompt": "Be terse."})
    assert renderer.session(chosen).endswith(", model large, own system prompt --\n")
    assert "Be terse." not in renderer.session(chosen)  # /system shows it, on demand


def test_replies_name_their_model_once_the_conversation_has_used_two() -> None:
    small, large = (
        assistant(text).model_copy(update={"model": model})
        for text, model in (("Small one", "small"), ("Large one", "large"))
    )
    question = ChatMessage(id="u1", role="user", content="hi", timestamp=TS)
    renderer = Renderer(width=80)
    one = SessionView(token="t", name="Ada", session_start=TS, messages=[question, small])
    assert "(by " not in renderer.session(one)
    two = one.model_copy(update={"messages": [question, small, question, large]})
    assert renderer.session(two).endswith(
        f"{REPLY_PREFIX}Small one\n        (by small)\n"
        f"you: hi\n{REPLY_PREFIX}Large one\n        (by large)\n"
    )
    stopped = large.model_copy(update={"stopped": True})
    assert renderer.reply(stopped, by_model=True).endswith("(by large, stopped)\n")
