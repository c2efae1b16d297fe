"""Sharded Pub/Sub, one connection per Redis node, fanned out to bounded per-subscriber queues.

Follows encode/broadcaster: one listener task per connection puts each message on the
queue of every subscriber of its channel. A process subscribes to a session's channel
while it has a socket (or a waiting reply) for that session, so the cost of relaying one
event is a dictionary lookup, whatever the number of sessions.

Channels are sharded (``SSUBSCRIBE``; the scripts ``SPUBLISH``): on a Redis Cluster a
message goes only to the node that owns the channel's slot, instead of to every node as
classic Pub/Sub does, and a node that fails silences only its own channels. On a single
Redis there is one connection; on a cluster, one per node that owns a subscribed
channel, each a plain connection to that node (redis-py's cluster Pub/Sub polls the nodes
one after another and drops every node's link while it refreshes its slot map).

Pub/Sub delivers at most once. A subscriber that may have missed messages (its queue
overflowed, or its connection to Redis was re-established) receives :data:`RESYNC`
instead, and reads what it missed from the session's durable event stream. When a
connection is lost, its subscribers first receive :data:`UNAVAILABLE`.

Each listener is supervised: whatever ends it (a lost link, or any other error, such as
a payload that is not UTF-8), it starts again on a new connection after a backoff
(:func:`runtime.retry.retrying`), subscribes every channel again, and every subscriber
of the link receives :data:`RESYNC`. :attr:`Hub.healthy` is False meanwhile (``/readyz``
answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from runtime.mailbox import Flag, Mailbox
from runtime.retry import retrying
from storage.connection import CONNECTION_ERRORS, is_cluster, node_client
from storage.pubsub_replies import NONE_BUFFERED, as_returned, buffered

logger = logging.getLogger(__name__)

#: Put on a subscriber's queue in place of messages it may have missed.
RESYNC: Final = "\x00resync"
#: Published on a session's channel when the session is deleted: its sockets look at
#: the session at once (and close), instead of at their next expiry check.
CHECK: Final = "\x00check"
#: Put on a subscriber's queue when its connection to Redis is lost (once per outage);
#: :data:`RESYNC` follows once it is back.
UNAVAILABLE: Final = "\x00unavailable"

#: A listener that ran this long (s) before it ended is restarted with a fresh backoff.
_STABLE_S = 10.0


class _ListenerEnded(Exception):
    """A listener ended within :data:`_STABLE_S` of its start: restart it after the
    next delay of the backoff."""


class Subscription:
    """One subscriber of one channel: messages arrive on ``queue`` (``str`` payloads,
    :data:`RESYNC` or :data:`UNAVAILABLE`; one reader), and ``ready`` is set once Redis
    has confirmed the subscription.

    ``sink``, when the reader sets one, takes messages at once instead: it is offered a
    message only while the reader waits on the empty queue (so it never overtakes one
    queued before), and returns whether it took it; one it does not take is queued as
    usual. It runs in the hub's listener, so it must not wait, and must not raise.
    A message it takes costs no queue slot and no wake-up of the reader's task.

    Lean on purpose (:mod:`runtime.mailbox`): every chat socket holds one, idle for
    most of its life.
    """

    __slots__ = ("_needs", "channel", "queue", "ready", "sink")

    def __init__(self, channel: str, queue_size: int) -> None:
        self.channel = channel
        self.queue: Mailbox[str] = Mailbox(queue_size)
        self.ready = Flag()
        self.sink: Callable[[str], bool] | None = None
        self._needs: int = 0

    def deliver(self, payload: str) -> None:
        """Hand ``payload`` to the ``sink`` if it takes it now, else queue it; if the
        queue is full, replace its contents with RESYNC."""
        sink = self.sink
        if sink is not None and self.queue.waiting() and sink(payload):
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class _Link:
    """One sharded Pub/Sub connection (to the Redis, or to one cluster node) and its
    supervised listener."""

    def __init__(self, hub: Hub, name: str, client: Redis[str], owned: bool) -> None:
        self.hub = hub
        self.name = name
        self.client = client
        self.owned = owned
        self.pubsub: PubSub = client.pubsub()
        self.channels: set[str] = set()
        self.down = False
        self.task: asyncio.Task[None] | None = None
        self._hooked = False

    async def ssubscribe(self, channel: str) -> None:
        await self.pubsub.ssubscribe(channel)  # type: ignore[attr-defined]  # stale stubs
        self.channels.add(channel)
        self._hook()
        if self.task is None:
            self.task = asyncio.create_task(self._supervise(), name=f"hub-{self.name}")

    async def sunsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.pubsub.sunsubscribe(channel)  # type: ignore[attr-defined]  # stale stubs

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pubsub.aclose()  # type: ignore[attr-defined]  # stale stubs
        if self.owned:
            await self.client.aclose()  # type: ignore[attr-defined]  # stale stubs

    def _hook(self) -> None:
        if not self._hooked and self.pubsub.connection is not None:
            self.pubsub.connection.register_connect_callback(self._on_reconnect)
            self._hooked = True

    def _tell(self, payload: str) -> None:
        for channel in self.channels:
            for sub in self.hub._subs.get(channel, ()):
                sub.deliver(payload)

    def _resubscribing(self) -> None:
        """Count the confirmations a re-subscription of every channel will bring, so a
        new subscriber waits for its own (see :meth:`Hub.subscribe`)."""
        for channel in self.channels:
            self.hub._sent[channel] = self.hub._sent.get(channel, 0) + 1

    async def _on_reconnect(self, _connection: Any) -> None:
        # redis-py re-subscribes every channel on reconnect; what was published while
        # the connection was down is lost to Pub/Sub, so every subscriber resyncs.
        logger.warning("pubsub %s reconnected; %d channels resync", self.name, len(self.channels))
        self._resubscribing()
        self.down = False
        self._tell(RESYNC)

    async def _supervise(self) -> None:
        """Run the listener for good: whatever ends it, restart it (see the module).

        Restarts back off (:func:`runtime.retry.retrying`: 0.1 s at first, doubling up to
        5 s) while the listener keeps ending soon after it starts, or its restart keeps
        failing; one that ran :data:`_STABLE_S` before it ended leaves the retry context,
        so the next restart is tried at once and backs off from the start again.
        """
        while True:
            # Any error is retried: the supervisor must outlive whatever happens.
            async for attempt in retrying(on=Exception, wait_initial_s=0.1, wait_max_s=5.0):
                with attempt:
                    if self.down:
                        await self._restart()
                    started = time.monotonic()
                    await self._listen_until_it_ends()
                    if time.monotonic() - started < _STABLE_S:
                        raise _ListenerEnded(self.name)

    async def _listen_until_it_ends(self) -> None:
        """Run the listener until something ends it, and say what; the link is then down."""
        try:
            await self._listen()
        except CONNECTION_ERRORS as e:
            logger.warning("pubsub %s lost: %s", self.name, e)
            if not self.down:
                self._tell(UNAVAILABLE)
        except Exception:
            logger.exception("pubsub %s listener failed; restarting it", self.name)
        self.down = True

    async def _restart(self) -> None:
        """A new connection with every channel subscribed; then every subscriber resyncs.

        Raises:
            Exception: whatever made the restart fail (the supervisor retries it).
        """
        logger.warning("pubsub %s: restarting", self.name)
        old, self.pubsub, self._hooked = self.pubsub, self.client.pubsub(), False
        if old.connection is not None:
            # The pool may hand this connection to the new Pub/Sub: unhook it first.
            old.connection.deregister_connect_callback(self._on_reconnect)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await old.aclose()  # type: ignore[attr-defined]  # stale stubs
        try:
            async with self.hub._lock:  # no subscribe or unsubscribe meanwhile
                self._resubscribing()
                # One channel a command: on a cluster, channels of different slots
                # in one SSUBSCRIBE fail with CROSSSLOT.
                for channel in self.channels:
                    await self.pubsub.ssubscribe(channel)  # type: ignore[attr-defined]  # stale stubs
                self._hook()
        except Exception as e:
            logger.warning("pubsub %s: restart failed: %r", self.name, e)
            raise
        logger.warning("pubsub %s restarted; %d channels resync", self.name, len(self.channels))
        self.down = False
        self._tell(RESYNC)

    async def _listen(self) -> None:
        """Read the link's messages for good, handing each to the hub.

        What ``PubSub.get_message(timeout=None)`` does, for less: ``parse_response``
        (redis-py's reconnects and retries) waits for the next reply, and the replies
        read with it are taken from the parser's buffer
        (:mod:`storage.pubsub_replies`). A published message (``smessage``), nearly
        every one, goes straight to its subscribers, without the dict redis-py builds;
        anything else (confirmations) through redis-py's own handling first, which
        keeps its record of the channels subscribed.
        """
        pubsub, deliver = self.pubsub, self.hub._deliver
        while True:
            await self._take(await pubsub.parse_response(block=True))
            gets = buffered(pubsub)
            if gets is None:
                continue
            while (reply := gets()) is not NONE_BUFFERED:
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == "smessage":
                    deliver(reply[1], reply[2])
                else:
                    await self._take(await as_returned(pubsub, reply))

    async def _take(self, reply: Any) -> None:
        """Hand one reply of ``parse_response`` (None: nothing) to the hub."""
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == "smessage":
            self.hub._deliver(reply[1], reply[2])
        elif reply:
            message = await self.pubsub.handle_message(reply)
            if message is not None:
                self.hub._dispatch(message)


class Hub:
    """Sharded Pub/Sub fan-out over one connection per Redis node.

    Args:
        redis: the process's client (single node or cluster). On a single Redis the hub
            takes one connection from its pool; on a cluster it opens its own, one per
            node it needs.
        queue_size: bound of each subscriber's queue (messages).
        control_channel: a channel the hub listens to from the start: a place to reach
            this process.
    """

    def __init__(self, redis: Redis[str], *, queue_size: int = 1024, control_channel: str) -> None:
        self._redis = redis
        self._queue_size = queue_size
        self._control = control_channel
        self._links: dict[str, _Link] = {}
        self._channel_link: dict[str, _Link] = {}
        self._subs: dict[str, set[Subscription]] = {}
        self._sent: dict[str, int] = {}
        self._confirmed: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def channel_count(self) -> int:
        """How many session channels this process is subscribed to."""
        return len(self._subs)

    @property
    def healthy(self) -> bool:
        """Whether every listener runs on a live connection (False while one restarts)."""
        return self._started and all(
            not link.down and (link.task is None or not link.task.done())
            for link in self._links.values()
        )

    async def start(self) -> None:
        """Connect and subscribe to the control channel."""
        if is_cluster(self._redis):
            await self._redis.initialize()  # the slot map, before looking up nodes
        self._started = True
        link = self._link_for(self._control)
        await link.ssubscribe(self._control)

    async def aclose(self) -> None:
        """Stop the listeners and release the connections."""
        for link in self._links.values():
            await link.aclose()
        self._links.clear()

    def _link_for(self, channel: str) -> _Link:
        if not is_cluster(self._redis):
            name = "redis"
            if name not in self._links:
                self._links[name] = _Link(self, name, self._redis, owned=False)
            return self._links[name]
        node = self._redis.get_node_from_key(channel)  # type: ignore[attr-defined]
        name = f"{node.host}:{node.port}"
        if name not in self._links:
            client = node_client(self._redis, node.host, node.port)
            self._links[name] = _Link(self, name, client, owned=True)
        return self._links[name]

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Subscribe to the sharded ``channel`` for the duration of the block.

        ``Subscription.ready`` is set once Redis has confirmed the subscription: every
        message published after that reaches the queue.
        """
        assert self._started, "Hub.start() first"
        sub = Subscription(channel, self._queue_size)
        async with self._lock:
            subs = self._subs.setdefault(channel, set())
            subs.add(sub)
            if len(subs) == 1:
                self._sent[channel] = self._sent.get(channel, 0) + 1
                link = self._link_for(channel)
                try:
                    await link.ssubscribe(channel)
                except BaseException:
                    subs.discard(sub)
                    self._subs.pop(channel, None)
                    raise
                self._channel_link[channel] = link
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
                    gone = self._channel_link.pop(channel, None)
                    if gone is not None:
                        await gone.sunsubscribe(channel)

    def _deliver(self, channel: str, payload: str) -> None:
        for sub in self._subs.get(channel, ()):
            sub.deliver(payload)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "smessage":
            self._deliver(channel, message["data"])
        elif kind == "ssubscribe":
            confirmed = self._confirmed.get(channel, 0) + 1
            self._confirmed[channel] = confirmed
            for sub in self._subs.get(channel, ()):
                if confirmed >= sub._needs:
                    sub.ready.set()
