"""Reading a client's text frame: a command, or the message content itself.

Parsing is bounded in time and memory whatever the frame holds (see :func:`parse_frame`).
"""

from __future__ import annotations

import json
import re
from typing import Final

from pydantic import ValidationError

from protocol.wire import CLIENT_COMMAND, ClientCommand, ErrorCode, MessageCommand

#: A JSON command nested deeper than this (objects and arrays) is refused unparsed.
MAX_JSON_DEPTH: Final = 16


def max_command_chars(max_message_chars: int) -> int:
    """Longest text frame (characters) read as JSON: room for a message of
    ``max_message_chars`` characters, each escaped as a surrogate pair (12 characters),
    and the command around it. Longer frames are message content, so too long."""
    return 12 * max_message_chars + 1024


class FrameRefused(Exception):
    """A client frame that is neither a command nor message content: answer ``code``."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# Possessive quantifiers: a JSON string or a bracket, in linear time whatever the input.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_UTF8 = (
    "the frame is not valid UTF-8 text (it holds a lone surrogate or an invalid byte); send UTF-8"
)


def _deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests objects and arrays deeper than ``limit``."""
    if text.count("{") + text.count("[") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token[0]
        if bracket in "{[":
            depth += 1
            if depth > limit:
                return True
        elif bracket in "}]":
            depth -= 1
    return False


def _has_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a lone surrogate (from a ``\\ud800`` escape)."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_frame(text: str, *, max_message_chars: int) -> ClientCommand:
    """A client's text frame as a command; plain text is the message content itself.

    Only a frame that starts (after white space) with ``{``, is at most
    :func:`max_command_chars` long and nests at most :data:`MAX_JSON_DEPTH` deep is
    parsed as JSON, so parsing is bounded in time and memory. A JSON object with a
    ``type`` is a command; anything else is content.

    Args:
        text: the frame; the server decodes invalid UTF-8 to lone surrogates
            (``surrogateescape``), which are refused here.
        max_message_chars: the longest message (bounds the JSON parsed).

    Raises:
        FrameRefused: ``invalid_frame`` (not UTF-8, a lone surrogate, nested too deep, a
            command with missing or wrong fields) or ``unknown_command``.
    """
    if _SURROGATE.search(text) is not None:
        raise FrameRefused(ErrorCode.INVALID_FRAME, _NOT_UTF8)
    if not text.lstrip().startswith("{") or len(text) > max_command_chars(max_message_chars):
        return MessageCommand(content=text)
    if _deeper_than(text, MAX_JSON_DEPTH):
        raise FrameRefused(
            ErrorCode.INVALID_FRAME, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        data = json.loads(text)
    except ValueError:
        return MessageCommand(content=text)
    if not isinstance(data, dict) or "type" not in data:
        return MessageCommand(content=text)
    if _has_surrogate(data):
        raise FrameRefused(
            ErrorCode.INVALID_FRAME,
            "the command holds a lone surrogate (\\ud800-\\udfff not in a pair); "
            "strings must be valid Unicode",
        )
    try:
        return CLIENT_COMMAND.validate_python(data)
    except ValidationError as e:
        errors = e.errors()
        if any(err["type"] == "union_tag_invalid" for err in errors):
            raise FrameRefused(
                ErrorCode.UNKNOWN_COMMAND,
                f"unknown command type {_clip(repr(data['type']))}; "
                "known: message, resume, stop, regenerate, edit",
            ) from e
        detail = "; ".join(
            f"{_clip('.'.join(str(p) for p in err['loc'][1:]))}: {err['msg']}" for err in errors[:3]
        )
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise FrameRefused(ErrorCode.INVALID_FRAME, f"invalid command: {detail}{more}") from e
