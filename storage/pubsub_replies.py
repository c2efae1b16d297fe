"""The replies a Pub/Sub connection has read from its socket but not yet handed out:
taken without redis-py's cost per reply.

``PubSub.parse_response`` reads the socket in chunks of up to 64 KB (hundreds of
messages when many sessions stream at once), then returns one reply per call through a
dozen awaited layers (its retries, a timeout, observability hooks, push-notification
dispatch that formats every message for a debug log): about 4.6 µs of CPU a message,
more than the rest of relaying it. The hub's listener calls it to wait for the next
chunk, then takes the replies already parsed from the hiredis reader that redis-py
feeds (:func:`buffered`), applying to each what ``parse_response`` would
(:func:`as_returned`).

This reaches into redis-py's hiredis parser (``_AsyncHiredisParser._reader``), which
has no public way to do it; with any other parser (redis-py without hiredis, or one
that changed), :func:`buffered` returns None and every reply goes through
``parse_response`` as before. ``tests/storage/test_pubsub_replies.py`` fails if the
pinned redis-py stops offering it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_PARSER: type | None
try:
    from hiredis import PushNotification
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser

    _PARSER = _AsyncHiredisParser
except ImportError:  # pragma: no cover  (no hiredis: nothing is taken early)
    _PARSER, NOT_ENOUGH_DATA = None, object()

#: What the callable :func:`buffered` returns when no whole reply is buffered.
NONE_BUFFERED: Final[object] = NOT_ENOUGH_DATA


def buffered(pubsub: PubSub) -> Callable[[], Any] | None:
    """What takes the next reply already read on ``pubsub``'s connection (the reply,
    as hiredis parsed it, or :data:`NONE_BUFFERED`), or None if the connection is not
    read by redis-py's hiredis parser. Look it up again after each ``parse_response``:
    a reconnect gives the connection a new reader.
    """
    parser = getattr(pubsub.connection, "_parser", None)
    if _PARSER is None or type(parser) is not _PARSER:
        return None
    if not getattr(parser, "_connected", False):  # as read_response refuses to read
        return None
    reader = getattr(parser, "_reader", None)
    return None if reader is None else reader.gets


async def as_returned(pubsub: PubSub, reply: Any) -> Any:
    """``reply``, taken from :func:`buffered`, as ``pubsub.parse_response`` would have
    returned it: errors raised, push notifications through redis-py's handlers.

    Raises:
        redis.exceptions.ConnectionError, ResponseError: ``reply`` is one (as
            ``parse_response`` raises it).
    """
    # hiredis's parser (read_response), then the connection's, then PubSub's.
    if isinstance(reply, RedisConnectionError):
        raise reply
    if isinstance(reply, PushNotification):
        reply = await pubsub.connection._parser.handle_push_response(reply)
    elif isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
        raise reply[0]
    if isinstance(reply, ResponseError):
        raise reply from None
    connection = pubsub.connection
    if (
        connection is not None
        and connection.health_check_interval
        and (reply in pubsub.health_check_response)
    ):
        return None
    return reply
