"""Parley's reads and atomic writes in Redis, shared by the server and the worker.

:class:`Store` holds one part a concern, each an object of its own module, reached by
name: ``store.sessions`` (:mod:`storage.sessions`, session documents), ``store.owners``
(:mod:`storage.owners`, owners and their conversations), ``store.queue``
(:mod:`storage.queue`, accepting messages, closing lost ones), ``store.streams``
(:mod:`storage.streams`, the consumer group, trimming, pending entries),
``store.deliveries`` (:mod:`storage.deliveries`, entries taken by a worker, which ack
and dead-letter themselves, and the job streams' queueing), ``store.replies``
(:mod:`storage.replies`, attempts at replies, recorded once),
``store.pools`` (:mod:`storage.pools`, worker pools per model), ``store.events``
(:mod:`storage.events`, reading a session's events back) and ``store.consumers``
(:mod:`storage.consumers`, the groups' consumers, deleted once they hold nothing). Each
part holds the client and the settings (:class:`storage.base.StoreBase`); none inherits
another's methods. Its errors and constants are importable from here too.

The writes that must be atomic and idempotent are Lua scripts over the RedisJSON and
stream commands (``.lua`` files beside this module, run and decoded by
:mod:`storage.scripts`); redis-om's models cannot express them. Each script touches one
session's keys only plus its partition's message stream and waiting set: one hash slot
(:mod:`storage.keys`).
"""

from __future__ import annotations

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage.consumers import Consumers, Released
from storage.deliveries import Deliveries, Delivery, Takeover
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
from storage.streams import TRIM_ACKED, TRIM_MINID, Claimed, ClaimedEntry, Streams

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
    "Deliveries",
    "Delivery",
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
    "Takeover",
    "TooManyAttempts",
    "TooManyPending",
    "TooManyVersions",
]


class Store:
    """Sessions, the message streams and session events in one Redis: one part a concern,
    each its own object over the same client and settings.

    Callers name the part: ``store.queue.enqueue(...)``, ``store.replies.finish(...)``.
    Three parts need another, given to them when built: the queue trims its streams as
    the streams part says (:meth:`storage.streams.Streams.trim_mode`, asked once and
    shared), the deliveries hand out the streams part's takeovers
    (:meth:`storage.streams.Streams.claim`), and the pools close the messages nobody
    serves through the replies part (:meth:`storage.replies.Replies.finish`). The other
    parts need none.

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.

    Attributes:
        redis: the client every part uses.
        settings: the settings every part reads.
        sessions: session documents (:class:`storage.sessions.Sessions`).
        owners: owners and their conversations (:class:`storage.owners.Owners`).
        streams: the message streams' mechanics (:class:`storage.streams.Streams`).
        queue: user messages in, lost ones out (:class:`storage.queue.Queue`).
        deliveries: entries taken by a worker, settled by themselves, and jobs queued
            (:class:`storage.deliveries.Deliveries`).
        replies: attempts at replies (:class:`storage.replies.Replies`).
        pools: worker pools per model (:class:`storage.pools.Pools`).
        events: a session's stored events (:class:`storage.events.Events`).
        consumers: the consumers of any group (:class:`storage.consumers.Consumers`).
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.sessions = Sessions(redis, settings)
        self.owners = Owners(redis, settings)
        self.streams = Streams(redis, settings)
        self.queue = Queue(redis, settings, self.streams)
        self.deliveries = Deliveries(redis, settings, self.streams)
        self.replies = Replies(redis, settings)
        self.pools = Pools(redis, settings, self.replies)
        self.events = Events(redis, settings)
        self.consumers = Consumers(redis, settings)
