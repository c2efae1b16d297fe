"""The session document in RedisJSON, modeled with redis-om.

redis-om creates, reads and indexes sessions. Appending to ``messages`` must be atomic
and idempotent across processes, which redis-om cannot express, so those writes are
Lua scripts over the RedisJSON commands (:mod:`storage.store`).
"""

from __future__ import annotations

from typing import Literal

from aredis_om import EmbeddedJsonModel, Field, JsonModel

from protocol.wire import ChatMessage, SessionView
from storage import keys


class StoredMessage(EmbeddedJsonModel):
    """A message as stored: the public fields plus what orders the conversation.

    ``seq`` numbers user messages from 1; ``entry`` is a user message's entry id in its
    partition's message stream; ``reply_to`` is the id of the user message an assistant
    message answers. ``stopped`` and ``truncated`` mark a partial reply (see
    :class:`protocol.wire.ChatMessage`).
    """

    id: str
    role: str
    content: str
    timestamp: str
    seq: int | None = None
    entry: str | None = None
    reply_to: str | None = None
    stopped: bool = False
    truncated: Literal["time", "length"] | None = None

    def public(self) -> ChatMessage:
        """The message as clients see it."""
        return ChatMessage(
            id=self.id,
            role="assistant" if self.role == "assistant" else "user",
            content=self.content,
            timestamp=self.timestamp,
            stopped=self.stopped,
            truncated=self.truncated,
        )


class Session(JsonModel, index=True):
    """A chat session, stored at ``parley:session:{<token>}``.

    ``messages`` holds user messages and replies in the order they were recorded;
    :meth:`view` gives the conversation order. ``seq`` is the number of the last
    accepted user message and ``replied_seq`` that of the last one answered (or failed);
    replies are recorded strictly in ``seq`` order, which makes recording idempotent.
    ``stop_seq`` is the last message whose reply a client asked to stop, and
    ``generator`` the attempt now generating a reply (``"<seq>:<id>"``, or
    ``"<seq>:failed"`` once it failed), and ``crashes`` how many attempts at the oldest
    unanswered message ended with their worker's death (``"<seq>:<n>"``), see
    :meth:`storage.store.Store.begin`.
    """

    token: str = Field(primary_key=True)
    name: str = Field(index=True)
    session_start: str
    seq: int = 0
    replied_seq: int = 0
    stop_seq: int = 0
    generator: str = ""
    crashes: str = ""
    messages: list[StoredMessage] = []  # noqa: RUF012  (pydantic copies defaults)

    class Meta:
        global_key_prefix = keys.PREFIX
        model_key_prefix = "session"

    # redis-om builds the document key, the index prefix and ``get``'s key all through
    # ``make_key``; wrapping the token in braces makes it the hash tag.

    @classmethod
    def make_key(cls, part: str) -> str:
        """``parley:session:{<part>}``, or the bare prefix (for the index) if ``part`` is empty."""
        return keys.session_key(part) if part else f"{keys.PREFIX}:session:"

    def view(self) -> SessionView:
        """The session with its history in conversation order.

        Each user message is followed directly by its reply; user messages still
        waiting for a reply come last, in the order they were sent.
        """
        return SessionView(
            token=self.token,
            name=self.name,
            session_start=self.session_start,
            messages=[m.public() for m in conversation(self.messages)],
        )


def conversation(messages: list[StoredMessage]) -> list[StoredMessage]:
    """Order messages as a conversation: users by ``seq``, each followed by its reply."""
    replies = {m.reply_to: m for m in messages if m.role == "assistant"}
    users = sorted((m for m in messages if m.role == "user"), key=lambda m: m.seq or 0)
    ordered: list[StoredMessage] = []
    for user in users:
        ordered.append(user)
        reply = replies.get(user.id)
        if reply is not None:
            ordered.append(reply)
    return ordered
