"""Owners: a client identity that owns several sessions, and lists them as conversations.

An owner is a bearer token (a UUID4) issued by the server, holding no personal data. Its
record (:func:`storage.keys.owner_key`) and its list of sessions
(:func:`storage.keys.conversations_key`, a sorted set scored by creation time) share the
owner's hash slot; each session stays in its own partition's slot. So no operation spans
two slots on a Redis Cluster:

- adding a session to its owner is one script on the owner's slot (``owner_add.lua``,
  which also enforces the owner's limit), after the session document is written on the
  session's slot;
- listing reads a page of the sorted set, then each listed session with a command of its
  own (pipelined; a cluster pipeline sends each node its share), and drops from the set
  the sessions that have expired;
- deleting a session deletes its document and event stream (its slot), then removes it
  from its owner's set (the owner's slot).

A session whose TTL runs out stays in its owner's set until a listing or a creation
that finds the owner full notices it is gone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from functools import cached_property

from redis.exceptions import ResponseError

from protocol.wire import ConversationPage, ConversationSummary, utc_now
from storage import keys
from storage.base import StoreBase, json_get_command, json_reply, json_set_command
from storage.hub import CHECK
from storage.scripts import Arg, OwnerAddStatus, Script, TitleStatus
from storage.sessions import SessionExpired

#: The fields of a session document a listing reads, as RedisJSON paths.
_SUMMARY_PATHS = ("$.title", "$.name", "$.session_start", "$.messages[-1].timestamp")


class OwnerUnknown(Exception):
    """The owner token is not known (never was, or its TTL ran out)."""


class OwnerFull(Exception):
    """The owner has as many conversations as it may have.

    Attributes:
        count: how many it has.
    """

    def __init__(self, count: int) -> None:
        super().__init__(f"the owner has {count} conversations")
        self.count = count


class NotTheOwner(Exception):
    """The session belongs to no owner, or to another one."""


class Owners(StoreBase):
    """Owners and their conversations (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _title(self) -> Script[TitleStatus]:
        return Script(self.redis, "title.lua", TitleStatus)

    @cached_property
    def _owner_add(self) -> Script[OwnerAddStatus]:
        return Script(self.redis, "owner_add.lua", OwnerAddStatus)

    async def create_owner(self) -> str:
        """Issue a new owner token. It lives ``owner_unused_ttl_seconds`` until its first
        conversation (``owner_add.lua`` extends it), then ``owner_ttl_seconds`` after its
        last use: an owner that is never used costs minutes of memory, not a month."""
        owner = str(uuid.uuid4())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.owner_key(owner), "created", utc_now())
            pipe.expire(keys.owner_key(owner), self.settings.owner_unused_ttl_seconds)
            await pipe.execute()
        return owner

    async def ensure_owner(self, owner: str) -> None:
        """Make the record of ``owner`` unless it exists: the owner of a person proved by
        an identity provider (:func:`server.identity.person_owner`), whom no ``POST
        /owner`` made. A new record lives ``owner_unused_ttl_seconds``, as a new owner
        token does, until its first conversation extends it."""
        key = keys.owner_key(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "created", utc_now())
            pipe.expire(key, self.settings.owner_unused_ttl_seconds, nx=True)
            await pipe.execute()

    async def session_owner(self, token: str) -> str | None:
        """The owner of session ``token`` ("" if it has none); None if it is gone."""
        found = await self.json_get(keys.session_key(token), "$.owner")
        if found is None:
            return None
        return str(found[0]) if found else ""

    async def owner_exists(self, owner: str) -> bool:
        """Whether ``owner`` is a known owner token."""
        return bool(await self.redis.exists(keys.owner_key(owner)))

    async def add_conversation(self, owner: str, token: str, limit: int) -> int:
        """Add session ``token`` to ``owner``'s conversations, within ``limit``.

        Sessions of the owner that have expired are dropped first if the limit is
        reached. Returns how many conversations the owner has now.

        Raises:
            OwnerUnknown: no such owner.
            OwnerFull: the owner has ``limit`` live conversations already.
        """
        created_ms = int(time.time() * 1000)
        args: list[Arg] = [token, created_ms, limit, self.settings.owner_ttl_seconds]
        owner_keys = [keys.owner_key(owner), keys.conversations_key(owner)]
        status, payload = await self._owner_add(keys=owner_keys, args=args)
        if status is OwnerAddStatus.FULL and await self._drop_expired(owner):
            status, payload = await self._owner_add(keys=owner_keys, args=args)
        if status is OwnerAddStatus.NO_OWNER:
            raise OwnerUnknown(owner)
        if status is OwnerAddStatus.FULL:
            raise OwnerFull(int(payload))
        return int(payload)

    async def conversations(self, owner: str, offset: int, limit: int) -> ConversationPage:
        """A page of ``owner``'s conversations, newest first; renews the owner's TTL.

        Args:
            offset: conversations to skip (>= 0).
            limit: conversations on the page at most (> 0).

        Raises:
            OwnerUnknown: no such owner.
        """
        if not await self._touch_owner(owner):
            raise OwnerUnknown(owner)
        while True:
            tokens = await self.redis.zrevrange(
                keys.conversations_key(owner), offset, offset + limit - 1
            )
            summaries = await self._summaries(tokens)
            gone = [t for t, s in zip(tokens, summaries, strict=True) if s is None]
            if not gone:
                break
            await self.redis.zrem(keys.conversations_key(owner), *gone)
        total = int(await self.redis.zcard(keys.conversations_key(owner)))
        page = [s for s in summaries if s is not None]
        following = offset + len(page)
        return ConversationPage(
            conversations=page, total=total, next_offset=following if following < total else None
        )

    async def update_session(self, token: str, fields: dict[str, str]) -> None:
        """Set top-level text fields of session ``token`` (its ``title``, ``model``,
        ``system_prompt``), all or none, in one transaction.

        Raises:
            SessionExpired: no such session.
        """
        key = keys.session_key(token)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, value in fields.items():
                    pipe.execute_command(*json_set_command(key, f"$.{name}", value))
                await pipe.execute()
        except ResponseError as e:
            # RedisJSON refuses a path into a document that does not exist.
            if "created at the root" in str(e):
                raise SessionExpired(token) from e
            raise

    async def set_title_if_none(self, token: str, title: str) -> bool:
        """Give session ``token`` the title ``title`` unless it has one; whether it was
        set (False: it had one, or the session is gone)."""
        status, _ = await self._title(keys=[keys.session_key(token)], args=[json.dumps(title)])
        return status is TitleStatus.SET

    async def delete_session(self, token: str, owner: str | None = None) -> None:
        """Delete session ``token`` for good: its document, the earlier versions of its
        turns, its event stream, and its place in its owner's conversations.

        Args:
            owner: if given, the session must belong to this owner.

        Raises:
            SessionExpired: no such session.
            NotTheOwner: ``owner`` was given and is not the session's owner.
        """
        session_owner = await self.session_owner(token)
        if session_owner is None:
            raise SessionExpired(token)
        if owner is not None and session_owner != owner:
            raise NotTheOwner(token)
        await self.redis.delete(
            keys.session_key(token), keys.versions_key(token), keys.events_key(token)
        )
        # Its open sockets, on any server, close now rather than at their next check.
        await self.redis.spublish(keys.channel(token), CHECK)  # type: ignore[attr-defined]  # stale stubs
        if session_owner:
            await self.redis.zrem(keys.conversations_key(session_owner), token)

    async def _touch_owner(self, owner: str) -> bool:
        """Renew an owner that has conversations (an unused one keeps its short TTL, so
        listing it cannot keep it for a month); whether the owner exists."""
        ttl = self.settings.owner_ttl_seconds
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.owner_key(owner))
            pipe.expire(keys.conversations_key(owner), ttl)  # 0 when it has none
            exists, used = await pipe.execute()
        if exists and used:
            await self.redis.expire(keys.owner_key(owner), ttl)
        return bool(exists)

    async def _summaries(self, tokens: Sequence[str]) -> list[ConversationSummary | None]:
        """Each session's summary, or None where the session is gone."""
        if not tokens:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.execute_command(*json_get_command(keys.session_key(token), *_SUMMARY_PATHS))
                pipe.execute_command("JSON.ARRLEN", keys.session_key(token), "$.messages")
            replies = await pipe.execute(raise_on_error=False)
        summaries: list[ConversationSummary | None] = []
        for token, fields, lengths in zip(tokens, replies[::2], replies[1::2], strict=True):
            if fields is None or isinstance(fields, Exception):
                summaries.append(None)
                continue
            read = json_reply(fields)
            title, name, created = (read[p][0] for p in _SUMMARY_PATHS[:3])
            newest = read[_SUMMARY_PATHS[3]]
            count = lengths[0] if isinstance(lengths, list) and lengths else 0
            summaries.append(
                ConversationSummary(
                    token=token,
                    title=title if isinstance(title, str) else "",
                    name=name,
                    created=created,
                    last_activity=newest[0] if newest else created,
                    message_count=int(count or 0),
                )
            )
        return summaries

    async def _drop_expired(self, owner: str) -> bool:
        """Drop the owner's sessions that no longer exist; whether any was dropped."""
        tokens = await self.redis.zrange(keys.conversations_key(owner), 0, -1)
        if not tokens:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.exists(keys.session_key(token))
            alive = await pipe.execute()
        gone = [t for t, a in zip(tokens, alive, strict=True) if not a]
        if gone:
            await self.redis.zrem(keys.conversations_key(owner), *gone)
        return bool(gone)
