"""Natural batching: calls that arrive while one is in flight go together in the next;
and the scripts whose calls are batched so (:class:`BatchScript`).

A lone call goes out at once; under load a batch grows with the load, so the cost of a
round trip (a socket write, a wake-up of Redis and of the caller) is shared by every
call made meanwhile, as Nagle's algorithm shares a packet (RFC 896), without a timer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from storage.connection import is_cluster
from storage.replication import WaitReplicas
from storage.scripts import Arg, BatchStatus, S, Script, ScriptReplyError, decode

T = TypeVar("T")
R = TypeVar("R")

#: The most calls a batched script's call holds (a script blocks Redis while it runs).
BATCH_LIMIT: Final = 32
#: The most batched calls of one script a process has in flight at once: with two, a
#: call made while one is in flight goes at once beside it, and only calls made while
#: two are wait.
BATCH_CONCURRENCY: Final = 2
#: One call's status in a batch when it failed (batch.lua): ``{BATCH_FAILED, error}``.
BATCH_FAILED: Final = -1


class Batcher(Generic[T, R]):
    """Sends items in batches: one ``send`` call a group for the items waiting at once.

    At most ``concurrency`` sends are in flight; items submitted while that many are
    wait, and go together in the next round, sent by a task of the batcher. An item
    submitted while fewer are in flight goes in a round of its own, with the items
    submitted until that task runs (those its caller's loop iteration makes), or
    ``eager``, alone at once in its caller's own task: no hop more than the call itself
    (but two items submitted at once then go apart). An item whose caller was cancelled
    before its round went is not sent.

    Args:
        send: sends one batch (items of one group, at most ``limit``); returns one
            outcome an item, in order. If it raises, every item of the batch gets the
            exception.
        group: the group of an item (items of different groups never share a batch:
            e.g. the slot their keys are in on a Redis Cluster).
        limit: the most items a batch holds (a bigger round is split).
        concurrency: the most sends in flight at once (a round split in several
            batches counts once).
        eager: send an item at once in its caller's task when a send may start.
    """

    def __init__(
        self,
        send: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
        group: Callable[[T], Hashable],
        limit: int,
        concurrency: int = 1,
        *,
        eager: bool = False,
    ) -> None:
        self._send = send
        self._group = group
        self._limit = limit
        self._concurrency = concurrency
        self._eager = eager
        self._in_flight = 0
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._senders: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs

    async def submit(self, item: T) -> R:
        """Send ``item``, alone at once or with the others waiting; its result.

        Raises:
            BaseException: the item's own outcome if it is an exception, or the error
                that failed its batch's call.
        """
        if self._eager and self._in_flight < self._concurrency and not self._waiting:
            self._in_flight += 1
            try:
                (outcome,) = await self._send([item])
            finally:
                self._in_flight -= 1
                self._start_round()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start_round()
        return await future

    def _start_round(self) -> None:
        """Send what waits in a task of its own, if a send may start now."""
        if self._waiting and self._in_flight < self._concurrency:
            self._in_flight += 1
            sender = asyncio.create_task(self._round())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _round(self) -> None:
        """Send every item waiting when it runs (items submitted until then go too)."""
        round_, self._waiting = self._waiting, []
        try:
            groups: dict[Hashable, list[tuple[T, asyncio.Future[R]]]] = defaultdict(list)
            for item, future in round_:
                if not future.done():  # cancelled before it went: not sent
                    groups[self._group(item)].append((item, future))
            batches = [
                items[i : i + self._limit]
                for items in groups.values()
                for i in range(0, len(items), self._limit)
            ]
            if len(batches) == 1:
                await self._send_batch(batches[0])
            else:
                await asyncio.gather(*(self._send_batch(batch) for batch in batches))
        finally:
            self._in_flight -= 1
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # not when the loop winds down
                self._start_round()

    async def _send_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        """One batch: each future gets its outcome, or the call's error."""
        try:
            outcomes = await self._send([item for item, _ in batch])
        except Exception as e:
            outcomes = [e] * len(batch)
        except BaseException:  # cancelled: so are its callers
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class BatchScript(Generic[S]):
    """A script whose calls are batched (:class:`storage.batching.Batcher`): the calls
    made while one is in flight go together in one ``EVALSHA``, each run apart in it
    (``includes/batch.lua``), so an error in one (a broken session document) is that
    call's alone. A call is made and answered as with :class:`Script`.

    On a Redis Cluster a batch holds the calls of one slot (that of their first key);
    elsewhere any calls.

    Args:
        redis: the client to run it on.
        name: its file; its statuses are those of one call.
        statuses: one call's statuses.
        trims: as :class:`Script`'s.
        wait: as :class:`Script`'s, once a batch.
        limit: the most calls a batch holds.
    """

    def __init__(
        self,
        redis: Redis[str],
        name: str,
        statuses: type[S],
        *,
        trims: bool = False,
        wait: WaitReplicas | None = None,
        limit: int = BATCH_LIMIT,
    ) -> None:
        self.name = name
        self.statuses = statuses
        self._script = Script(redis, name, BatchStatus, trims=trims, batched=True, wait=wait)
        slot = _slot if is_cluster(redis) else _one_group
        self._batcher: Batcher[_Call, tuple[S, Any]] = Batcher(
            self._send, lambda call: slot(call.keys[0]), limit, BATCH_CONCURRENCY, eager=True
        )

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> tuple[S, Any]:
        """Run the script for one call, in the next batch; the call's reply decoded.

        Raises:
            ScriptReplyError: the reply breaks the convention.
            redis.exceptions.ResponseError: the call failed in the script (the other
                calls of its batch did not); the subclass redis-py gives its error
                (e.g. :class:`redis.exceptions.OutOfMemoryError`).
            redis.exceptions.RedisError: the batch failed, or Redis is unreachable.
        """
        return await self._batcher.submit(_Call(keys, args))

    async def _send(self, calls: Sequence[_Call]) -> list[tuple[S, Any] | BaseException]:
        counts: list[Arg] = [len(calls)]
        script_keys: list[str] = []
        args: list[Arg] = []
        for call in calls:
            counts += [len(call.keys), len(call.args)]
            script_keys += call.keys
            args += call.args
        _, replies = await self._script(keys=script_keys, args=[*counts, *args])
        if not isinstance(replies, list) or len(replies) != len(calls):
            raise ScriptReplyError(f"{self.name} answered {replies!r} for {len(calls)} calls")
        return [
            _error(reply[1]) if _failed(reply) else decode(self.name, self.statuses, reply)
            for reply in replies
        ]


@dataclass(frozen=True, slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Arg]


def _slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag's, if it has one)."""
    return int(key_slot(key.encode()))


def _one_group(_key: str) -> int:
    return 0


def _error(message: str) -> ResponseError:
    """The error redis-py raises for ``message``, an error reply's text: the class its
    prefix names (``OOM`` an :class:`redis.exceptions.OutOfMemoryError`, ``READONLY``,
    ``BUSY``, ...), as the call alone would have raised (redis-py's own parser)."""
    error = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]  # untyped in redis-py
    return error if isinstance(error, ResponseError) else ResponseError(message)


def _failed(reply: Any) -> bool:
    """Whether one call's reply in a batch is ``{BATCH_FAILED, error}`` (batch.lua)."""
    return isinstance(reply, list) and len(reply) == 2 and reply[0] == BATCH_FAILED
