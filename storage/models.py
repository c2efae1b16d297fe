"""The session document in RedisJSON, modeled with redis-om; the one module that uses it.

redis-om defines the document: its fields, its key (:meth:`Session.make_key`) and its
validation. It reads and writes nothing: appending to ``messages`` must be atomic and
idempotent across processes, which redis-om cannot express, so those writes are Lua
scripts over the RedisJSON commands (:mod:`storage.store`), and a new session is written
with its TTL in one ``MULTI``/``EXEC`` (:meth:`Session.create`). redis-om's own
``save(pipeline=...)`` awaits each command it queues, and redis-py's asyncio cluster
pipeline empties its queue when awaited, so on a Redis Cluster it would write nothing;
its ``save()`` without a pipeline writes through a connection bound to the class, for
the whole process. Nothing searches sessions (they are read by key), so no RediSearch
index is created (redis-om's ``Migrator`` is not run): ``index=True`` only because
redis-om 1.x gives keys to such models alone.

A reply needs only part of a session, read by ``begin.lua``: :class:`SessionWindow`,
whose messages are :class:`HistoryMessage` structs that msgspec decodes and checks
straight from the JSON text, in C: 81 messages and the session's fields in 82 µs,
against 266 for pydantic's ``validate_json`` of the messages alone (:class:`MessageRecord`;
``timeit``, 3,000 calls each) and 5 times that for the redis-om models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import msgspec
from aredis_om import EmbeddedJsonModel, Field, JsonModel
from pydantic import BaseModel
from redis.asyncio import Redis

from protocol.wire import ChatMessage, ConversationExport, MessageVersion, SessionView, utc_now
from storage import keys
from storage.base import json_set_command


class MessageRecord(BaseModel):
    """A message as stored: the public fields plus what orders the conversation.

    ``seq`` numbers user messages from 1; ``entry`` is a user message's entry id in its
    partition's message stream; ``reply_to`` is the id of the user message an assistant
    message answers. ``stopped`` and ``truncated`` mark a partial reply, and a user
    message's ``versions`` are the turn's earlier versions (see
    :class:`protocol.wire.ChatMessage`): kept apart from the session document by
    ``revise.lua`` (:func:`storage.keys.versions_key`), they are here only when the
    history was read with them (:meth:`storage.sessions.Sessions.get_session`), or in a
    document written before they moved out.
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
    model: str | None = None
    versions: list[MessageVersion] | None = None

    def public(self) -> ChatMessage:
        """The message as clients see it."""
        return ChatMessage(
            id=self.id,
            role="assistant" if self.role == "assistant" else "user",
            content=self.content,
            timestamp=self.timestamp,
            stopped=self.stopped,
            truncated=self.truncated,
            model=self.model,
            versions=self.versions or None,
        )


class StoredMessage(EmbeddedJsonModel, MessageRecord):
    """:class:`MessageRecord` as redis-om's model of a message in a :class:`Session`."""


class SummaryRecord(BaseModel):
    """A session's rolling summary: what its turns up to user message ``seq`` said.

    Written only by ``summary.lua``, which accepts a new summary only if it extends
    the stored one from exactly the ``seq`` where that one ended, so no turn is ever
    folded into it twice or skipped (see :mod:`worker.summary`).

    Attributes:
        text: the summary.
        seq: the last user message it covers (its turn, and every turn before it); the
            prompt holds it, then the turns after ``seq``.
        tokens: its length in model tokens (the model's own count where it gave one,
            else the worker's estimate).
        timestamp: when it was written (ISO 8601 UTC).
    """

    text: str
    seq: int
    tokens: int
    timestamp: str


class StoredSummary(EmbeddedJsonModel, SummaryRecord):
    """:class:`SummaryRecord` as redis-om's model of a :class:`Session`'s summary."""


class HistoryEntry(Protocol):
    """A message of a session's history as the prompt is built from it: a
    :class:`MessageRecord` (a whole session read) or a :class:`HistoryMessage` (a
    reply's read)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def reply_to(self) -> str | None: ...


class HistoryMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a reply reads it (``begin.lua``): :class:`MessageRecord`'s fields,
    decoded and checked from JSON by msgspec (a missing field, or one of another type,
    is refused as pydantic refuses it); ``versions``, which the session document no
    longer holds, is skipped. ``tests/storage/test_models.py`` keeps both field lists
    the same."""

    id: str
    role: str
    content: str
    timestamp: str
    seq: int | None = None
    entry: str | None = None
    reply_to: str | None = None
    stopped: bool = False
    truncated: Literal["time", "length"] | None = None
    model: str | None = None


@dataclass(frozen=True)
class SessionWindow:
    """What a reply reads of its session (``begin.lua``): the stop mark, its choice of
    model and system prompt, its summary, and the newest messages of its history.

    Attributes:
        stop_seq: the last message whose reply a client asked to stop.
        model: the id of its model ("": the catalog's default).
        system_prompt: its own system prompt ("": the deployment's).
        summary: its rolling summary, if one was written.
        messages: the newest messages, in the order they were recorded.
    """

    messages: Sequence[HistoryEntry]
    stop_seq: int = 0
    model: str = ""
    system_prompt: str = ""
    summary: SummaryRecord | None = None


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
    :meth:`storage.replies.Replies.begin`. ``owner`` is the owner token whose conversations
    list the session ("" if none) and ``title`` its title ("" until one is given).
    ``model`` is the id of the catalog model it chose ("" : the default; see
    :mod:`runtime.catalog`) and ``system_prompt`` its own ("" : the deployment's).
    ``summary`` is the rolling summary of its oldest turns (None until one is written).
    ``size_bytes`` is the JSON text of its messages and of their earlier versions (which
    live in a document of their own, :func:`storage.keys.versions_key`), in bytes: kept
    by the scripts that write them and bounded by ``max_session_bytes``. ``versioned``
    says whether that versions document may exist (``revise.lua`` sets it), so the
    scripts that renew the session's TTL renew its TTL only then.

    The scripts keep seven more fields, which no reader needs: the session's rate
    window (``rate``), its quota of model tokens (``quota``) and its client's digest
    (``client``), see :class:`storage.admission.MessageLimits`; the waiting set it
    is in (``waiting``, see ``enqueue.lua``); when its key and its event stream were
    last set to expire (``expires_at``, ``events_until``, ms since the epoch), so that
    messages renew those TTLs only when due (``renewal_due`` in ``library.lua``); and
    the last call that queued a message (``last_queued``: the call's id and what it
    returned), so that the same ``enqueue.lua`` or ``revise.lua`` call sent again
    changes nothing.
    """

    token: str = Field(primary_key=True)
    name: str
    session_start: str
    seq: int = 0
    replied_seq: int = 0
    stop_seq: int = 0
    generator: str = ""
    crashes: str = ""
    owner: str = ""
    title: str = ""
    model: str = ""
    system_prompt: str = ""
    summary: StoredSummary | None = None
    size_bytes: int = 0
    versioned: bool = False
    messages: list[StoredMessage] = []  # noqa: RUF012  (pydantic copies defaults)

    class Meta:
        global_key_prefix = keys.PREFIX
        model_key_prefix = "session"

    # redis-om builds the document key through ``make_key``: the partition's hash tag.

    @classmethod
    def make_key(cls, part: str) -> str:
        """:func:`storage.keys.session_key` of the token ``part``."""
        return keys.session_key(part)

    async def create(self, redis: Redis[str], ttl_s: int) -> None:
        """Write the session with its TTL (s), atomically, in one round trip
        (``MULTI``, ``JSON.SET``, ``EXPIRE``, ``EXEC``): the document redis-om's ``save``
        would write.

        Raises:
            redis.exceptions.RedisError: Redis refused or is unreachable (nothing written).
        """
        key = keys.session_key(self.token)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.execute_command(*json_set_command(key, "$", self.model_dump(mode="json")))
            pipe.expire(key, ttl_s)
            await pipe.execute()

    def export(self) -> ConversationExport:
        """The conversation to keep: :meth:`view` without the token, with the title."""
        return ConversationExport(
            title=self.title,
            name=self.name,
            session_start=self.session_start,
            exported=utc_now(),
            model=self.model,
            system_prompt=self.system_prompt,
            messages=[m.public() for m in conversation(self.messages)],
        )

    def view(self) -> SessionView:
        """The session with its history in conversation order.

        Each user message is followed directly by its reply; user messages still
        waiting for a reply come last, in the order they were sent.
        """
        return SessionView(
            token=self.token,
            name=self.name,
            session_start=self.session_start,
            model=self.model,
            system_prompt=self.system_prompt,
            messages=[m.public() for m in conversation(self.messages)],
        )


M = TypeVar("M", bound=HistoryEntry)


def conversation(messages: Sequence[M]) -> list[M]:
    """Order messages as a conversation: users by ``seq``, each followed by its reply."""
    replies = {m.reply_to: m for m in messages if m.role == "assistant"}
    users = sorted((m for m in messages if m.role == "user"), key=lambda m: m.seq or 0)
    ordered: list[M] = []
    for user in users:
        ordered.append(user)
        reply = replies.get(user.id)
        if reply is not None:
            ordered.append(reply)
    return ordered
