"""What the terminal prints: server events and session history as plain text.

Pure functions, so tests check the output without a terminal or a server.
"""

from __future__ import annotations

from protocol.wire import (
    ChatMessage,
    DoneEvent,
    ErrorEvent,
    QueuedEvent,
    RestartEvent,
    RevisedEvent,
    ServerEvent,
    SessionView,
    TokenEvent,
)

USER_PREFIX = "you: "
REPLY_PREFIX = "parley: "
RESTART_MARKER = "[regenerating]"


def render_event(event: ServerEvent, streamed: str = "") -> str:
    """The text to print for one server event, written as is (no newline added).

    Args:
        event: a parsed server event.
        streamed: the text of this event's reply printed so far ("" if none), so that a
            ``done`` completes it rather than repeating it, and an ``error`` starts on
            its own line.
    """
    match event:
        case QueuedEvent():
            return ""
        case TokenEvent(content=content):
            return (REPLY_PREFIX if not streamed else "") + content
        case RestartEvent():
            return f"\n{RESTART_MARKER}\n"
        case DoneEvent(reply=reply):
            if not streamed:
                return f"{REPLY_PREFIX}{reply.content}\n"
            if reply.content.startswith(streamed):
                return reply.content[len(streamed) :] + "\n"
            # Some pieces were missed (e.g. the server resynced us): show the whole reply.
            return f"\n{REPLY_PREFIX}{reply.content}\n"
        case ErrorEvent(code=code, detail=detail):
            return ("\n" if streamed else "") + f"! {code.value}: {detail}\n"
        case RevisedEvent(message=message):
            return f"{RESTART_MARKER}\n{USER_PREFIX}{message.content}\n"


def render_message(message: ChatMessage) -> str:
    """One history message as a line."""
    prefix = USER_PREFIX if message.role == "user" else REPLY_PREFIX
    return f"{prefix}{message.content}\n"


def render_session(view: SessionView) -> str:
    """A session's header and its history, one message a line."""
    header = f"-- session of {view.name}, started {view.session_start} --\n"
    return header + "".join(render_message(m) for m in view.messages)
