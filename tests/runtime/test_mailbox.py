"""The lean mailbox and flag every subscription holds: asyncio.Queue's and Event's rules."""

from __future__ import annotations

import asyncio
import sys

import pytest

from runtime.mailbox import Flag, Mailbox


async def test_items_come_out_in_order_and_wake_the_reader() -> None:
    box: Mailbox[str] = Mailbox(10)
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()
    box.put_nowait("a")
    box.put_nowait("b")
    assert await reader == "a"
    assert box.qsize() == 1
    assert await box.get() == "b"
    assert box.empty()


async def test_bounded_and_empty_raise_as_asyncio_queue_does() -> None:
    box: Mailbox[int] = Mailbox(2)
    box.put_nowait(1)
    box.put_nowait(2)
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(3)
    assert [box.get_nowait(), box.get_nowait()] == [1, 2]
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()
    with pytest.raises(ValueError):
        Mailbox(0)


async def test_a_timed_out_get_loses_nothing() -> None:
    box: Mailbox[str] = Mailbox(4)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await box.get()
    # The item arrives as the waiting get is cancelled: it stays for the next get.
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    box.put_nowait("first")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    box.put_nowait("second")
    assert [box.get_nowait(), box.get_nowait()] == ["first", "second"]


async def test_a_second_reader_is_refused() -> None:
    box: Mailbox[str] = Mailbox(4)
    first = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await box.get()
    box.put_nowait("x")
    assert await first == "x"


async def test_waiting_is_true_only_while_the_reader_waits_on_the_empty_box() -> None:
    box: Mailbox[str] = Mailbox(4)
    assert not box.waiting()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert box.waiting()
    box.put_nowait("a")  # woken, not yet run: the item is still there
    assert not box.waiting()
    assert await reader == "a"
    assert not box.waiting()
    cancelled = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    assert not box.waiting()
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_flag_wakes_every_waiter_and_a_cancelled_one_does_not_hurt_the_others() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert not flag.is_set()
    flag.set()
    await asyncio.gather(*waiters[1:])
    assert waiters[0].cancelled()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 0.1)  # set already: returns at once


def test_an_idle_mailbox_and_flag_hold_far_less_than_asyncio_queue_and_event() -> None:
    # What an idle subscription allocates up front: asyncio.Queue keeps three deques and
    # an Event (a fourth), asyncio.Event one.
    def deep(obj: object) -> int:
        slots = getattr(type(obj), "__slots__", ())
        inner = vars(obj).values() if hasattr(obj, "__dict__") else []
        parts = [getattr(obj, name) for name in slots] + list(inner)
        size = sys.getsizeof(obj) + (sys.getsizeof(obj.__dict__) if hasattr(obj, "__dict__") else 0)
        for part in parts:
            size += (
                deep(part)
                if isinstance(part, (asyncio.Queue, asyncio.Event))
                else sys.getsizeof(part)
            )
        return size

    ours = deep(Mailbox(1024)) + deep(Flag())
    theirs = deep(asyncio.Queue(1024)) + deep(asyncio.Event())
    assert ours * 5 < theirs, (ours, theirs)
