"""Earlier versions of turns in a document of their own, and a session's bound of bytes,
against a real Redis (single node or cluster)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol.wire import DoneEvent, MessageEntry, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.base import json_get_command, json_reply
from storage.models import StoredMessage
from storage.store import SessionFull, Store

TTL_S = 60


def make_store(redis: Redis, **settings: Any) -> Store:
    return Store(redis, CommonSettings(session_ttl_seconds=TTL_S, **settings))


@pytest.fixture
async def store(redis: Redis) -> Store:
    store = make_store(redis)
    await store.streams.ensure_group()
    return store


async def json_of(redis: Redis, key: str) -> Any:
    """The whole document at ``key`` (None if none)."""
    found = json_reply(await redis.execute_command(*json_get_command(key)))
    return found[0] if found else None


async def answer(store: Store, token: str, text: str, n: int = 0) -> StoredMessage:
    """Enqueue ``text`` and record a reply to it, as a worker would."""
    user = await store.queue.enqueue(token, text, max_pending=10)
    assert user.seq is not None
    reply = StoredMessage(
        id=f"r{n}-{user.id}",
        role="assistant",
        content=f"reply {n} to {text[:20]}",
        timestamp=utc_now(),
        reply_to=user.id,
    )
    entry = MessageEntry(token=token, seq=user.seq, message_id=user.id)
    attempt = f"{user.seq}:{n}"
    await store.replies.begin(entry, attempt)
    await store.replies.finish(
        entry, reply, DoneEvent(message_id=user.id, reply=reply.public()), attempt
    )
    return user


async def revised_events(store: Store, token: str) -> list[dict[str, Any]]:
    events = [json.loads(p) for p in await store.events.events_after(token, "0")]
    return [e for e in events if e["type"] == "revised"]


async def test_versions_live_beside_the_session_and_share_its_lifetime(
    store: Store, redis: Redis
) -> None:
    token = (await store.sessions.create_session("ada")).token
    user = await answer(store, token, "question")
    await store.queue.revise(token, max_versions=20, max_attempts=20)
    await answer_again(store, token, user, 1)
    await store.queue.revise(
        token, max_versions=20, max_attempts=20, edit=(user.id, "better question")
    )
    # Written with the session's TTL.
    session_ttl = await redis.ttl(keys.session_key(token))
    versions_ttl = await redis.ttl(keys.versions_key(token))
    assert 0 < versions_ttl <= TTL_S and abs(session_ttl - versions_ttl) <= 1

    # The session document holds no version: a reply's read of it (begin.lua) never
    # loads them.
    document = await json_of(redis, keys.session_key(token))
    assert all("versions" not in m for m in document["messages"])
    stored = await json_of(redis, keys.versions_key(token))
    assert list(stored) == [user.id]
    assert [(v["content"], v["reply"]["content"]) for v in stored[user.id]] == [
        ("question", "reply 0 to question"),
        ("question", "reply 1 to question"),
    ]
    # Joined back, in order, only where the whole history is asked for.
    assert (await store.sessions.get_session(token)).messages[0].versions is None
    (message,) = (await store.sessions.get_session(token, versions=True)).view().messages
    assert message.content == "better question"
    assert [v.reply.content for v in message.versions or [] if v.reply] == [
        "reply 0 to question",
        "reply 1 to question",
    ]

    # One lifetime: the scripts that renew the session renew its versions, and so does
    # a read that touches it.
    async def shorten() -> None:
        """Five seconds left, as time would leave them: the TTLs and the expiry the
        session records (messages renew by it, see renewal_due in library.lua)."""
        for key in (keys.session_key(token), keys.versions_key(token)):
            await redis.expire(key, 5)
        expires_at = int(time.time() * 1000) + 5000
        await redis.execute_command("JSON.SET", keys.session_key(token), "$.expires_at", expires_at)

    async def ttls() -> list[int]:
        return [await redis.ttl(keys.session_key(token)), await redis.ttl(keys.versions_key(token))]

    await shorten()
    await store.sessions.get_session(token)
    assert min(await ttls()) > 5
    await shorten()
    await answer_again(store, token, user, 2)
    await store.queue.revise(token, max_versions=20, max_attempts=20)
    assert min(await ttls()) > 5
    await shorten()
    await answer_again(store, token, user, 3)
    await store.queue.enqueue(token, "next", max_pending=10)
    assert min(await ttls()) > 5
    await shorten()
    await store.sessions.touch(token)
    assert min(await ttls()) > 5

    await store.owners.delete_session(token)
    assert await redis.exists(keys.versions_key(token)) == 0


async def answer_again(store: Store, token: str, user: StoredMessage, n: int) -> None:
    """Record reply ``n`` to ``user``, queued again by a revision."""
    assert user.seq is not None
    reply = StoredMessage(
        id=f"r{n}-{user.id}",
        role="assistant",
        content=f"reply {n} to question",
        timestamp=utc_now(),
        reply_to=user.id,
    )
    entry = MessageEntry(token=token, seq=user.seq, message_id=user.id)
    attempt = f"{user.seq}:again{n}"
    await store.replies.begin(entry, attempt)
    await store.replies.finish(
        entry, reply, DoneEvent(message_id=user.id, reply=reply.public()), attempt
    )


async def test_the_revised_event_carries_the_new_version_and_the_count(store: Store) -> None:
    token = (await store.sessions.create_session("ada")).token
    user = await answer(store, token, "question")
    await store.queue.revise(token, max_versions=20, max_attempts=20)
    await answer_again(store, token, user, 1)
    await store.queue.revise(token, max_versions=20, max_attempts=20, edit=(user.id, "better"))
    first, second = await revised_events(store, token)
    assert "versions" not in first["message"] and "versions" not in second["message"]
    assert (first["version_count"], first["version"]["reply"]["content"]) == (
        1,
        "reply 0 to question",
    )
    assert (second["version_count"], second["version"]["reply"]["content"]) == (
        2,
        "reply 1 to question",
    )
    assert second["message"]["content"] == "better"


async def test_versions_written_inside_a_message_move_out_at_the_next_revision(
    store: Store, redis: Redis
) -> None:
    """A session written before versions had a document of their own, and without a
    byte count: its versions show, then move over, counted, after the next revision."""
    token = (await store.sessions.create_session("ada")).token
    user = await answer(store, token, "question")
    old = {"content": "older", "timestamp": utc_now(), "reply": None}
    key = keys.session_key(token)
    await redis.execute_command("JSON.SET", key, "$.messages[0].versions", json.dumps([old]))
    await redis.execute_command("JSON.DEL", key, "$.size_bytes")

    (message, _) = (await store.sessions.get_session(token, versions=True)).view().messages
    assert [v.content for v in message.versions or []] == ["older"]
    await store.queue.revise(token, max_versions=20, max_attempts=20)

    document = await json_of(redis, key)
    assert "versions" not in document["messages"][0]
    stored = await json_of(redis, keys.versions_key(token))
    assert [v["content"] for v in stored[user.id]] == ["older", "question"]
    (event,) = await revised_events(store, token)
    assert event["version_count"] == 2 and event["version"]["content"] == "question"
    # Measured once, then counted: what it holds, no less.
    assert document["size_bytes"] >= len(json.dumps(document["messages"])) // 2
    assert document["size_bytes"] >= len(json.dumps(stored[user.id][0]))


def text_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


async def test_the_byte_count_follows_the_text_of_messages_and_versions(
    store: Store, redis: Redis
) -> None:
    token = (await store.sessions.create_session("ada")).token
    user = await answer(store, token, "déjà vu " * 20)
    await store.queue.revise(
        token, max_versions=20, max_attempts=20, edit=(user.id, "edited: ça va ? " * 10)
    )
    await answer_again(store, token, user, 1)
    await store.queue.revise(token, max_versions=20, max_attempts=20)
    await answer_again(store, token, user, 2)
    await answer(store, token, "and another", 5)

    document = await json_of(redis, keys.session_key(token))
    stored = await json_of(redis, keys.versions_key(token))
    held = sum(text_bytes(m) for m in document["messages"])
    held += sum(text_bytes(v) for v in stored[user.id])
    # Counted by what each script adds and removes: within a few bytes a message.
    assert abs(document["size_bytes"] - held) <= 8 * (len(document["messages"]) + 2)


async def test_a_session_at_its_bound_of_bytes_refuses_messages_and_revisions(
    redis: Redis,
) -> None:
    store = make_store(redis, max_session_bytes=1900)
    await store.streams.ensure_group()
    token = (await store.sessions.create_session("ada")).token
    await answer(store, token, "x" * 400)
    await answer(store, token, "y" * 400, 1)
    key = keys.session_key(token)
    before = await json_of(redis, key)
    held = before["size_bytes"]
    assert 1900 - 400 < held <= 1900
    entries = await redis.xlen(keys.message_stream_of(token))

    with pytest.raises(SessionFull) as full:
        await store.queue.enqueue(token, "z" * 400, max_pending=10)
    assert full.value.held_bytes == held
    with pytest.raises(SessionFull) as full:
        await store.queue.revise(token, max_versions=20, max_attempts=20)
    assert full.value.held_bytes == held
    last = before["messages"][2]["id"]
    with pytest.raises(SessionFull):
        await store.queue.revise(token, max_versions=20, max_attempts=20, edit=(last, "w" * 700))

    assert await json_of(redis, key) == before
    assert await redis.exists(keys.versions_key(token)) == 0
    assert await redis.xlen(keys.message_stream_of(token)) == entries
    assert await revised_events(store, token) == []
    # A small message still fits.
    await store.queue.enqueue(token, "ok", max_pending=10)


async def test_the_same_revision_sent_again_changes_nothing(
    store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As redis-py sends a call again when its connection broke after Redis ran it: the
    second ``revise.lua`` call returns the first's revision, and is not refused for the
    message it left waiting."""
    token = (await store.sessions.create_session("ada")).token
    user = await answer(store, token, "question")
    fixed = uuid.uuid4()
    monkeypatch.setattr("storage.queue.uuid.uuid4", lambda: fixed)
    edit = (user.id, "better question")
    first = await store.queue.revise(token, max_versions=20, max_attempts=20, edit=edit)
    again = await store.queue.revise(token, max_versions=20, max_attempts=20, edit=edit)
    assert again == first
    stored = await json_of(redis, keys.versions_key(token))
    assert [v["content"] for v in stored[user.id]] == ["question"]
    assert len(await revised_events(store, token)) == 1
    stream = keys.message_stream(keys.partition(token))
    entries = [i for i, f in await redis.xrange(stream) if f.get("token") == token]
    assert entries == [user.entry, first.entry]
