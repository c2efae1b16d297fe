"""Wire models: WebSocket events and commands, chat messages, message-stream entries.

Server and worker both build and parse these, so the two cannot drift apart. The JSON
shapes are the public contract described in the README.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class ErrorCode(StrEnum):
    """Stable codes of ``error`` events (the README lists what each means)."""

    EMPTY_MESSAGE = "empty_message"
    MESSAGE_TOO_LONG = "message_too_long"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_COMMAND = "unknown_command"
    SESSION_EXPIRED = "session_expired"
    TOO_MANY_PENDING = "too_many_pending"
    RATE_LIMITED = "rate_limited"
    LLM_UNAVAILABLE = "llm_unavailable"
    LLM_REJECTED = "llm_rejected"
    DELIVERY_FAILED = "delivery_failed"
    UNAVAILABLE = "unavailable"
    TOO_MANY_RESUMES = "too_many_resumes"
    RESUME_TRUNCATED = "resume_truncated"
    OVERLOADED = "overloaded"
    SESSION_FULL = "session_full"
    MESSAGE_LOST = "message_lost"
    TOO_MANY_REQUESTS = "too_many_requests"
    QUOTA_EXCEEDED = "quota_exceeded"
    REPLY_IN_PROGRESS = "reply_in_progress"
    NOT_LAST_MESSAGE = "not_last_message"
    TOO_MANY_VERSIONS = "too_many_versions"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-01-01T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatMessage(_Wire):
    """One message of a conversation, as clients see it."""

    id: str
    role: Literal["user", "assistant"]
    content: str
    timestamp: str = Field(description="ISO 8601 UTC")
    stopped: bool = Field(
        default=False, description="a reply cut short by a stop command: content is partial"
    )
    truncated: Literal["time", "length"] | None = Field(
        default=None,
        description="a reply cut at the worker's per-reply bound of time (REPLY_TIMEOUT_S) "
        "or length (REPLY_MAX_CHARS): content is partial",
    )
    versions: list[MessageVersion] | None = Field(
        default=None,
        description="a user message's earlier versions, oldest first, left by regenerate "
        "and edit commands; absent when it has none",
        exclude_if=lambda value: value is None,  # absent, not null, from other messages
    )


class MessageVersion(_Wire):
    """An earlier version of a turn, kept when a ``regenerate`` or ``edit`` replaced it:
    the user's text then and the reply it got (None if it got none: its reply failed)."""

    content: str
    timestamp: str = Field(description="ISO 8601 UTC: when the user's text was sent")
    reply: ChatMessage | None


class SessionView(_Wire):
    """A session with its history in conversation order (``POST /token``, ``/refresh_token``)."""

    token: str
    name: str
    session_start: str = Field(description="ISO 8601 UTC")
    messages: list[ChatMessage]


class ConversationExport(_Wire):
    """A whole conversation, to keep (``GET /session/export?format=json``). It holds no
    token: an exported file can be shared without giving the conversation away."""

    title: str = Field(description="The conversation's title; empty if it has none.")
    name: str
    session_start: str = Field(description="ISO 8601 UTC")
    exported: str = Field(description="ISO 8601 UTC")
    messages: list[ChatMessage]


class OwnerView(_Wire):
    """An owner (``POST /owner``): the bearer token that lists and owns conversations."""

    owner: str


class ConversationSummary(_Wire):
    """One conversation of an owner (``GET /conversations``)."""

    token: str = Field(description="The session token: open the conversation with it.")
    title: str = Field(description="The conversation's title; empty until it has one.")
    name: str
    created: str = Field(description="ISO 8601 UTC")
    last_activity: str = Field(description="ISO 8601 UTC: the newest message, or created")
    message_count: int = Field(description="User messages and replies in its history")


class ConversationPage(_Wire):
    """A page of an owner's conversations, newest first (``GET /conversations``)."""

    conversations: list[ConversationSummary]
    total: int = Field(description="The owner's conversations in all")
    next_offset: int | None = Field(description="The offset of the next page; null: last")


# Server -> client events. ``event_id`` is the id of the event in the session's event
# stream; the worker's script fills it in, so a client can resume after it.


class QueuedEvent(_Wire):
    """The user message is durable, in history, and queued for a reply."""

    type: Literal["queued"] = "queued"
    message_id: str
    message: ChatMessage | None = None


class TokenEvent(_Wire):
    """The next piece of a reply, in order (one or more model tokens, coalesced)."""

    type: Literal["token"] = "token"
    message_id: str
    content: str
    event_id: str | None = None


class RestartEvent(_Wire):
    """The reply is being generated again: discard the partial text received so far."""

    type: Literal["restart"] = "restart"
    message_id: str
    event_id: str | None = None


class DoneEvent(_Wire):
    """The whole reply, now recorded in history."""

    type: Literal["done"] = "done"
    message_id: str
    reply: ChatMessage
    event_id: str | None = None


class ErrorEvent(_Wire):
    """Something went wrong; ``message_id`` names the user message concerned, if any."""

    type: Literal["error"] = "error"
    message_id: str | None = None
    code: ErrorCode
    detail: str
    event_id: str | None = None
    retry_after_s: float | None = Field(
        default=None,
        description="an admission limit's refusal: seconds to wait before sending again",
        exclude_if=lambda value: value is None,  # absent, not null, from other errors
    )


class RevisedEvent(_Wire):
    """A ``regenerate`` or ``edit`` command replaced a turn's reply: ``message`` is the
    user message as it now stands, with the turn's earlier versions in ``versions``.
    Clients replace the message and drop its reply; the new reply follows (``token``
    events, then ``done`` or ``error``) for the same ``message_id``."""

    type: Literal["revised"] = "revised"
    message_id: str
    message: ChatMessage
    event_id: str | None = None


ServerEvent = Annotated[
    QueuedEvent | TokenEvent | RestartEvent | DoneEvent | ErrorEvent | RevisedEvent,
    Field(discriminator="type"),
]
SERVER_EVENT: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)


# Client -> server commands (text frames holding a JSON object with a "type").


class MessageCommand(_Wire):
    """Send a user message."""

    type: Literal["message"] = "message"
    content: str


class ResumeCommand(_Wire):
    """Replay the session's reply events after ``after`` (an ``event_id``), then go live."""

    type: Literal["resume"] = "resume"
    after: str


class StopCommand(_Wire):
    """Stop the reply being generated for the session (the oldest unanswered message).

    The reply ends with a ``done`` event whose ``reply`` has ``stopped: true`` and the
    text generated so far; with nothing unanswered, the command does nothing.
    """

    type: Literal["stop"] = "stop"


class RegenerateCommand(_Wire):
    """Ask again for the reply to the session's last user message.

    Accepted once every message of the session is answered; the reply it replaces
    becomes an earlier version of the turn (a ``revised`` event, then the new reply).
    Refused with ``reply_in_progress`` while a reply is generated or messages wait, with
    ``not_last_message`` if the session has no message, with ``too_many_versions`` at the
    bound of versions.
    """

    type: Literal["regenerate"] = "regenerate"


class EditCommand(_Wire):
    """Replace the text of the session's last user message and ask for a new reply.

    As :class:`RegenerateCommand`; ``message_id`` must be the last user message's id
    (else ``not_last_message``), and ``content`` follows a message's rules
    (``empty_message``, ``message_too_long``).
    """

    type: Literal["edit"] = "edit"
    message_id: str = Field(max_length=64)
    content: str


ClientCommand = Annotated[
    MessageCommand | ResumeCommand | StopCommand | RegenerateCommand | EditCommand,
    Field(discriminator="type"),
]
CLIENT_COMMAND: TypeAdapter[ClientCommand] = TypeAdapter(ClientCommand)

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


class MessageEntry(_Wire):
    """An entry of the message stream: which session's which message needs a reply.

    The content itself stays in the session's history, the one source of truth.
    ``seq`` numbers a session's messages from 1, in the order they were accepted.
    """

    token: str
    seq: int = Field(ge=1)
    message_id: str

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> MessageEntry:
        """Parse the field/value pairs of an entry read with ``XREADGROUP``.

        Raises:
            pydantic.ValidationError: a field is missing or malformed.
        """
        return cls.model_validate(fields)


def ends_reply(payload: str) -> bool:
    """Whether ``payload``, a server event as JSON (as the scripts publish it, with its
    ``event_id``), ends a reply: a ``done`` or an ``error``. Anything else does not."""
    try:
        event = SERVER_EVENT.validate_json(payload)
    except ValidationError:
        return False
    return isinstance(event, DoneEvent | ErrorEvent)
