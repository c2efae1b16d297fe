"""The worker's batched reply events, against a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import MessageEntry, TokenEvent
from runtime.config import CommonSettings
from storage import keys
from storage.replies import Replies
from storage.store import Emit, Fenced, Store
from worker.emits import EmitBatcher


class CountingReplies(Replies):
    """The real replies part, noting the size of each batch it is sent."""

    batches: list[int]

    async def emit_many(self, emits: Sequence[Emit]) -> list[str | Fenced | None]:
        self.batches.append(len(emits))
        return await super().emit_many(emits)


class CountingStore(Store):
    """The real store, its replies part counting."""

    replies: CountingReplies

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        super().__init__(redis, settings)
        self.replies = CountingReplies(redis, settings)


async def test_events_ready_at_once_share_one_call_a_partition(redis: Redis[str]) -> None:
    store = CountingStore(redis, CommonSettings(session_ttl_seconds=60))
    store.replies.batches = []
    tokens: list[str] = []
    while len(tokens) < 6:  # six sessions of one partition
        token = (await store.sessions.create_session("ada")).token
        if not tokens or keys.partition(token) == keys.partition(tokens[0]):
            tokens.append(token)
    for token in tokens:
        await store.replies.begin(MessageEntry(token=token, seq=1, message_id="m"), "1:a")
    batcher = EmitBatcher(store)

    def emit(token: str, attempt: str, content: str) -> Emit:
        event = TokenEvent(message_id="m", content=content).model_dump_json(exclude_none=True)
        return Emit(token, event, attempt, first=True)

    results = await asyncio.gather(
        *(batcher.emit(emit(t, "1:a", f"t{i}")) for i, t in enumerate(tokens)),
        batcher.emit(emit(tokens[0], "1:old", "late")),
        return_exceptions=True,
    )
    assert store.replies.batches == [7]
    assert all(isinstance(r, str) for r in results[:6])
    assert isinstance(results[6], Fenced)  # only the fenced attempt's caller learns it
    for i, token in enumerate(tokens):
        stored = [json.loads(p)["content"] for p in await store.events.events_after(token, "0")]
        assert stored == [f"t{i}"]
    # A lone event goes out at once, in a batch of its own.
    assert isinstance(await batcher.emit(emit(tokens[1], "1:a", "more")), str)
    assert store.replies.batches == [7, 1]


async def test_a_failed_call_fails_every_event_of_its_batch(redis: Redis[str]) -> None:
    store = CountingStore(redis, CommonSettings(session_ttl_seconds=60))
    store.replies.batches = []
    token = (await store.sessions.create_session("ada")).token
    await store.replies.begin(MessageEntry(token=token, seq=1, message_id="m"), "1:a")
    # The session document is no longer JSON: the script fails for the whole batch.
    await redis.delete(keys.session_key(token))
    await redis.set(keys.session_key(token), "not json")
    batcher = EmitBatcher(store)
    event = TokenEvent(message_id="m", content="x").model_dump_json(exclude_none=True)
    with pytest.raises(ResponseError):
        await batcher.emit(Emit(token, event, "1:a", first=True))
    # The batcher goes on: the next event is sent.
    await redis.delete(keys.session_key(token))
    assert await batcher.emit(Emit(token, event, "1:a", first=True)) is None
