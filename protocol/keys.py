"""Redis key and channel names.

Every per-session key carries the session token as a hash tag (``{token}``), so a
session's document, its event stream and its channel map to one hash slot and the
scripts that touch them stay legal on a Redis Cluster.
"""

from __future__ import annotations

PREFIX = "parley"

#: The stream of user messages that workers read in a consumer group.
MESSAGE_STREAM = f"{PREFIX}:messages"
#: Entries that could not be processed after ``MAX_DELIVERIES`` tries, or not decoded.
DEAD_LETTER_STREAM = f"{PREFIX}:messages:dead"
#: The consumer group of the workers on :data:`MESSAGE_STREAM`.
CONSUMER_GROUP = "workers"


def session_key(token: str) -> str:
    """The RedisJSON document of a session (written by :class:`protocol.models.Session`)."""
    return f"{PREFIX}:session:{{{token}}}"


def events_key(token: str) -> str:
    """The bounded stream of a session's reply events, kept for resume."""
    return f"{PREFIX}:events:{{{token}}}"


def channel(token: str) -> str:
    """The Pub/Sub channel on which a session's events are announced to servers."""
    return f"{PREFIX}:chan:{{{token}}}"


def token_of_channel(name: str) -> str:
    """The session token inside a channel name from :func:`channel`.

    Raises:
        ValueError: ``name`` is not a session channel.
    """
    start, end = name.find("{"), name.rfind("}")
    if start < 0 or end <= start:
        raise ValueError(f"not a session channel: {name!r}")
    return name[start + 1 : end]
