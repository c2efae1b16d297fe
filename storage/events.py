"""Reading a session's event stream back, for sockets that resume or resync.

Event payloads on a session's channel are the event's JSON object with ``"event_id"``
as its first member (``library.lua``'s ``append_event`` writes them so);
:func:`protocol.event_ids.with_event_id` builds the same form from a stored event.

The stream keeps about the newest ``EVENTS_MAXLEN`` events (``XADD ... MAXLEN ~``
trims the oldest). :meth:`Events.events_since` says when a resume cursor lies before
what is kept, so that a socket can tell its client instead of replaying less in silence.
"""

from __future__ import annotations

from typing import NamedTuple

from protocol.event_ids import stream_id_key, with_event_id
from storage import keys
from storage.base import StoreBase


class EventsSince(NamedTuple):
    """What :meth:`Events.events_since` read.

    Attributes:
        payloads: the events after the cursor that are kept, oldest first, as channel
            payloads.
        gap: the id of the oldest event kept when events after the cursor may have been
            trimmed away (the cursor is older than it); None when nothing after the
            cursor is gone.
    """

    payloads: list[str]
    gap: str | None


class Events(StoreBase):
    """A session's stored events (a part of :class:`storage.store.Store`)."""

    async def events_after(self, token: str, after: str, count: int = 1000) -> list[str]:
        """The session's events after ``after`` (exclusive), oldest first, as channel payloads.

        Args:
            after: an event id, or ``"0"`` for every stored event.
            count: at most this many events.
        """
        entries = await self.redis.xrange(
            keys.events_key(token), min=f"({after}" if after != "0" else "-", count=count
        )
        return [with_event_id(fields["event"], event_id) for event_id, fields in entries]

    async def events_since(self, token: str, after: str, count: int) -> EventsSince:
        """The session's events after ``after`` (as :meth:`events_after`), and whether
        events after it were trimmed away.

        Trimming removes the oldest entries only, so nothing after ``after`` is gone
        while ``after`` itself is kept, or lies at or after the oldest event kept (an id
        that was never an event's). The read includes ``after``: when it is kept (the
        usual resume) its own entry comes first and settles it without another call;
        otherwise one more read finds the oldest event kept.

        Redis does not record the id of the last entry a trim removed (``XINFO STREAM``'s
        ``max-deleted-entry-id`` follows ``XDEL`` only), so a cursor that was itself
        trimmed counts as a gap even in the one case where the event after it is kept:
        the cursor was the very last entry trimmed. The client then reloads a history it
        did not need to; it never misses a gap.

        Args:
            after: an event id (not ``"0"``: the start of the stream has no gap).
            count: at most this many events.

        Raises:
            ValueError: ``after`` is not a stream id.
            redis.exceptions.RedisError, OSError: Redis could not be read.
        """
        cursor = stream_id_key(after)
        stream = keys.events_key(token)
        entries = await self.redis.xrange(stream, min=after, count=count + 1)
        gap: str | None = None
        if entries and stream_id_key(entries[0][0]) == cursor:
            entries = entries[1:]
        else:
            entries = entries[:count]
            oldest = await self.redis.xrange(stream, count=1)
            if oldest and stream_id_key(oldest[0][0]) > cursor:
                gap = str(oldest[0][0])
        payloads = [with_event_id(fields["event"], event_id) for event_id, fields in entries]
        return EventsSince(payloads, gap)

    async def last_event_id(self, token: str) -> str:
        """The id of the session's newest event, or ``"0"`` if it has none."""
        entries = await self.redis.xrevrange(keys.events_key(token), count=1)
        return str(entries[0][0]) if entries else "0"
