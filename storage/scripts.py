"""Parley's Lua scripts: how they are run, and the one place their replies are decoded.

Every script of this package (a ``.lua`` file under ``storage/lua/``) returns
``{status, payload}`` (``library.lua``'s ``reply``): ``status`` an integer, one of the
script's statuses, which the script declares at its top under the names and values of
its :class:`~enum.IntEnum` below; ``payload`` a value, a table, or nil. :class:`Script`
turns that reply into ``(status member, payload)`` and refuses anything else
(:class:`ScriptReplyError`).

Each script runs with ``includes/library.lua`` prepended (the reply helper, and the tail that
appends an event to a session's stream and announces it), and those that trim a message
stream with ``includes/trim.lua`` too, by ``EVALSHA``: redis-py's script object loads it again on
``NOSCRIPT`` (a Redis restarted without persistence, a failover, ``SCRIPT FLUSH``), on
whichever node answered so, and a script is named by the hash of its text, so
processes of two versions never run each other's. The README's design section says why
these are scripts rather than Redis Functions, with measurements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from enum import IntEnum
from importlib.resources import files
from typing import Any, Final, Generic, TypeVar

from redis.asyncio import Redis

from storage.replication import WaitReplicas, run_and_wait

#: What a script's keys and arguments may be.
Arg = str | int | float


@functools.cache
def source(name: str) -> str:
    """The text of the script ``name`` (``storage/lua/<name>``; a shared part:
    ``includes/<name>``), read once a process."""
    return files("storage").joinpath("lua", name).read_text(encoding="utf-8")


#: Prepended to every script: its helpers are then plain Lua locals of the script.
LIBRARY: Final = source("includes/library.lua")
#: Prepended after :data:`LIBRARY` to the scripts that trim a message stream only: each
#: helper defined costs every call of the script (a closure made; see the README).
TRIM: Final = source("includes/trim.lua")
#: Prepended after :data:`LIBRARY` to batched scripts (:class:`storage.batching.BatchScript`).
BATCH: Final = source("includes/batch.lua")


class AdmitStatus(IntEnum):
    """``admit.lua``: the admission counted (payload: admissions counting now) or not
    (payload: ms until one stops counting)."""

    ADMITTED = 0
    REFUSED = 1


class RenewStatus(IntEnum):
    """``renew.lua``: the socket leases were renewed (payload: how many)."""

    RENEWED = 0


class QuotaStatus(IntEnum):
    """``quota.lua``: some of the quota is left (payload: units used) or none (payload:
    ms until it renews)."""

    LEFT = 0
    USED_UP = 1


class EnqueueStatus(IntEnum):
    """``enqueue.lua``: queued (payload: ``[seq, entry id]``) or refused, unchanged
    (``TOO_LARGE``'s payload: the bytes the session holds; ``TOO_LONG``'s: the prompt's
    tokens; an admission bound's, ``RATE_LIMITED`` to ``CLIENT_QUOTA``: ms until it
    would admit)."""

    QUEUED = 0
    NO_SESSION = 1
    TOO_MANY_PENDING = 2
    SESSION_FULL = 3
    OVERLOADED = 4
    WRONG_MODEL = 5
    TOO_LARGE = 6
    TOO_LONG = 7
    RATE_LIMITED = 8
    SESSION_QUOTA = 9
    CLIENT_QUOTA = 10


class ReviseStatus(IntEnum):
    """``revise.lua``: the last message is queued again (payload: ``[seq, message id,
    entry id, event id]``) or refused, unchanged (``TOO_LARGE``'s payload: the bytes
    the session holds; ``TOO_LONG``'s: the prompt's tokens; an admission bound's,
    ``RATE_LIMITED`` to ``CLIENT_QUOTA``: ms until it would admit)."""

    REVISED = 0
    NO_SESSION = 1
    NOT_LAST_MESSAGE = 2
    IN_PROGRESS = 3
    TOO_MANY_VERSIONS = 4
    OVERLOADED = 5
    WRONG_MODEL = 6
    TOO_LARGE = 7
    TOO_MANY_ATTEMPTS = 8
    TOO_LONG = 9
    RATE_LIMITED = 10
    SESSION_QUOTA = 11
    CLIENT_QUOTA = 12


class SetModelStatus(IntEnum):
    """``set_model.lua``: the session's model was set, or not (messages wait for replies)."""

    SET = 0
    BUSY = 1
    NO_SESSION = 2


class BeginStatus(IntEnum):
    """``begin.lua``: an attempt began, first or after a ``restart`` event (payload:
    ``[crashes, the session's fields as JSON, its messages as JSON]``), or nothing
    changed."""

    STARTED = 0
    RESTARTED = 1
    ANSWERED = 2
    NOT_YET = 3
    NO_SESSION = 4
    STALE = 5


class EmitStatus(IntEnum):
    """One event's outcome in ``emit_batch.lua``'s payload: emitted (with its event id),
    or not."""

    EMITTED = 0
    NO_SESSION = 1
    FENCED = 2


class BatchStatus(IntEnum):
    """A batched script (``emit_batch.lua``, and every :class:`BatchScript`): always
    batched; each call's outcome is in the payload, in order."""

    BATCHED = 0


class FinishStatus(IntEnum):
    """``finish.lua``: the message closed (payload: the closing event's id), or not."""

    FINISHED = 0
    ALREADY_RECORDED = 1
    NO_SESSION = 2
    FENCED = 3
    NOT_YOUR_TURN = 4
    STALE = 5


class ChargeStatus(IntEnum):
    """``charge.lua``: the session's quota charged (payload: its client's digest, "" if
    unknown), or no session."""

    CHARGED = 0
    NO_SESSION = 1


class LostStatus(IntEnum):
    """``lost.lua``: the oldest unanswered message closed as lost (payload: its seq, now
    ``replied_seq``), or not (payload: ``replied_seq``; none for ``NO_SESSION``)."""

    CLOSED = 0
    NOT_LOST = 1
    NOTHING_WAITS = 2
    NO_SESSION = 3


class OwnerAddStatus(IntEnum):
    """``owner_add.lua``: the session added to its owner's conversations (payload: how
    many they are now), the owner's limit reached (payload: how many), or no owner."""

    ADDED = 0
    FULL = 1
    NO_OWNER = 2


class TitleStatus(IntEnum):
    """``title.lua``: the title set, the session's own title kept, or no session."""

    SET = 0
    KEPT = 1
    NO_SESSION = 2


class SummaryStatus(IntEnum):
    """``summary.lua``: the new summary stored, or not: the stored one is not the one it
    was made from (payload: the stored summary's seq), or its seq is out of range
    (payload: ``[seq, replied_seq]``); nothing changed."""

    STORED = 0
    STALE = 1
    OUT_OF_RANGE = 2
    NO_SESSION = 3


class StopStatus(IntEnum):
    """``stop.lua``: a stop recorded (payload: the seq of the message to stop), or not."""

    STOPPED = 0
    NOTHING_WAITS = 1
    NO_SESSION = 2


class FailStatus(IntEnum):
    """``fail.lua``: the failed try counted (payload: the new delivery count), or the
    entry is not pending."""

    COUNTED = 0
    NOT_PENDING = 1


class DueStatus(IntEnum):
    """``due.lua``: payload, the tokens of the sessions taken."""

    TAKEN = 0


class TrimStatus(IntEnum):
    """``trim_stream.lua``: payload, the number of entries removed."""

    TRIMMED = 0


class ClaimStatus(IntEnum):
    """``claim.lua``: payload, ``[next start id, [[id, [field, value, ...], delivery
    count], ...], deleted ids]``."""

    CLAIMED = 0


class HeartbeatStatus(IntEnum):
    """``heartbeat.lua``: payload, the entry ids still owned by the consumer."""

    REFRESHED = 0


class ReleaseStatus(IntEnum):
    """``release.lua``: the consumer deleted (payload: entries handed to the heir), or
    kept, holding entries (it is the heir itself), or no such stream or group."""

    RELEASED = 0
    KEPT = 1
    NO_GROUP = 2


class SweepStatus(IntEnum):
    """``sweep_consumers.lua``: payload, the names of the consumers deleted; or no such
    stream or group."""

    SWEPT = 0
    NO_GROUP = 1


S = TypeVar("S", bound=IntEnum)


class ScriptReplyError(RuntimeError):
    """A script answered outside the ``{status, payload}`` convention, or with a status
    its enum does not know: the script and this module disagree (a bug, not a state of
    the data)."""


def decode(name: str, statuses: type[S], reply: Any) -> tuple[S, Any]:
    """A script's reply as ``(status, payload)``.

    Args:
        name: the script's file name, for the error.
        statuses: the script's statuses.
        reply: what ``EVALSHA`` returned: ``[status, payload]`` (payload None for nil).

    Raises:
        ScriptReplyError: ``reply`` is not such a list, or its status is not one of
            ``statuses``.
    """
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[0], int):
        raise ScriptReplyError(f"{name} answered {reply!r}, not {{status, payload}}")
    try:
        status = statuses(reply[0])
    except ValueError as e:
        known = ", ".join(f"{s.name}={s.value}" for s in statuses)
        raise ScriptReplyError(
            f"{name} answered status {reply[0]}, which {statuses.__name__} lacks ({known})"
        ) from e
    return status, reply[1]


class Script(Generic[S]):
    """One script of this package, run by ``EVALSHA`` with the library prepended.

    Args:
        redis: the client to run it on (single Redis or cluster).
        name: its file, e.g. ``"finish.lua"``.
        statuses: its statuses.
        trims: whether it uses ``trim.lua``'s helpers (then prepended too).
        batched: whether it uses ``batch.lua``'s (:class:`storage.batching.BatchScript`).
        wait: replicas that must hold its writes before a call returns
            (:mod:`storage.replication`); None: none waited for.
    """

    def __init__(
        self,
        redis: Redis[str],
        name: str,
        statuses: type[S],
        *,
        trims: bool = False,
        batched: bool = False,
        wait: WaitReplicas | None = None,
    ) -> None:
        self.name = name
        self.statuses = statuses
        self._redis = redis
        self._wait = wait
        text = LIBRARY + (TRIM if trims else "") + (BATCH if batched else "") + source(name)
        self._script = redis.register_script(text)

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> tuple[S, Any]:
        """Run the script; its reply decoded (see :func:`decode`).

        Raises:
            ScriptReplyError: the reply breaks the convention.
            redis.exceptions.RedisError: the script failed, or Redis is unreachable.
        """
        if self._wait is None:
            reply = await self._script(keys=keys, args=args)
        else:
            reply = await run_and_wait(self._redis, self._script, keys, args, self._wait, self.name)
        return decode(self.name, self.statuses, reply)
