"""One open conversation as the terminal shows it: what streams, what waits, what was said.

:class:`Conversation` takes the server's events in order and says what to print for
good (a finished reply, rendered once; an error), while the replies still streaming
stay in :attr:`Conversation.streamed` for the live area above the prompt. Several
replies may stream at once (after a reconnect, or from another terminal on the same
session): each keeps its own text, keyed by its user message's id. Once replies have
come from more than one model, each says which model wrote it. After a ``gap`` (the
client was away longer than the session keeps events), :meth:`Conversation.caught_up`
prints what the reloaded history holds that the events missed.
"""

from __future__ import annotations

import asyncio

from protocol.wire import (
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GapEvent,
    QueuedEvent,
    RestartEvent,
    RevisedEvent,
    ServerEvent,
    SessionView,
    TokenEvent,
)
from terminal.render import Renderer, models_used

#: What to do about a ``model_unavailable`` error, in the terminal's words (the server's
#: detail names its REST API).
MODEL_UNAVAILABLE = (
    "no worker serves this conversation's model ({model}) now, so the message is not "
    "answered: choose another with /model ID (/models lists them), or send it again later"
)


#: What the terminal says on a ``gap`` event.
GAP = "events missed while away are no longer kept: reloading the history"


class Conversation:
    """The bookkeeping of one session's socket.

    ``idle`` is set when every message and command sent has been answered (or refused),
    which is when Ctrl-D or the end of piped input may exit. ``user_messages`` holds the
    session's user messages by id, in conversation order, as they now stand. ``model``
    and ``system_prompt`` are the session's choice ("": the default model, the
    deployment's prompt), ``used`` the models its replies came from.

    Args:
        renderer: renders what :meth:`show` returns.
        view: the session as loaded, to know its user messages (None: a new session).
    """

    def __init__(self, renderer: Renderer, view: SessionView | None = None) -> None:
        self.renderer = renderer
        self.streamed: dict[str, str] = {}  # user message id -> reply text so far
        self.unacked = 0  # sent, neither queued nor refused yet
        self.waiting: set[str] = set()  # queued, reply not finished
        self.user_messages: dict[str, ChatMessage] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.model = view.model if view else ""
        self.system_prompt = view.system_prompt if view else ""
        self.used = models_used(view.messages) if view else set()
        for message in view.messages if view else []:
            if message.role == "user":
                self.user_messages[message.id] = message

    def sent(self) -> None:
        """Count a message or command just sent: it will be queued or refused."""
        self.unacked += 1
        self.idle.clear()

    def last_user_message(self) -> ChatMessage | None:
        """The session's newest user message, if any."""
        return next(reversed(self.user_messages.values()), None)

    def show(self, event: ServerEvent) -> str:
        """What to print for good for ``event`` ("" if nothing), updating the state."""
        if isinstance(event, GapEvent):
            # The replies streaming lost tokens: each shows whole when its done comes.
            self.streamed.clear()
            return self.renderer.notice(GAP)
        message_id = event.message_id or ""
        text = ""
        match event:
            case QueuedEvent(message=message):
                self.unacked = max(0, self.unacked - 1)
                self.waiting.add(message_id)
                if message is not None:
                    self.user_messages[message_id] = message
            case TokenEvent(content=content):
                self.streamed[message_id] = self.streamed.get(message_id, "") + content
            case RestartEvent():
                self.streamed[message_id] = ""  # its tokens come again from the start
            case DoneEvent(reply=reply):
                self.streamed.pop(message_id, None)
                self.waiting.discard(message_id)
                self.used |= models_used([reply])
                text = self.renderer.reply(reply, by_model=len(self.used) > 1)
            case RevisedEvent():
                self.unacked = max(0, self.unacked - 1)  # a regenerate or edit, accepted
                self.waiting.add(message_id)
                self.streamed.pop(message_id, None)
                message = self._revised(event)
                self.user_messages[message_id] = message
                text = self.renderer.revised(message)
            case ErrorEvent(code=code, detail=detail):
                self.streamed.pop(message_id, None)
                if message_id in self.waiting:
                    self.waiting.discard(message_id)
                else:
                    self.unacked = max(0, self.unacked - 1)  # a refused message or command
                text = self.renderer.error(self._words(code, detail))
        self._settle()
        return text

    def _revised(self, event: RevisedEvent) -> ChatMessage:
        """The user message of ``event`` as it now stands, with the turn's earlier
        versions: those known, and the one the revision kept unless they hold it."""
        known = self.user_messages.get(event.message_id)
        versions = list(known.versions or []) if known is not None else []
        if event.version is not None and len(versions) < event.version_count:
            versions.append(event.version)
        return event.message.model_copy(update={"versions": versions or None})

    def caught_up(self, view: SessionView) -> str:
        """What to print for good of the history reloaded after a ``gap``: the replies
        that finished while their events were lost (with their user message, if it was
        sent elsewhere and is new here) and the turns regenerated or edited meanwhile;
        updating the state."""
        out: list[str] = []
        messages = view.messages
        for message, following in zip(messages, [*messages[1:], None], strict=True):
            if message.role != "user":
                continue
            reply = following if following is not None and following.role == "assistant" else None
            known = self.user_messages.get(message.id)
            revised = known is not None and len(message.versions or []) > len(known.versions or [])
            self.user_messages[message.id] = message
            if revised:
                out.append(self.renderer.revised(message))
            elif known is None:
                out.append(self.renderer.message(message))
            if reply is None:
                if known is None:
                    self.waiting.add(message.id)  # sent elsewhere: its reply is to come
            elif known is None or revised or message.id in self.waiting:
                self.waiting.discard(message.id)
                self.used |= models_used([reply])
                out.append(self.renderer.reply(reply, by_model=len(self.used) > 1))
        self._settle()
        return "".join(out)

    def _settle(self) -> None:
        if self.unacked == 0 and not self.waiting:
            self.idle.set()
        else:
            self.idle.clear()  # a reply asked for elsewhere (another socket) is awaited too

    def _words(self, code: ErrorCode, detail: str) -> str:
        """An error event, said to the person."""
        if code is ErrorCode.MODEL_UNAVAILABLE:
            return MODEL_UNAVAILABLE.format(model=self.model or "the default")
        return f"{code.value}: {detail}"

    def live(self, rows: int) -> str:
        """The replies still streaming, rendered, in ``rows`` lines at most (about)."""
        replies = [text for text in self.streamed.values() if text]
        if not replies:
            return ""
        each = max(rows // len(replies), 1)
        return "".join(self.renderer.streaming(text, each) for text in replies)
