"""One Pub/Sub connection per process, fanned out to bounded per-subscriber queues.

Follows encode/broadcaster: one listener task reads the connection and puts each
message on the queue of every subscriber of its channel. A process subscribes to a
session's channel while it has a socket (or a waiting reply) for that session, so the
cost of relaying one event is a dictionary lookup, whatever the number of sessions.

Pub/Sub delivers at most once. A subscriber that may have missed messages (its queue
overflowed, or the connection to Redis was re-established) receives :data:`RESYNC`
instead, and reads what it missed from the session's durable event stream. When the
connection is lost, every subscriber first receives :data:`UNAVAILABLE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

#: Put on a subscriber's queue in place of messages it may have missed.
RESYNC: Final = "\x00resync"
#: Put on every subscriber's queue when the connection to Redis is lost (once per
#: outage); :data:`RESYNC` follows once it is back.
UNAVAILABLE: Final = "\x00unavailable"


class Subscription:
    """One subscriber of one channel: messages arrive on ``queue`` (``str`` payloads or RESYNC)."""

    def __init__(self, channel: str, queue_size: int) -> None:
        self.channel = channel
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.ready = asyncio.Event()
        self._needs: int = 0

    def deliver(self, payload: str) -> None:
        """Queue ``payload``; if the queue is full, replace its contents with RESYNC."""
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class Hub:
    """Pub/Sub fan-out over a single Redis connection.

    Args:
        redis: the process's client; the hub takes one connection from its pool.
        queue_size: bound of each subscriber's queue (messages).
        control_channel: a channel the hub always listens to, so the connection is
            never without a subscription; also a place to reach this process.
    """

    def __init__(self, redis: Redis[str], *, queue_size: int = 1024, control_channel: str) -> None:
        self._redis = redis
        self._queue_size = queue_size
        self._control = control_channel
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._subs: dict[str, set[Subscription]] = {}
        self._sent: dict[str, int] = {}
        self._confirmed: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._down = False

    @property
    def channel_count(self) -> int:
        """How many session channels this process is subscribed to."""
        return len(self._subs)

    async def start(self) -> None:
        """Connect, subscribe to the control channel and start the listener task."""
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._control)
        connection = self._pubsub.connection
        assert connection is not None
        connection.register_connect_callback(self._on_reconnect)
        self._task = asyncio.create_task(self._listen(), name="hub-listener")

    async def aclose(self) -> None:
        """Stop the listener and release the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[attr-defined]  # stale stubs

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Subscribe to ``channel`` for the duration of the block.

        ``Subscription.ready`` is set once Redis has confirmed the subscription: every
        message published after that reaches the queue.
        """
        assert self._pubsub is not None, "Hub.start() first"
        sub = Subscription(channel, self._queue_size)
        async with self._lock:
            subs = self._subs.setdefault(channel, set())
            subs.add(sub)
            if len(subs) == 1:
                self._sent[channel] = self._sent.get(channel, 0) + 1
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    subs.discard(sub)
                    self._subs.pop(channel, None)
                    raise
            sub._needs = self._sent[channel]
            if self._confirmed.get(channel, 0) >= sub._needs:
                sub.ready.set()
        try:
            yield sub
        finally:
            async with self._lock:
                subs = self._subs.get(channel, set())
                subs.discard(sub)
                if not subs:
                    self._subs.pop(channel, None)
                    with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                        await self._pubsub.unsubscribe(channel)

    async def _on_reconnect(self, _connection: Any) -> None:
        # redis-py re-subscribes every channel on reconnect; what was published while
        # the connection was down is lost to Pub/Sub, so every subscriber resyncs.
        logger.warning("pubsub reconnected; %d channels resync", len(self._subs))
        self._down = False
        for subs in self._subs.values():
            for sub in subs:
                sub.deliver(RESYNC)

    async def _listen(self) -> None:
        assert self._pubsub is not None
        backoff = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)  # type: ignore[arg-type]
                backoff = 0.1
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                logger.warning("pubsub connection lost (%s); retrying in %.1f s", e, backoff)
                if not self._down:
                    self._down = True
                    for subs in self._subs.values():
                        for sub in subs:
                            sub.deliver(UNAVAILABLE)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message":
                for sub in self._subs.get(channel, ()):
                    sub.deliver(message["data"])
            elif kind == "subscribe":
                confirmed = self._confirmed.get(channel, 0) + 1
                self._confirmed[channel] = confirmed
                for sub in self._subs.get(channel, ()):
                    if confirmed >= sub._needs:
                        sub.ready.set()
