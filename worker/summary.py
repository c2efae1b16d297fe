"""Rolling summary memory: a session's oldest turns, folded into a summary by the model.

A summary is a low-priority job that never delays a reply, run as the titles are
(:mod:`worker.titles`):

- once a reply is recorded, its worker queues a job for the session
  (:data:`storage.summaries.SUMMARY_STREAM`) if the turns after the summary call for one
  (:func:`worker.memory.summary_due`: more than ``MEMORY_SUMMARY_TRIGGER_TOKENS``, or
  nearly ``MEMORY_MAX_MESSAGES``); best effort, the next reply asks again;
- each worker reads that stream in the group :data:`storage.summaries.SUMMARY_GROUP`,
  one job at a time and only while it has no reply in flight; a job its worker died on
  is taken over after :data:`worker.jobs.CLAIM_IDLE_MS`;
- the job reads the whole session, picks the oldest turns after the summary
  (:func:`worker.memory.turns_to_fold`, never the newest) and asks the model for the
  summary of the stored summary plus those turns, in at most
  ``MEMORY_SUMMARY_MAX_TOKENS`` tokens;
- ``summary.lua`` stores it only if the stored summary is still the one it was made
  from (compare-and-set on its ``seq``): a retried job, or two workers on the same
  session, store one summary, and no turn is folded twice or skipped. The loser's model
  call is wasted, nothing else;
- a job whose model request fails is dropped with a warning: the session's next reply
  queues another while the summary is still due, and until then the prompt holds the
  newest turns that fit, as it would without summaries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from protocol.wire import utc_now
from runtime.logs import fingerprint
from storage.models import SummaryRecord
from storage.scripts import SummaryStatus
from storage.sessions import SessionExpired
from storage.store import Store
from storage.summaries import SUMMARY_GROUP, SUMMARY_STREAM, Summaries
from worker.config import WorkerSettings
from worker.errors import LLMError
from worker.jobs import IdleJobs
from worker.llm import LLMClient, PromptMessage
from worker.memory import Turn, answered_turns, summary_due, turns_to_fold
from worker.response import track_usage

logger = logging.getLogger(__name__)

#: A summary job pending this long (ms) on a worker is taken over.
#: Characters of each message shown to the model (a long one is cut).
EXCERPT_CHARS = 2000

INSTRUCTION = (
    "You keep a short running summary of a conversation between a user and an "
    "assistant. Write the summary again so that it also covers the new messages. Keep "
    "every fact the user gave (names, numbers, places, preferences, decisions) and what "
    "the assistant answered. Answer with the summary alone."
)


def summary_prompt(previous: str, turns: Sequence[Turn]) -> list[PromptMessage]:
    """What the model is asked: the summary so far (may be "") and the turns to add."""
    lines = [f"Summary so far: {previous or '(none)'}", "", "New messages:"]
    for user, reply in turns:
        lines.append(f"User: {user.content[:EXCERPT_CHARS]}")
        lines.append(f"Assistant: {reply.content[:EXCERPT_CHARS]}")
    return [
        PromptMessage(role="system", content=INSTRUCTION),
        PromptMessage(role="user", content="\n".join(lines)),
    ]


class Summarizer(IdleJobs):
    """One worker's reader of summary jobs.

    Args:
        settings: the worker's settings (the memory budget and the summary's).
        store: the worker's store.
        llm: the worker's model client (its token counter is calibrated here too).
        consumer: the worker's consumer name.
        idle: set while the worker has no reply in flight (summaries wait for it).
    """

    stream = SUMMARY_STREAM
    group = SUMMARY_GROUP

    def __init__(
        self,
        settings: WorkerSettings,
        store: Store,
        llm: LLMClient,
        consumer: str,
        idle: asyncio.Event,
    ) -> None:
        super().__init__(store.redis, consumer, idle)
        self.settings = settings
        self.store = store
        self.summaries = Summaries(store.redis, settings)
        self.llm = llm

    async def handle(self, token: str) -> None:
        """Summarize session ``token`` if it is due (see :meth:`summarize`)."""
        await self.summarize(token)

    async def summarize(self, token: str) -> SummaryStatus | None:
        """Fold session ``token``'s oldest turns into its summary, if it is due.

        Returns:
            What ``summary.lua`` did with the new summary; None if none was made (the
            session is gone, no summary is due, or the model failed).

        Raises:
            redis.exceptions.RedisError: Redis failed (the job stays pending).
        """
        try:
            session = await self.store.get_session(token, touch=False)
        except SessionExpired:
            return None
        s = self.settings
        # The session's own model, as its replies, if this worker's pool serves it; else
        # this worker's own (None): any model can summarize, but only through its API.
        offer = s.offer(session.model)
        served = offer is not None and offer.id in s.served_models()
        model = offer.api_model if offer is not None and served else None
        count = self.llm.counter(model).estimate
        base = session.summary
        base_seq = base.seq if base is not None else 0
        recent = answered_turns(session.messages, after=base_seq)
        budget = {
            "trigger_tokens": s.memory_summary_trigger_tokens,
            "max_messages": s.memory_max_messages,
        }
        if not summary_due(recent, count=count, **budget):
            return None
        fold = turns_to_fold(recent, count=count, **budget)
        if not fold:
            return None
        made = await self._write(token, base.text if base is not None else "", fold, model)
        if made is None:
            return None
        text, tokens = made
        covered = fold[-1][0].seq or 0
        record = SummaryRecord(text=text, seq=covered, tokens=tokens, timestamp=utc_now())
        try:
            status = await self.summaries.store_summary(token, base_seq, record)
        except SessionExpired:
            return None
        logger.info(
            "session=%s summary of turns %d-%d (%d tokens): %s",
            fingerprint(token),
            base_seq + 1,
            covered,
            tokens,
            status.name.lower(),
        )
        return status

    async def _write(
        self, token: str, previous: str, fold: Sequence[Turn], model: str | None
    ) -> tuple[str, int] | None:
        """The new summary and its tokens (the model's count where it gives one), or
        None if the model failed or said nothing."""
        limit = self.settings.memory_summary_max_tokens
        prompt = summary_prompt(previous, fold)
        usage = track_usage()
        try:
            text = "".join(
                [p async for p in self.llm.stream(prompt, max_tokens=limit, model=model)]
            ).strip()
        except LLMError as e:
            logger.warning("session=%s no summary: %s", fingerprint(token), e)
            return None
        if not text:
            logger.warning("session=%s no summary: the model said nothing", fingerprint(token))
            return None
        # Idle time: the exact count of what was folded calibrates the estimate (where
        # the server can count), and the summary's own count bounds it.
        await self.llm.count_tokens("\n".join(m.content for turn in fold for m in turn), model)
        tokens = usage.completion_tokens if usage.reported else None
        if tokens is None:
            tokens = await self.llm.count_tokens(text, model) or self.llm.counter(model).estimate(
                text
            )
        if tokens > limit:  # an API that ignores max_tokens: cut, keep the budget
            keep = int(limit * self.llm.counter(model).bytes_per_token)
            text = text.encode("utf-8")[:keep].decode("utf-8", "ignore").rsplit(" ", 1)[0]
            tokens = limit
        return text, tokens
