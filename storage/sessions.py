"""Session documents: creating, reading and renewing them, and the counters scripts keep.

A session is one RedisJSON document (:class:`storage.models.Session`) at
:func:`storage.keys.session_key`, with a TTL renewed by activity. The earlier versions of
its turns (regenerate, edit) are a document of their own
(:func:`storage.keys.versions_key`), with the same TTL, read only when a client asks for
the whole history (:meth:`Sessions.get_session` with ``versions``): a reply reads
neither them nor their bytes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from functools import cached_property
from typing import Any, NamedTuple

from protocol.wire import utc_now
from storage import keys
from storage.base import StoreBase, json_get_command, json_reply
from storage.models import Session
from storage.scripts import ChargeStatus, Script, SetModelStatus, StopStatus


class SessionExpired(Exception):
    """The session does not exist (never did, or its TTL ran out)."""


class MessageMark(NamedTuple):
    """Where a user message stands in its session's history
    (:meth:`Sessions.message_marks`).

    Attributes:
        entry: its entry id in its partition's message stream as history records it
            (each regenerate or edit gives it a new one); "" if none is recorded.
        answered: whether its turn is closed: its reply is recorded, or it ended with
            an ``error`` (its ``seq`` is at most the session's ``replied_seq``).
    """

    entry: str
    answered: bool


#: What a message id the store makes looks like (UUID4 text): the only text put in a
#: JSONPath filter.
_MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Sessions(StoreBase):
    """Session documents (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _set_model(self) -> Script[SetModelStatus]:
        return Script(self.redis, "set_model.lua", SetModelStatus)

    @cached_property
    def _stop(self) -> Script[StopStatus]:
        return Script(self.redis, "stop.lua", StopStatus)

    @cached_property
    def _charge(self) -> Script[ChargeStatus]:
        return Script(self.redis, "charge.lua", ChargeStatus)

    async def charge(self, token: str, units: int) -> str:
        """Charge ``units`` model tokens to the session's quota (``charge.lua``): a
        model request outside a reply, which ``finish.lua`` charges itself. Returns the
        session's client digest ("": unknown), whose quota is to be charged too.

        Raises:
            SessionExpired: no such session.
        """
        period_ms = max(1, round(self.settings.quota_period_s * 1000))
        status, client = await self._charge(keys=[keys.session_key(token)], args=[units, period_ms])
        if status is ChargeStatus.NO_SESSION:
            raise SessionExpired(token)
        return str(client)

    async def quota_used(self, token: str) -> int:
        """Model tokens the session used in its quota's period so far (0: none, or the
        period is over), as admission reads them."""
        found = await self.json_get(keys.session_key(token), "$.quota")
        if not found:
            return 0
        quota = found[0]
        now_ms = (await self.redis.time())[0] * 1000
        return int(quota["used"]) if quota["renews"] > now_ms else 0

    async def client_of(self, token: str) -> str:
        """The digest of the client that sent the session's latest message ("": none
        yet), whose quota its replies are charged to."""
        found = await self.json_get(keys.session_key(token), "$.client")
        return str(found[0]) if found else ""

    async def create_session(
        self, name: str, owner: str = "", *, model: str = "", system_prompt: str = ""
    ) -> Session:
        """Create a session with a new UUID4 token; it lives ``session_ttl_seconds``.

        Args:
            owner: the owner token whose conversations will list it ("" if none); the
                caller adds it there (:meth:`storage.owners.Owners.add_conversation`).
            model: the id of its model ("": the catalog's default).
            system_prompt: its own system prompt ("": the deployment's).
        """
        session = Session(
            token=str(uuid.uuid4()),
            name=name,
            session_start=utc_now(),
            owner=owner,
            model=model,
            system_prompt=system_prompt,
        )
        await session.create(self.redis, self.settings.session_ttl_seconds)
        return session

    async def session_model(self, token: str) -> str:
        """The id of session ``token``'s model (the catalog's default if it chose none).

        Raises:
            SessionExpired: no such session.
        """
        found = await self.json_get(keys.session_key(token), "$.model")
        if found is None:
            raise SessionExpired(token)
        return str(found[0]) if found and found[0] else self.settings.default_model

    async def set_model(self, token: str, model: str) -> bool:
        """Make ``model`` session ``token``'s model, unless messages of it wait for
        replies (``set_model.lua``); whether it was set.

        Raises:
            SessionExpired: no such session.
        """
        status, _ = await self._set_model(keys=[keys.session_key(token)], args=[model])
        if status is SetModelStatus.NO_SESSION:
            raise SessionExpired(token)
        return status is SetModelStatus.SET

    async def get_session(
        self, token: str, *, touch: bool = True, versions: bool = False
    ) -> Session:
        """Load a session; with ``touch``, renew its TTL (and its event stream's and
        versions'); with ``versions``, each user message that has earlier versions
        carries them, oldest first, in its ``versions`` (as clients see the history).

        Raises:
            SessionExpired: no such session.
        """
        # JSON.GET and validation, as redis-om's Session.get does, without its walks over
        # the document for datetime and bytes fields (Session has none): a third of
        # the time for a session with 40 messages (bench: the worker reads one a reply).
        if versions:
            document = await self._with_versions(token)
        else:
            found = await self.json_get(keys.session_key(token))
            document = found[0] if found else None
        if document is None:
            raise SessionExpired(token)
        session = Session.model_validate(document)
        if touch:
            await self.touch(token)
        return session

    async def _with_versions(self, token: str) -> dict[str, Any] | None:
        """The session document (None if none) with the versions of its turns joined
        into its messages: both read in one ``MULTI`` (one slot), so a revision in
        between cannot show a reply twice or not at all.

        Versions still inside a message (a session written before they had a document
        of their own) are newer than those of the versions document: ``revise.lua``
        moves them over, after those already there.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.execute_command(*json_get_command(keys.session_key(token)))
            pipe.execute_command(*json_get_command(keys.versions_key(token)))
            session, stored = await pipe.execute()
        found, earlier = json_reply(session), json_reply(stored)
        if not found:
            return None
        document: dict[str, Any] = found[0]
        by_message: dict[str, list[Any]] = earlier[0] if earlier else {}
        for message in document.get("messages", []):
            kept = by_message.get(message.get("id"))
            if kept:
                message["versions"] = [*kept, *(message.get("versions") or [])]
        return document

    async def touch(self, token: str) -> bool:
        """Renew a session's TTL (and its event stream's and versions'); False if it no
        longer exists."""
        return await self.renew(
            self.settings.session_ttl_seconds,
            keys.session_key(token),
            keys.events_key(token),
            keys.versions_key(token),
        )

    async def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            redis.RedisError, OSError: it does not.
        """
        await self.redis.ping()

    async def session_ttl_ms(self, token: str) -> int:
        """The session's remaining lifetime (ms); -2 if it does not exist, -1 if no TTL."""
        return int(await self.redis.pttl(keys.session_key(token)))

    async def stop(self, token: str) -> int:
        """Stop the reply of the session's oldest unanswered message, wherever it runs.

        The stop is recorded in the session (a worker that starts the reply later sees
        it) and announced on :data:`keys.STOP_CHANNEL` as ``{"token": ..., "seq": ...}``
        (for the worker generating it now).

        Returns:
            The ``seq`` of the message stopped, or 0 if no message waits for a reply.

        Raises:
            SessionExpired: no such session.
        """
        status, seq = await self._stop(keys=[keys.session_key(token)])
        if status is StopStatus.NO_SESSION:
            raise SessionExpired(token)
        if status is StopStatus.NOTHING_WAITS:
            return 0
        await self.redis.spublish(keys.STOP_CHANNEL, json.dumps({"token": token, "seq": seq}))  # type: ignore[attr-defined]  # stale stubs
        return int(seq)

    async def stop_seq(self, token: str) -> int:
        """The ``seq`` of the last message whose reply a client asked to stop (0: none).

        Raises:
            SessionExpired: no such session.
        """
        return await self._counter(token, "$.stop_seq")

    async def replied_seq(self, token: str) -> int:
        """The ``seq`` of the session's last answered (or failed) message.

        Raises:
            SessionExpired: no such session.
        """
        return await self._counter(token, "$.replied_seq")

    async def message_marks(
        self, token: str, message_ids: Collection[str]
    ) -> dict[str, MessageMark]:
        """Which of the user messages ``message_ids`` session ``token``'s history holds,
        and where each stands: one ``JSON.GET`` of the session's ``replied_seq`` and of
        each message's ``seq`` and ``entry`` (JSONPath filters on its id; no content is
        read). None given: nothing is read.

        Returns:
            A mark for each id the history holds; an id it does not hold is absent.

        Raises:
            SessionExpired: no such session.
            ValueError: an id is not one the store makes (UUID4 text).
        """
        paths = ["$.replied_seq"]
        for message_id in message_ids:
            if _MESSAGE_ID.fullmatch(message_id) is None:
                raise ValueError(f"not a message id: {message_id[:40]!r}")
            paths += [f'$.messages[?(@.id=="{message_id}")].{f}' for f in ("seq", "entry")]
        if len(paths) == 1:
            return {}
        found = await self.json_get(keys.session_key(token), *paths)
        if found is None:
            raise SessionExpired(token)
        replied = int(found[paths[0]][0]) if found[paths[0]] else 0
        marks = {}
        for message_id, seq_path, entry_path in zip(
            message_ids, paths[1::2], paths[2::2], strict=True
        ):
            seq, entry = found[seq_path], found[entry_path]
            if seq and seq[0] is not None:
                marks[message_id] = MessageMark(
                    str(entry[0]) if entry and entry[0] else "", int(seq[0]) <= replied
                )
        return marks

    async def _counter(self, token: str, path: str) -> int:
        found = await self.json_get(keys.session_key(token), path)
        if found is None:
            raise SessionExpired(token)
        return int(found[0]) if found else 0

    async def crashes(self, token: str, seq: int) -> int:
        """How many attempts at message ``seq`` of the session ended with their worker's
        death, as counted so far (by :meth:`storage.replies.Replies.begin`; 0 if the
        session is gone)."""
        found = await self.json_get(keys.session_key(token), "$.crashes")
        record = str(found[0]) if found else ""
        crashed_seq, _, n = record.partition(":")
        return int(n) if crashed_seq == str(seq) and n.isdigit() else 0
