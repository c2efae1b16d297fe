"""A bounded first-in first-out mailbox with one reader, and a one-way flag: what an idle
subscriber needs of :class:`asyncio.Queue` and :class:`asyncio.Event`, for less memory.

Every chat socket holds one subscription to its session's channel, idle for most of its
life. :class:`asyncio.Queue` allocates three ``collections.deque`` and an
:class:`asyncio.Event` (a fourth) up front, about 2.6 KB before the first item, and an
:class:`asyncio.Event` one more deque (624 bytes); the same measured per idle socket in
``make bench ARGS="--scenario connections"`` (tracemalloc: the four deques of the
subscription's queue and its ready event were the largest of Parley's own allocations
per socket). These hold a list and at most one future, created while the reader waits.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items in arrival order, at most ``maxsize`` of them, for one reader at a time.

    ``put_nowait``, ``get_nowait``, ``get``, ``empty`` and ``qsize`` behave as
    :class:`asyncio.Queue`'s (raising :class:`asyncio.QueueFull` and
    :class:`asyncio.QueueEmpty`). Two tasks awaiting ``get`` at once are not supported
    (the second raises :class:`RuntimeError`). A ``get`` cancelled (or timed out by
    :func:`asyncio.timeout`) takes nothing: an item that arrived meanwhile stays first.

    Args:
        maxsize: the most items held (> 0).
    """

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be > 0")
        self._items: list[T] = []
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether no item waits."""
        return not self._items

    def waiting(self) -> bool:
        """Whether the reader is waiting in :meth:`get`, no item being there: an item it
        is handed some other way now comes before any put later, as a put would."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def put_nowait(self, item: T) -> None:
        """Append ``item`` and wake the reader.

        Raises:
            asyncio.QueueFull: ``maxsize`` items wait already.
        """
        if len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> T:
        """Remove and return the oldest item.

        Raises:
            asyncio.QueueEmpty: no item waits.
        """
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> T:
        """Remove and return the oldest item, waiting for one if none is there.

        Raises:
            RuntimeError: another task is waiting already.
        """
        if not self._items:
            if self._waiter is not None:
                raise RuntimeError("Mailbox.get: another task is waiting already")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """A flag set once, and awaited: :class:`asyncio.Event`'s ``set``, ``is_set`` and
    ``wait``, without ``clear``, allocating a future only while a task waits."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def set(self) -> None:
        """Set the flag and wake every task waiting for it."""
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is)."""
        if self._set:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that is cancelled must not cancel the others' future.
        await asyncio.shield(self._waiter)
