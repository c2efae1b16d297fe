"""Publishing a reply as it streams: its pieces as ``token`` events, joined over a short
window, and the end of the stream when a stop or the reply's deadline comes."""

from __future__ import annotations

import asyncio
import time

from protocol.wire import RestartEvent, TokenEvent
from storage.store import Emit, SessionExpired
from worker.coalesce import Coalescer, Delta, EndOfReply
from worker.config import WorkerSettings
from worker.emits import EmitBatcher
from worker.turn import Turn


class TokenPublisher:
    """Publishes the events of one attempt at one reply.

    Args:
        emits: the worker's batcher of emits.
        settings: ``stream_flush_ms`` (the window, ms) and ``reply_max_chars``.
        turn: the attempt, generating: its entry, its fencing token, and when the model
            was first asked (``started``).
    """

    def __init__(self, emits: EmitBatcher, settings: WorkerSettings, turn: Turn) -> None:
        self.emits = emits
        self.settings = settings
        self.turn = turn

    async def emit(self, event: TokenEvent | RestartEvent, first: bool = True) -> None:
        """Publish one event of the attempt (``first``: its first, see
        :class:`storage.store.Emit`).

        Raises:
            SessionExpired: the session is gone.
        """
        token = self.turn.entry.token
        emit = Emit(token, event.model_dump_json(exclude_none=True), self.turn.attempt, first)
        if await self.emits.emit(emit) is None:
            raise SessionExpired(token)

    async def publish(
        self, pieces: Coalescer, reader: asyncio.Task[None]
    ) -> tuple[float, bool, str]:
        """Publish the reply's pieces as ``token`` events until it ends; return its TTFT
        (s, since the turn's ``started``), whether it was cut at
        ``reply_max_chars``, and the tail: the last piece, taken with the end of the
        reply and not published here ("": none), which the script that records the reply
        emits (one round trip fewer).

        The first delta is published at once; after each publication, deltas that
        arrive within ``stream_flush_ms`` are joined into the next event.

        Raises:
            SessionExpired: the session is gone.
        """
        first_token_s = 0.0
        first = True  # the attempt's first event gives the event stream its TTL
        window = self.settings.stream_flush_ms / 1000
        room = self.settings.reply_max_chars
        while (body := await pieces.next_piece()) is not None:
            cut = len(body) > room
            if cut:
                body = pieces.parts[-1] = body[:room]
            room -= len(body)
            if len(pieces.parts) == 1:
                first_token_s = time.perf_counter() - self.turn.started
            if cut or pieces.finished:
                return first_token_s, cut, body
            sent_at = time.perf_counter()
            if body:
                event = TokenEvent(message_id=self.turn.entry.message_id, content=body)
                await self.emit(event, first)
                first = False
            # Wait out the window only while the model is still sending: once the
            # whole reply is queued (or a stop ends the reader), the rest goes out at
            # once, so the end of a reply never waits for the window.
            remaining = window - (time.perf_counter() - sent_at)
            if remaining > 0 and not pieces.finished and not reader.done():
                await asyncio.wait({reader}, timeout=remaining)
        return first_token_s, False, ""


async def end_on_stop(
    stop: asyncio.Event, deadline: float, reader: asyncio.Task[None], queue: asyncio.Queue[Delta]
) -> bool:
    """Once ``stop`` is set or ``deadline`` (``time.perf_counter()``) has passed, abort
    the model request and end the reply's queue; return whether the deadline did it."""
    timed_out = False
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            await stop.wait()
    except TimeoutError:
        timed_out = True
    reader.cancel()
    queue.put_nowait(EndOfReply())
    return timed_out
