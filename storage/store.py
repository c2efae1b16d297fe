"""Parley's reads and atomic writes in Redis, shared by the server and the worker.

:class:`Store` is one object made of the store's parts, each a module of its own:
:mod:`storage.sessions` (session documents), :mod:`storage.owners` (owners and their
conversations), :mod:`storage.queue` (accepting messages,
closing lost ones), :mod:`storage.streams` (the consumer group, trimming, pending
entries), :mod:`storage.replies` (attempts at replies, recorded once),
:mod:`storage.events` (reading a session's events back) and :mod:`storage.consumers`
(the groups' consumers, deleted once they hold nothing). Its errors and constants are
importable from here too.

The writes that must be atomic and idempotent are Lua scripts over the RedisJSON and
stream commands (``.lua`` files beside this module, run and decoded by
:mod:`storage.scripts`); redis-om's models cannot express them. Each script touches one
session's keys only plus its partition's message stream and waiting set: one hash slot
(:mod:`storage.keys`).
"""

from __future__ import annotations

from storage.consumers import Consumers, Released
from storage.events import Events
from storage.owners import NotTheOwner, OwnerFull, Owners, OwnerUnknown
from storage.pools import Backlog, Pools
from storage.queue import ModelChanged, Queue, Revision
from storage.refusals import (
    NotLastMessage,
    Overloaded,
    PromptTooLong,
    Refusal,
    ReplyInProgress,
    SessionFull,
    TooManyAttempts,
    TooManyPending,
    TooManyVersions,
)
from storage.replies import (
    ANSWERED,
    NOT_YET,
    RESTARTED,
    STALE,
    STARTED,
    Begun,
    Emit,
    Fenced,
    NotYourTurn,
    Replies,
)
from storage.sessions import MessageMark, SessionExpired, Sessions
from storage.streams import TRIM_ACKED, TRIM_MINID, Claimed, ClaimedEntry

__all__ = [
    "ANSWERED",
    "NOT_YET",
    "RESTARTED",
    "STALE",
    "STARTED",
    "TRIM_ACKED",
    "TRIM_MINID",
    "Backlog",
    "Begun",
    "Claimed",
    "ClaimedEntry",
    "Emit",
    "Fenced",
    "MessageMark",
    "ModelChanged",
    "NotLastMessage",
    "NotTheOwner",
    "NotYourTurn",
    "Overloaded",
    "OwnerFull",
    "OwnerUnknown",
    "PromptTooLong",
    "Refusal",
    "Released",
    "ReplyInProgress",
    "Revision",
    "SessionExpired",
    "SessionFull",
    "Store",
    "TooManyAttempts",
    "TooManyPending",
    "TooManyVersions",
]


class Store(Sessions, Owners, Queue, Pools, Replies, Events, Consumers):
    """Sessions, the message streams and session events in one Redis.

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
    """
