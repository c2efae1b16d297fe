"""Wire models: WebSocket events and commands, chat messages, message-stream entries.

Server and worker both build and parse these, so the two cannot drift apart. The JSON
shapes are the public contract described in the README.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

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
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    MODEL_UNAVAILABLE = "model_unavailable"
    AUTH_EXPIRED = "auth_expired"


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
    model: str | None = Field(
        default=None,
        description="a reply's model: the id (GET /models) of the model that wrote it",
        exclude_if=lambda value: value is None,  # absent from user messages and old replies
    )
    versions: list[MessageVersion] | None = Field(
        default=None,
        description="a user message's earlier versions, oldest first, left by regenerate "
        "and edit commands, in history and export; absent when it has none, and from a "
        "revised event's message (its version brings the new one)",
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
    model: str = Field(
        default="",
        description="The id of the model it chose (GET /models); absent: the default.",
        exclude_if=lambda value: not value,  # the session-token-only answer stays as it was
    )
    system_prompt: str = Field(
        default="",
        description="Its own system prompt; absent: the deployment's.",
        exclude_if=lambda value: not value,
    )
    messages: list[ChatMessage]


class ModelInfo(_Wire):
    """A model a session may choose (``GET /models``)."""

    id: str = Field(description="What a session names it by.")
    label: str = Field(description="Its name for people.")
    description: str
    default: bool = Field(description="Whether sessions get it unless they choose.")
    available: bool = Field(
        description="Whether a live worker serves it now: if not, its messages are refused "
        "with model_unavailable."
    )


class ModelList(_Wire):
    """The models of the deployment (``GET /models``), the default first."""

    models: list[ModelInfo]


class ConversationExport(_Wire):
    """A whole conversation, to keep (``GET /session/export?format=json``). It holds no
    token: an exported file can be shared without giving the conversation away."""

    title: str = Field(description="The conversation's title; empty if it has none.")
    name: str
    session_start: str = Field(description="ISO 8601 UTC")
    exported: str = Field(description="ISO 8601 UTC")
    model: str = Field(default="", description="The id of the model it chose.")
    system_prompt: str = Field(
        default="", description="Its own system prompt; empty: the deployment's."
    )
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
    user message as it now stands (without its earlier versions), ``version`` the
    earlier version this revision kept, and ``version_count`` how many the turn keeps
    now. Clients replace the message, add ``version`` to the versions they know (unless
    they know ``version_count`` already: a replayed revision) and drop its reply; the new
    reply follows (``token`` events, then ``done`` or ``error``) for the same
    ``message_id``. The history (``GET /refresh_token``) holds every version."""

    type: Literal["revised"] = "revised"
    message_id: str
    message: ChatMessage
    version: MessageVersion | None = Field(
        default=None,
        description="the earlier version this revision kept: the text and the reply it "
        "replaced; absent when it kept none (a regenerate after a failed reply)",
        exclude_if=lambda value: value is None,
    )
    version_count: int = Field(
        ge=0,
        description="the turn's earlier versions now, this one included: ``version`` is "
        "the turn's version number ``version_count`` (from 1, oldest first)",
    )
    event_id: str | None = None


class GapEvent(_Wire):
    """A resume went past the events the session keeps: events after the client's cursor
    were trimmed from its event stream (the newest ``EVENTS_MAXLEN`` are kept), so the
    replay that follows starts at ``oldest_event_id``, the oldest event kept, and does
    not hold everything the client missed.

    Sent before the replayed events, only on a resume (``?after=``, ``resume``, or a
    socket's own catch-up) whose cursor is older than the oldest event kept. Replies that
    finished meanwhile are in history: reload it (``GET /refresh_token``). A reply still
    streaming may have lost its first tokens: its ``done`` brings it whole.
    """

    type: Literal["gap"] = "gap"
    oldest_event_id: str = Field(
        description="the oldest event the session keeps: the replay starts there"
    )
    detail: str


ServerEvent = Annotated[
    QueuedEvent | TokenEvent | RestartEvent | DoneEvent | ErrorEvent | RevisedEvent | GapEvent,
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


class MessageEntry(_Wire):
    """An entry of the message stream: which session's which message needs a reply.

    The content itself stays in the session's history, the one source of truth.
    ``seq`` numbers a session's messages from 1, in the order they were accepted.
    """

    token: str
    seq: int = Field(ge=1)
    message_id: str
    #: The digest of the client that sent it (``storage.admission.digest``; "": unknown),
    #: whose quota its reply is charged to.
    client: str = ""
    #: The W3C traceparent of the span that queued it while tracing is on ("": none), for
    #: the worker to continue the message's trace (``runtime.tracing``).
    traceparent: str = ""

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> MessageEntry:
        """Parse the field/value pairs of an entry read with ``XREADGROUP``.

        Raises:
            pydantic.ValidationError: a field is missing or malformed.
        """
        return cls.model_validate(fields)


def replies_ended(payload: str) -> list[str]:
    """The ``message_id`` of each event of ``payload`` that ends the reply to a message:
    a ``done``, or an ``error`` that names its message. ``payload`` is a server event as
    JSON (as the scripts publish it, with its ``event_id``), or several separated by
    newlines (JSON text as Parley writes it holds none); anything else ends nothing."""
    ended = []
    for text in payload.split("\n"):
        try:
            event = SERVER_EVENT.validate_json(text)
        except ValidationError:
            continue
        if isinstance(event, DoneEvent | ErrorEvent) and event.message_id is not None:
            ended.append(event.message_id)
    return ended


def ends_reply(payload: str) -> bool:
    """Whether ``payload``, server events as JSON as the scripts announce them (with
    their ``event_id``, one a line), ends a reply: its last is a ``done`` or an
    ``error``. Anything else does not."""
    try:
        event = SERVER_EVENT.validate_json(payload.rpartition("\n")[2])
    except ValidationError:
        return False
    return isinstance(event, DoneEvent | ErrorEvent)
