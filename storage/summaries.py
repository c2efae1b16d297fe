"""Rolling summaries: queueing summary jobs, and storing a summary exactly once.

A session's summary (:class:`storage.models.SummaryRecord`) covers its turns up to a
``seq``; ``summary.lua`` stores a new one only if it extends the stored one from exactly
that ``seq`` (compare-and-set), so a job retried after a crash or raced by another
worker folds no turn twice and skips none. The workers' job is :mod:`worker.summary`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Final

from storage import keys
from storage.base import StoreBase
from storage.deliveries import Deliveries
from storage.models import SummaryRecord
from storage.scripts import Script, SummaryStatus
from storage.sessions import SessionExpired

#: Bound of each model's summary stream (entries, approximate).
SUMMARY_STREAM_MAXLEN: Final = 10_000


class Summaries(StoreBase):
    """Sessions' rolling summaries (a store part, used by the summary job)."""

    @cached_property
    def _summary(self) -> Script[SummaryStatus]:
        return Script(self.redis, "summary.lua", SummaryStatus)

    @cached_property
    def _jobs(self) -> Deliveries:
        return Deliveries(self.redis, self.settings)

    async def request_summary(self, token: str, model: str) -> None:
        """Queue a summary job for session ``token`` in the stream of ``model`` (its
        catalog id), read only by the workers that serve it
        (:meth:`storage.deliveries.Deliveries.queue_job`).

        Raises:
            redis.exceptions.RedisError: Redis failed (nothing was queued).
        """
        await self._jobs.queue_job(keys.summary_stream(model), token, SUMMARY_STREAM_MAXLEN)

    async def store_summary(self, token: str, base: int, summary: SummaryRecord) -> SummaryStatus:
        """Store ``summary`` as session ``token``'s, if the stored one is still ``base``.

        Args:
            base: the ``seq`` of the summary it was made from (0: there was none).
            summary: the new summary; its ``seq`` must be after ``base``, answered, and
                before the session's last message.

        Returns:
            ``STORED``; ``STALE`` (another summary was stored since: nothing changed);
            ``OUT_OF_RANGE`` (``summary.seq`` is not a turn it may cover: nothing
            changed).

        Raises:
            SessionExpired: the session no longer exists.
        """
        status, _ = await self._summary(
            keys=[keys.session_key(token)],
            args=[base, summary.seq, summary.model_dump_json()],
        )
        if status is SummaryStatus.NO_SESSION:
            raise SessionExpired(token)
        return status
