"""Admission control shared by every server replica: limits counted in Redis.

Each limit is one sorted set per subject (a client address, a session), updated by one
Lua script (``admit.lua``) that reads Redis's clock, so any number of server processes
share one budget and agree on when it frees up. A key holds one subject of one limit
and is its own hash tag (``parley:limit:{sessions:<hash>}``): the script touches one
slot, on a Redis Cluster too, and limits spread over the nodes. Subjects are hashed
(SHA-256), so no address or token is written into a key name.

Two kinds of limit:

- a **sliding window** (:meth:`Limiter.hit`): at most ``limit`` admissions in any
  ``window_s`` seconds; a refusal says when the oldest one stops counting;
- a **lease** (:meth:`Limiter.hold` / :meth:`Limiter.release`): at most ``limit``
  held at once; a holder renews its lease while it lives, so a crashed process's
  leases lapse by themselves;
- a **quota** (:meth:`Limiter.check_quota` / :meth:`Limiter.charge`): units (model
  tokens) per period, counted after the fact, since a reply's cost is known only once
  it is written; a message is refused once the quota is used up, until it renews.

A message's admission (its session's rate window and quota, its client's quota) is
checked by the script that queues it (:class:`MessageLimits`), and the stream entry
carries the client's digest (never its address), so the worker charges the reply to the
client that sent it, in the script that records it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from storage import keys
from storage.scripts import AdmitStatus, QuotaStatus, Script

#: Quotas of model tokens, charged by the worker from the model's own ``usage``.
SESSION_TOKENS = "model_tokens_session"
CLIENT_TOKENS = "model_tokens_client"


@dataclass(frozen=True)
class MessageLimits:
    """What admits one message (or regenerate, or edit) of a session, checked inside the
    script that queues it (``enqueue.lua``, ``revise.lua``; ``admission`` in
    ``library.lua``), so an admission and its message are one step and a refusal spends
    nothing.

    The rate window and the session's quota are fields of the session's document
    (``rate``, ``quota``): read with what the script reads anyway, and written with it.
    The client's quota is a key of its own (:func:`limit_key` of :data:`CLIENT_TOKENS`),
    charged by every session of the client.

    Attributes:
        client: the client's digest (:func:`digest`); "": none (its quota is not
            checked). The script records it in the stream entry and the session, and
            the worker charges the reply to it.
        rate_limit: messages admitted in any ``rate_window_ms``.
        rate_window_ms: the window (ms).
        session_quota: the session's model tokens per period (0: none).
        client_quota: the client's model tokens per period (0: none).
    """

    client: str = ""
    rate_limit: int = 2**31 - 1
    rate_window_ms: int = 1
    session_quota: int = 0
    client_quota: int = 0

    def params(self) -> dict[str, str | int]:
        """The limits as the scripts take them (names of ``admission`` in ``library.lua``)."""
        return {
            "client": self.client,
            "rate_limit": self.rate_limit,
            "rate_window_ms": self.rate_window_ms,
            "session_quota": self.session_quota,
            "client_quota": self.client_quota,
        }


#: No admission bound: what the store's own callers (tests, tools) queue with.
UNLIMITED = MessageLimits()


class Refused(Exception):
    """A limit refused the admission.

    Attributes:
        limit: the limit's name (``"sessions"``, ``"messages"``, ...), a metric label.
        retry_after_s: seconds until the limit admits again (at the earliest).
    """

    def __init__(self, limit: str, retry_after_s: float) -> None:
        super().__init__(f"{limit} limit reached; retry in {retry_after_s:.1f} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


def digest(subject: str) -> str:
    """A subject (a client address) as the text keys and the worker see: 24 hex digits."""
    return hashlib.sha256(subject.encode()).hexdigest()[:24]


def limit_key(limit: str, subject: str) -> str:
    """The key of ``limit`` for ``subject``: ``parley:limit:{<limit>:<hash>}``."""
    return f"{keys.PREFIX}:limit:{{{limit}:{digest(subject)}}}"


class Limiter:
    """Limits kept in Redis, through the process's own client (and so its bounded pool).

    Args:
        redis: a redis-py asyncio client (single Redis or cluster).
    """

    def __init__(self, redis: Redis[str]) -> None:
        self.redis = redis
        self._admit = Script(redis, "admit.lua", AdmitStatus)
        self._quota = Script(redis, "quota.lua", QuotaStatus)

    async def hit(self, limit: str, subject: str, max_count: int, window_s: float) -> str:
        """Admit one more event of ``subject`` under a sliding window.

        Args:
            limit: the limit's name (part of the key, and of :class:`Refused`).
            subject: who is counted (a client address, a session token).
            max_count: admissions allowed in any ``window_s`` seconds.
            window_s: the window (s).

        Returns:
            The admission's id, for :meth:`give_back`.

        Raises:
            Refused: ``max_count`` admissions already count; not recorded.
            redis.exceptions.RedisError: Redis is unreachable.
        """
        admission = uuid.uuid4().hex
        await self._run("window", limit, subject, max_count, window_s, admission)
        return admission

    async def give_back(self, limit: str, subject: str, admission: str) -> None:
        """Undo an admission of :meth:`hit` (what it admitted was refused further on:
        a refusal spends nothing).

        Raises:
            redis.exceptions.RedisError: Redis is unreachable.
        """
        await self.redis.zrem(limit_key(limit, subject), admission)

    async def hold(
        self, limit: str, subject: str, max_count: int, lease_s: float, holder: str
    ) -> None:
        """Take (or renew) one of ``max_count`` places of ``subject`` for ``holder``.

        The place lapses after ``lease_s`` without renewal; renew it by calling again
        with the same ``holder`` (a renewal is never refused).

        Raises:
            Refused: every place is held; ``retry_after_s`` is when a lease would lapse.
            redis.exceptions.RedisError: Redis is unreachable.
        """
        await self._run("hold", limit, subject, max_count, lease_s, holder)

    async def release(self, limit: str, subject: str, holder: str) -> None:
        """Give ``holder``'s place back at once.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable (the lease lapses anyway).
        """
        await self.redis.zrem(limit_key(limit, subject), holder)

    async def _run(
        self, mode: str, limit: str, subject: str, max_count: int, span_s: float, member: str
    ) -> None:
        status, wait_ms = await self._admit(
            keys=[limit_key(limit, subject)],
            args=[mode, max_count, max(1, round(span_s * 1000)), member],
        )
        if status is AdmitStatus.REFUSED:
            raise Refused(limit, int(wait_ms) / 1000)

    async def check_quota(self, limit: str, subject: str, quota: int) -> None:
        """Whether any of ``subject``'s quota is left (nothing is charged).

        Raises:
            Refused: ``quota`` units are used; ``retry_after_s`` is when it renews.
            redis.exceptions.RedisError: Redis is unreachable.
        """
        status, renews_ms = await self._quota(
            keys=[limit_key(limit, subject)], args=["check", quota, 1, 0]
        )
        if status is QuotaStatus.USED_UP:
            raise Refused(limit, int(renews_ms) / 1000)

    async def charge(self, limit: str, subject: str, units: int, period_s: float) -> int:
        """Count ``units`` against ``subject``'s quota; the period starts at the first
        charge. Returns the units used in the period so far.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable.
        """
        _, used = await self._quota(
            keys=[limit_key(limit, subject)],
            args=["charge", 0, max(1, round(period_s * 1000)), units],
        )
        return int(used)
