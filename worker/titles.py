"""Conversation titles: after a session's first reply, the model is asked for a short title.

A title is a low-priority job that never delays a reply (:mod:`worker.jobs`):

- once a session's first reply is recorded, its worker adds the session's token to the
  title stream of the session's model (:func:`storage.keys.title_stream`), then acks the
  reply's message entry: a worker that dies in between leaves the entry pending, and
  the worker that takes it over finds the reply recorded and queues the job;
- the workers that serve that model read it in the consumer group
  :data:`storage.keys.TITLE_GROUP`, one job at a time, and only while they have no
  reply in flight; a job its worker died on is taken over after
  :data:`worker.jobs.CLAIM_IDLE_MS`;
- the session's model (its API name) gets the first message and reply, and at most
  :data:`TITLE_MAX_TOKENS` tokens to answer, charged to the session's quotas; the
  answer's first line, without quotes or Markdown marks, cut at
  :data:`TITLE_MAX_CHARS`, becomes the title unless the session has one by then
  (``title.lua``);
- a job whose model request fails is dropped with a warning (a person can rename the
  conversation): titles are a convenience.
"""

from __future__ import annotations

import logging
import re

from protocol.labels import strip_hidden
from runtime.logs import fingerprint
from storage import keys
from storage.store import Store
from worker.jobs import IdleJobs
from worker.model.errors import LLMError
from worker.model.llm import PromptMessage

logger = logging.getLogger(__name__)

#: Tokens the model may spend on a title.
TITLE_MAX_TOKENS = 24
#: The longest title kept (characters); longer answers are cut at a word.
TITLE_MAX_CHARS = 80
#: Characters of the first message and of the first reply shown to the model.
EXCERPT_CHARS = 600
#: Bound of each model's title stream (entries, approximate).
TITLE_STREAM_MAXLEN = 10_000

INSTRUCTION = (
    "Write a title of at most six words for the conversation below. Answer with the "
    "title alone, without quotes."
)


def clean_title(answer: str) -> str:
    """The title in a model's answer: its first non-empty line, without surrounding
    quotes, Markdown marks, a ``Title:`` label, control or format characters
    (:mod:`protocol.labels`), white space collapsed, cut at a word
    to :data:`TITLE_MAX_CHARS`; "" if nothing is left."""
    line = next((x for x in answer.splitlines() if x.strip()), "")
    line = re.sub(r"^\s*(?:#+|\*+|title\s*:)\s*", "", line, flags=re.IGNORECASE)
    line = " ".join(strip_hidden(line).split()).strip(" \"'`*_.")
    if len(line) > TITLE_MAX_CHARS:
        cut = line[:TITLE_MAX_CHARS].rsplit(" ", 1)[0]
        line = (cut or line[:TITLE_MAX_CHARS]).rstrip(" ,;:-")
    return line


async def request_title(store: Store, token: str, model: str) -> None:
    """Queue a title job for session ``token`` (after its first reply is recorded) in
    the stream of ``model`` (its catalog id), read only by the workers that serve it
    (:meth:`storage.deliveries.Deliveries.queue_job`).

    Raises:
        redis.exceptions.RedisError: Redis failed (nothing was queued).
    """
    await store.deliveries.queue_job(keys.title_stream(model), token, TITLE_STREAM_MAXLEN)


class Titler(IdleJobs):
    """One worker's reader of the title jobs of one of its models (see
    :class:`worker.jobs.IdleJobs` for its arguments)."""

    kind = "titles"
    group = keys.TITLE_GROUP

    @staticmethod
    def stream_of(model: str) -> str:
        """The title stream of ``model``."""
        return keys.title_stream(model)

    async def requeue(self, token: str, model: str) -> None:
        """Queue session ``token``'s title job again, for ``model``'s pool."""
        await request_title(self.store, token, model)

    async def handle(self, token: str) -> None:
        """Ask the session's model for ``token``'s title and set it unless the session
        has one."""
        found = await self.session_of(token)
        if found is None:
            return
        session, model = found
        if session.title or not session.messages:
            return
        first = next((m for m in session.messages if m.role == "user"), None)
        reply = next((m for m in session.messages if m.role == "assistant"), None)
        if first is None or reply is None:
            return
        prompt = [
            PromptMessage(role="system", content=INSTRUCTION),
            PromptMessage(
                role="user",
                content=f"Message: {first.content[:EXCERPT_CHARS]}\n\n"
                f"Reply: {reply.content[:EXCERPT_CHARS]}",
            ),
        ]
        try:
            answer = await self.ask(token, prompt, TITLE_MAX_TOKENS, model)
        except LLMError as e:
            logger.warning("session=%s no title: %s", fingerprint(token), e)
            return
        title = clean_title(answer.text)
        if title and await self.store.owners.set_title_if_none(token, title):
            logger.info("session=%s titled (%d chars)", fingerprint(token), len(title))
