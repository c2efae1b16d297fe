"""An entry of a message stream as a worker holds it: acknowledged once answered, or
dead-lettered once given up."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from storage import keys

DEAD_LETTER_MAXLEN = 10_000


@dataclass(frozen=True)
class StreamEntry:
    """An entry of a message stream, read or claimed by ``consumer`` (a
    :class:`worker.reply.Delivery`)."""

    redis: Redis[str]
    consumer: str
    #: ``(stream, entry id)``.
    key: tuple[str, str]
    fields: dict[str, str]
    #: The delivery count when taken over from another consumer, 0 when read fresh.
    deliveries: int

    async def ack(self) -> None:
        """``XACK`` the entry: it leaves the group's pending entries list."""
        stream, id_ = self.key
        await self.redis.xack(stream, keys.CONSUMER_GROUP, id_)  # type: ignore[no-untyped-call]

    async def dead_letter(self, reason: str) -> str:
        """Add the entry to the dead-letter stream, with where it was, why and who gave
        up; the id of its record there."""
        stream, id_ = self.key
        record: dict[str, str] = {
            **self.fields,
            "stream": stream,
            "entry_id": id_,
            "reason": reason,
            "consumer": self.consumer,
        }
        dead: str = await self.redis.xadd(
            keys.DEAD_LETTER_STREAM, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True
        )
        return dead

    async def withdraw(self, record: str) -> None:
        """Take record ``record`` (from :meth:`dead_letter`) out of the dead-letter
        stream again: giving up turned out to close nothing."""
        await self.redis.xdel(keys.DEAD_LETTER_STREAM, record)
