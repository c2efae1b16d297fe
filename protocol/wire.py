"""Wire models: WebSocket events and commands, chat messages, message-stream entries.

Server and worker both build and parse these, so the two cannot drift apart. The JSON
shapes are the public contract described in the README.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


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
    OVERLOADED = "overloaded"
    SESSION_FULL = "session_full"
    MESSAGE_LOST = "message_lost"


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


class SessionView(_Wire):
    """A session with its history in conversation order (``POST /token``, ``/refresh_token``)."""

    token: str
    name: str
    session_start: str = Field(description="ISO 8601 UTC")
    messages: list[ChatMessage]


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


ServerEvent = Annotated[
    QueuedEvent | TokenEvent | RestartEvent | DoneEvent | ErrorEvent, Field(discriminator="type")
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


ClientCommand = Annotated[MessageCommand | ResumeCommand | StopCommand, Field(discriminator="type")]
CLIENT_COMMAND: TypeAdapter[ClientCommand] = TypeAdapter(ClientCommand)


class MessageEntry(_Wire):
    """An entry of the message stream: which session's which message needs a reply.

    The content itself stays in the session's history, the one source of truth.
    ``seq`` numbers a session's messages from 1, in the order they were accepted.
    """

    token: str
    seq: int = Field(ge=1)
    message_id: str

    def to_fields(self) -> dict[str, str]:
        """The entry as the field/value pairs given to ``XADD``."""
        return {"token": self.token, "seq": str(self.seq), "message_id": self.message_id}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> MessageEntry:
        """Parse the field/value pairs of an entry read with ``XREADGROUP``.

        Raises:
            pydantic.ValidationError: a field is missing or malformed.
        """
        return cls.model_validate(fields)
