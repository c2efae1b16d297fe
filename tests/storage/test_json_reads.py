"""Every RedisJSON read of the store gives the same result whatever was called before.

redis-py's ``client.json()`` installs response callbacks on the client it wraps, for
good; after that a raw ``JSON.GET`` on that client comes back decoded instead of as
text. A worker's crash takeover once read the crash count with ``json.loads`` on such a
reply and failed with ``TypeError`` on every taken-over message.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from protocol.wire import MessageEntry
from runtime.config import CommonSettings
from storage import keys
from storage.store import Store


async def _every_read(store: Store, token: str, owner: str) -> dict[str, Any]:
    session = await store.sessions.get_session(token, touch=False)
    page = await store.owners.conversations(owner, 0, 10)
    return {
        "session": session.model_dump(mode="json"),
        "model": await store.sessions.session_model(token),
        "replied_seq": await store.sessions.replied_seq(token),
        "stop_seq": await store.sessions.stop_seq(token),
        "crashes": await store.sessions.crashes(token, 2),
        "crashes_other_seq": await store.sessions.crashes(token, 1),
        "marks": await store.sessions.message_marks(token, [m.id for m in session.messages]),
        "conversations": page.model_dump(mode="json"),
    }


async def test_reads_do_not_depend_on_client_json_having_been_called(
    redis_url: str, redis: Redis[str]
) -> None:
    # A client of its own: the fixture's may have had its callbacks installed already.
    from storage.connection import client_for_url

    fresh = client_for_url(redis_url, max_connections=4)
    try:
        store = Store(fresh, CommonSettings(session_ttl_seconds=60))
        await store.streams.ensure_group()
        owner = await store.owners.create_owner()
        session = await store.sessions.create_session(
            "ada", owner, model="", system_prompt="be brief"
        )
        await store.owners.add_conversation(owner, session.token, limit=10)
        await store.owners.update_session(session.token, {"title": "A title"})
        first = await store.queue.enqueue(session.token, "one", max_pending=10)
        await store.queue.enqueue(session.token, "two", max_pending=10)
        entry = MessageEntry(token=session.token, seq=1, message_id=first.id)
        assert (await store.replies.begin(entry, "1:a")).session is not None
        # The record begin.lua keeps of attempts cut by a worker's death: "<seq>:<count>".
        await fresh.execute_command(  # type: ignore[no-untyped-call]
            "JSON.SET", keys.session_key(session.token), "$.crashes", '"2:3"'
        )

        before = await _every_read(store, session.token, owner)
        assert before["crashes"] == 3 and before["crashes_other_seq"] == 0
        assert before["session"]["title"] == "A title"
        assert before["conversations"]["total"] == 1
        assert [m.answered for m in before["marks"].values()] == [False, False]

        # What a title or summary job did first, in the release that failed.
        await fresh.json().get(keys.session_key(session.token))  # type: ignore[attr-defined]
        after = await _every_read(store, session.token, owner)
        assert after == before

        # Deleting reads the owner the same way too.
        await store.owners.delete_session(session.token, owner)
        assert await fresh.exists(keys.session_key(session.token)) == 0
    finally:
        await fresh.aclose()  # type: ignore[attr-defined]
