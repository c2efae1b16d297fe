"""``protocol.wire.parse_frame`` on any text: a command or ``FrameRefused``, nothing else,
and whatever it returns can be serialized (no lone surrogate reaches a model)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.frames import MAX_JSON_DEPTH, FrameRefused, max_command_chars, parse_frame
from protocol.wire import ErrorCode, ErrorEvent, MessageCommand, ResumeCommand, StopCommand
from tests.hostile.frames import FRAMES, Frame

MAX_CHARS = 4000


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(FRAMES)
def test_any_text_is_a_command_or_refused_with_an_error_that_serializes(frame: Frame) -> None:
    _, data = frame
    text = data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")
    try:
        command = parse_frame(text, max_message_chars=MAX_CHARS)
    except FrameRefused as e:
        assert e.code in (ErrorCode.INVALID_FRAME, ErrorCode.UNKNOWN_COMMAND)
        assert len(e.detail) < 500
        ErrorEvent(code=e.code, detail=e.detail).model_dump_json()  # serializable
        return
    assert isinstance(command, MessageCommand | ResumeCommand | StopCommand)
    command.model_dump_json()  # raises on a lone surrogate


@given(st.integers(1, 60_000))
def test_nesting_beyond_the_bound_is_refused_and_too_long_is_content(depth: int) -> None:
    text = '{"type":"message","content":' + "[" * depth + "]" * depth + "}"
    if len(text) > max_command_chars(MAX_CHARS):
        # Never parsed: message content (then too long for a message).
        assert parse_frame(text, max_message_chars=MAX_CHARS) == MessageCommand(content=text)
    elif depth + 1 > MAX_JSON_DEPTH:
        with pytest.raises(FrameRefused) as refused:
            parse_frame(text, max_message_chars=MAX_CHARS)
        assert refused.value.code is ErrorCode.INVALID_FRAME
    else:
        with pytest.raises(FrameRefused) as refused:  # parsed: content is not a string
            parse_frame(text, max_message_chars=MAX_CHARS)
        assert "content" in refused.value.detail
