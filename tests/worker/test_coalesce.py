"""The coalescing rule: queued deltas join, edge whitespace is held back, ends end."""

from __future__ import annotations

import asyncio

import pytest

from worker.coalesce import Coalescer, Delta, EndOfReply


def queue_of(*items: Delta) -> asyncio.Queue[Delta]:
    queue: asyncio.Queue[Delta] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


async def test_deltas_queued_together_go_out_as_one_piece_trimmed() -> None:
    pieces = Coalescer(queue_of(" Hello", ",", " world", "\n", None))
    assert await pieces.next_piece() == "Hello, world"
    assert await pieces.next_piece() is None
    assert pieces.finished and "".join(pieces.parts) == "Hello, world"


async def test_held_whitespace_goes_out_once_text_follows() -> None:
    queue = queue_of(" one ")
    pieces = Coalescer(queue)
    assert await pieces.next_piece() == "one"
    queue.put_nowait(" ")
    queue.put_nowait("two")
    assert await pieces.next_piece() == "  two"
    queue.put_nowait("  ")
    queue.put_nowait(None)
    assert await pieces.next_piece() is None
    assert "".join(pieces.parts) == "one  two"


async def test_end_of_reply_ends_early_and_errors_are_raised() -> None:
    pieces = Coalescer(queue_of("partial", EndOfReply(), "never sent"))
    assert await pieces.next_piece() == "partial"
    assert await pieces.next_piece() is None
    with pytest.raises(ValueError, match="cut"):
        await Coalescer(queue_of("a", ValueError("cut"))).next_piece()
