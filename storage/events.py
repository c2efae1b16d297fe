"""Reading a session's event stream back, for sockets that resume or resync.

Event payloads on a session's channel are the event's JSON object with ``"event_id"``
as its first member (``library.lua``'s ``append_event`` writes them so);
:func:`protocol.event_ids.with_event_id` builds the same form from a stored event.
"""

from __future__ import annotations

from protocol.event_ids import with_event_id
from storage import keys
from storage.base import StoreBase


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

    async def last_event_id(self, token: str) -> str:
        """The id of the session's newest event, or ``"0"`` if it has none."""
        entries = await self.redis.xrevrange(keys.events_key(token), count=1)
        return str(entries[0][0]) if entries else "0"
