"""Conversation titles: after a session's first reply, the model is asked for a short title.

A title is a low-priority job that never delays a reply:

- once a session's first reply is recorded, its worker adds the session's token to
  :data:`storage.keys.TITLE_STREAM` (best effort: a worker that dies in between leaves
  the conversation untitled, which a person can rename);
- each worker reads that stream in the consumer group :data:`storage.keys.TITLE_GROUP`,
  one job at a time, and only while it has no reply in flight; a job its worker died on
  is taken over after :data:`worker.jobs.CLAIM_IDLE_MS`;
- the model gets the first message and reply, and at most :data:`TITLE_MAX_TOKENS`
  tokens to answer; the answer's first line, without quotes or Markdown marks, cut at
  :data:`TITLE_MAX_CHARS`, becomes the title unless the session has one by then
  (``title.lua``);
- a job whose model request fails is dropped with a warning: titles are a convenience.
"""

from __future__ import annotations

import asyncio
import logging
import re

from redis.asyncio import Redis

from protocol.labels import strip_hidden
from runtime.logs import fingerprint
from storage import keys
from storage.store import SessionExpired, Store
from worker.errors import LLMError
from worker.jobs import IdleJobs
from worker.llm import LLMClient, PromptMessage

logger = logging.getLogger(__name__)

#: Tokens the model may spend on a title.
TITLE_MAX_TOKENS = 24
#: The longest title kept (characters); longer answers are cut at a word.
TITLE_MAX_CHARS = 80
#: Characters of the first message and of the first reply shown to the model.
EXCERPT_CHARS = 600
#: A title job pending this long (ms) on a worker is taken over.
#: Bound of the title stream (entries, approximate).
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


async def request_title(redis: Redis[str], token: str) -> None:
    """Queue a title job for session ``token`` (after its first reply is recorded)."""
    await redis.xadd(
        keys.TITLE_STREAM, {"token": token}, maxlen=TITLE_STREAM_MAXLEN, approximate=True
    )


class Titler(IdleJobs):
    """One worker's reader of title jobs.

    Args:
        store: the worker's store.
        llm: the worker's model client.
        consumer: the worker's consumer name.
        idle: set while the worker has no reply in flight (titles wait for it).
    """

    stream = keys.TITLE_STREAM
    group = keys.TITLE_GROUP

    def __init__(self, store: Store, llm: LLMClient, consumer: str, idle: asyncio.Event) -> None:
        super().__init__(store.redis, consumer, idle)
        self.store = store
        self.llm = llm

    async def handle(self, token: str) -> None:
        """Title session ``token`` (see :meth:`_title`)."""
        await self._title(token)

    async def _title(self, token: str) -> None:
        """Ask the model for ``token``'s title and set it unless the session has one."""
        try:
            session = await self.store.get_session(token, touch=False)
        except SessionExpired:
            return
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
            pieces = [p async for p in self.llm.stream(prompt, max_tokens=TITLE_MAX_TOKENS)]
        except LLMError as e:
            logger.warning("session=%s no title: %s", fingerprint(token), e)
            return
        title = clean_title("".join(pieces))
        if title and await self.store.set_title_if_none(token, title):
            logger.info("session=%s titled (%d chars)", fingerprint(token), len(title))
