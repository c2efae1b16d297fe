"""Coalescing a reply's deltas into token events (the worker's rule, also the benchmark
baseline's, so both stream the same way)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class EndOfReply(Exception):
    """Put on a delta queue to end the reply early (a stop), like ``None`` ends it."""


#: What a model reader puts on the queue: a delta, ``None`` at the end of the reply,
#: :class:`EndOfReply` to end it early, or the exception that broke the stream.
Delta = str | BaseException | None


async def read_deltas(stream: AsyncIterator[str], queue: asyncio.Queue[Delta]) -> None:
    """Put each delta of ``stream`` on ``queue``, then ``None``; or the exception that
    broke the stream (run as a task beside :class:`Coalescer`)."""
    try:
        async for delta in stream:
            queue.put_nowait(delta)
        queue.put_nowait(None)
    except Exception as e:
        queue.put_nowait(e)


class Coalescer:
    """Turns a queue of deltas into the text of successive token events.

    Every call to :meth:`next_piece` joins the deltas queued by then, so deltas that
    arrive while the previous event is being published go out together. Whitespace at
    either end of a reply is noise (models often open with a space and close with a
    newline): it is held back and sent only once text follows it, so the pieces still
    join to exactly the reply, which is ``"".join(parts)``.

    Args:
        queue: the deltas, filled by the task reading the model's stream.
    """

    def __init__(self, queue: asyncio.Queue[Delta]) -> None:
        self.queue = queue
        self.parts: list[str] = []
        #: Whether the end of the reply (``None`` or :class:`EndOfReply`) was taken.
        self.finished = False
        self._held = ""

    async def next_piece(self) -> str | None:
        """The text of the next token event, waiting for a delta if none is queued;
        None once the reply has ended.

        Raises:
            BaseException: the exception the reader queued (a broken stream).
        """
        while not self.finished:
            batch: list[str] = []
            item = await self.queue.get()
            while True:
                if item is None or isinstance(item, EndOfReply):
                    self.finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
                if self.queue.empty():
                    break
                item = self.queue.get_nowait()
            text = self._held + "".join(batch)
            if not self.parts:
                text = text.lstrip()
            body = text.rstrip()
            self._held = text[len(body) :]
            if body:
                self.parts.append(body)
                return body
        return None
