"""Redis key and channel names.

Sessions are spread over :data:`PARTITIONS` partitions by the first hex digit of their
token (a UUID4, so the spread is uniform). A partition's digit is the hash tag of every
key of its sessions and of its message stream: ``parley:session:{7}:<token>``,
``parley:versions:{7}:<token>``, ``parley:events:{7}:<token>`` and
``parley:messages:{7}`` share one hash slot. The
scripts that append a message to a session's history and queue it in the same step stay
legal on a Redis Cluster, and the 16 message streams spread writes over its nodes.
"""

from __future__ import annotations

from typing import Final

from runtime.catalog import DEFAULT_MODEL_ID

PREFIX = "parley"

#: The partition names: a session's partition is the first hex digit of its token.
PARTITIONS: Final = tuple("0123456789abcdef")

#: Entries given up: their tries kept failing (``MAX_DELIVERIES``), their attempts kept
#: crashing their workers (``MAX_CRASHES``), or they could not be decoded.
DEAD_LETTER_STREAM = f"{PREFIX}:messages:dead"
#: The consumer group of the workers on every title stream (:func:`title_stream`).
TITLE_GROUP = "titlers"
#: The consumer group of the workers on every summary stream (:func:`summary_stream`).
SUMMARY_GROUP = "summarizers"
#: Sharded channel where servers announce stop commands to every worker (one per click).
STOP_CHANNEL = f"{PREFIX}:stop"
#: The consumer group of the workers on every message stream.
CONSUMER_GROUP = "workers"
#: The consumer that a stopping worker hands its unfinished entries to, in each group it
#: read (:mod:`storage.consumers`): one name for all, so it can delete its own.
HEIR_CONSUMER = "released"
#: The one consumer name of every server, when its pool watch reads a model's streams
#: to close the messages nobody serves (:mod:`server.pools`).
SERVER_CONSUMER = "servers"


def hash_tag(key: str) -> str:
    """The part of ``key`` that Redis Cluster hashes: the text between its first ``{``
    and the next ``}`` if not empty, else the whole key (the Redis Cluster
    specification, "Hash tags")."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def partition(token: str) -> str:
    """The partition of a session: the first hex digit of its token (``"0"`` if none)."""
    first = token[:1].lower()
    return first if first in PARTITIONS else "0"


def _of_model(model: str) -> str:
    """The suffix of a model's keys: none for :data:`runtime.catalog.DEFAULT_MODEL_ID`
    (the keys of a deployment with one model, as they always were), else ``:<model>``."""
    return "" if model == DEFAULT_MODEL_ID else f":{model}"


def message_stream(part: str, model: str = DEFAULT_MODEL_ID) -> str:
    """The stream of one partition's user messages for ``model`` (a catalog id), read by
    the consumer group of the workers that serve the model."""
    return f"{PREFIX}:messages:{{{part}}}{_of_model(model)}"


def model_streams(model: str) -> tuple[str, ...]:
    """Every partition's message stream of ``model``, in partition order."""
    return tuple(message_stream(p, model) for p in PARTITIONS)


#: Every partition's message stream of the default model, in partition order.
MESSAGE_STREAMS: Final = model_streams(DEFAULT_MODEL_ID)


def model_of_stream(stream: str) -> str:
    """The model whose messages ``stream`` (a :func:`message_stream`) queues."""
    _, _, suffix = stream.partition("}")
    return suffix[1:] if suffix.startswith(":") else DEFAULT_MODEL_ID


def message_stream_of(token: str, model: str = DEFAULT_MODEL_ID) -> str:
    """The message stream that queues a session's messages for ``model``."""
    return message_stream(partition(token), model)


def title_stream(model: str = DEFAULT_MODEL_ID) -> str:
    """The title jobs of ``model``'s sessions (a catalog id): a session's token once its
    first reply is recorded, read between replies by the group :data:`TITLE_GROUP` of
    the workers that serve the model. One stream a model (low volume: any slot)."""
    return f"{PREFIX}:titles{_of_model(model)}"


def summary_stream(model: str = DEFAULT_MODEL_ID) -> str:
    """The summary jobs of ``model``'s sessions: a session's token once its turns after
    the summary near the budget, read between replies by the group
    :data:`SUMMARY_GROUP` of the workers that serve the model."""
    return f"{PREFIX}:summaries{_of_model(model)}"


#: The title and summary streams of the default model (the names they always had).
TITLE_STREAM: Final = title_stream(DEFAULT_MODEL_ID)
SUMMARY_STREAM: Final = summary_stream(DEFAULT_MODEL_ID)


def waiting_key(part: str, model: str = DEFAULT_MODEL_ID) -> str:
    """The sorted set of a partition's sessions that may have messages for ``model``
    without a reply (scored by the time, ms, they were last checked or sent one),
    swept for messages whose stream entry is gone."""
    return f"{PREFIX}:waiting:{{{part}}}{_of_model(model)}"


def waiting_key_of(token: str, model: str = DEFAULT_MODEL_ID) -> str:
    """The :func:`waiting_key` set a session belongs to while it waits on ``model``."""
    return waiting_key(partition(token), model)


def pool_key(model: str) -> str:
    """The workers serving ``model``: a sorted set of consumer names scored by when
    (ms, Unix time) each last said it was alive."""
    return f"{PREFIX}:pool:{model}"


def session_key(token: str) -> str:
    """The RedisJSON document of a session (written by :class:`storage.models.Session`)."""
    return f"{PREFIX}:session:{{{partition(token)}}}:{token}"


def versions_key(token: str) -> str:
    """The RedisJSON document of a session's earlier versions of turns (regenerate,
    edit): ``{"<user message id>": [{content, timestamp, reply}, ...]}``, oldest first,
    written by ``revise.lua``; it lives and dies with the session document."""
    return f"{PREFIX}:versions:{{{partition(token)}}}:{token}"


def events_key(token: str) -> str:
    """The bounded stream of a session's reply events, kept for resume."""
    return f"{PREFIX}:events:{{{partition(token)}}}:{token}"


def owner_key(owner: str) -> str:
    """The record of an owner (a hash: when it was created), the client identity that
    owns several sessions. An owner token is a UUID4, partitioned like a session's."""
    return f"{PREFIX}:owner:{{{partition(owner)}}}:{owner}"


def conversations_key(owner: str) -> str:
    """An owner's sessions: a sorted set of session tokens scored by their creation time
    (ms), in the owner's hash slot (one slot per owner, whatever its sessions' slots)."""
    return f"{PREFIX}:conversations:{{{partition(owner)}}}:{owner}"


def channel(token: str) -> str:
    """The sharded Pub/Sub channel on which a session's events are announced to servers."""
    return f"{PREFIX}:chan:{{{partition(token)}}}:{token}"


def queue_keys(token: str, model: str) -> list[str]:
    """The keys of queueing a message of session ``token`` for ``model``: the session,
    the model's message stream and waiting set in the session's partition, and the
    session's versions (whose TTL is the session's)."""
    return [
        session_key(token),
        message_stream_of(token, model),
        waiting_key_of(token, model),
        versions_key(token),
    ]
