"""Rolling summary memory: a session's oldest turns, folded into a summary by the model.

A summary is a low-priority job that never delays a reply, run as the titles are
(:mod:`worker.jobs`, :mod:`worker.titles`):

- once a reply is recorded, its worker queues a job for the session in the summary
  stream of the session's model (:func:`storage.keys.summary_stream`) if the turns
  after the summary call for one (:func:`worker.memory.summary_due`: more than
  ``MEMORY_SUMMARY_TRIGGER_TOKENS``, or nearly ``MEMORY_MAX_MESSAGES``); best effort,
  the next reply asks again;
- the workers that serve that model read it in the group
  :data:`storage.keys.SUMMARY_GROUP`, one job at a time and only while they have no
  reply in flight; a job its worker died on is taken over after
  :data:`worker.jobs.CLAIM_IDLE_MS`;
- the job reads the whole session, picks the oldest turns after the summary
  (:func:`worker.memory.turns_to_fold`, never the newest) and asks the session's model
  (its API name) for the summary of the stored summary plus those turns, in at most
  ``MEMORY_SUMMARY_MAX_TOKENS`` tokens, charged to the session's quotas;
- ``summary.lua`` stores it only if the stored summary is still the one it was made
  from (compare-and-set on its ``seq``): a retried job, or two workers on the same
  session, store one summary, and no turn is folded twice or skipped. The loser's model
  call is wasted, nothing else;
- a job whose model request fails is dropped with a warning: the session's next reply
  queues another while the summary is still due, and until then the prompt holds the
  newest turns that fit, as it would without summaries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

from protocol.wire import utc_now
from runtime.logs import fingerprint
from storage import keys
from storage.models import SummaryRecord
from storage.scripts import SummaryStatus
from storage.sessions import SessionExpired
from storage.summaries import Summaries
from worker.jobs import IdleJobs
from worker.memory import Turn, answered_turns, summary_due, turns_to_fold
from worker.model.errors import LLMError
from worker.model.llm import PromptMessage

logger = logging.getLogger(__name__)

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
    """One worker's reader of the summary jobs of one of its models (see
    :class:`worker.jobs.IdleJobs` for its arguments; the settings also give the memory
    budget and the summary's)."""

    kind = "summaries"
    group = keys.SUMMARY_GROUP

    @cached_property
    def summaries(self) -> Summaries:
        """The store's summaries part, on the worker's client."""
        return Summaries(self.store.redis, self.settings)

    @staticmethod
    def stream_of(model: str) -> str:
        """The summary stream of ``model``."""
        return keys.summary_stream(model)

    async def requeue(self, token: str, model: str) -> None:
        """Queue session ``token``'s summary job again, for ``model``'s pool."""
        await self.summaries.request_summary(token, model)

    async def handle(self, token: str) -> None:
        """Summarize session ``token`` if it is due (see :meth:`summarize`)."""
        await self.summarize(token)

    async def summarize(self, token: str) -> SummaryStatus | None:
        """Fold session ``token``'s oldest turns into its summary, if it is due, with
        the session's model if this reader's model is still its.

        Returns:
            What ``summary.lua`` did with the new summary; None if none was made (the
            session is gone or chose another model, no summary is due, or the model
            failed).

        Raises:
            redis.exceptions.RedisError: Redis failed (the job stays pending).
        """
        found = await self.session_of(token)
        if found is None:
            return None
        session, model = found
        s = self.settings
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
        try:
            text, usage = await self.ask(token, prompt, limit, model)
        except LLMError as e:
            logger.warning("session=%s no summary: %s", fingerprint(token), e)
            return None
        text = text.strip()
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
