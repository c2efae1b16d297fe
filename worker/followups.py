"""The jobs a recorded reply calls for: its conversation's title after the first reply,
and a summary once the turns after the summary outgrow the prompt (:mod:`worker.titles`,
:mod:`worker.summary`). Queued best effort: Redis errors are logged (a first reply's
entry is acked only after its title job is queued, see :mod:`worker.generation`)."""

from __future__ import annotations

import logging

from runtime.logs import fingerprint
from storage.connection import REDIS_DOWN
from storage.models import StoredMessage
from storage.store import Store
from storage.summaries import Summaries
from worker.config import WorkerSettings
from worker.memory import PromptPlan, summary_due
from worker.model.llm import LLMClient
from worker.titles import request_title

logger = logging.getLogger(__name__)


class FollowUps:
    """Queues a reply's title and summary jobs in its model's pool.

    Args:
        settings: the worker's settings (titles and summaries on or off, the trigger).
        store: the session store.
        llm: the model client (its token counts per model).
    """

    def __init__(self, settings: WorkerSettings, store: Store, llm: LLMClient) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        self.summaries = Summaries(store.redis, settings)

    async def request_title(self, token: str, model: str) -> None:
        """Queue the session's title job for the pool of ``model`` (a catalog id)."""
        try:
            await request_title(self.store, token, model)
        except REDIS_DOWN as e:
            logger.warning("session=%s title not requested: %s", fingerprint(token), e)

    def summary_due(self, plan: PromptPlan, reply: StoredMessage, api_model: str | None) -> bool:
        """Whether the turns after the summary, with the one just recorded, call for a
        summary job: some already left the prompt, or they pass the trigger (tokens as
        ``api_model``'s counter estimates them)."""
        if not self.settings.memory_summary:
            return False
        left_out = plan.kept < len(plan.recent)
        return left_out or summary_due(
            [*plan.recent, (plan.message, reply)],
            trigger_tokens=self.settings.memory_summary_trigger_tokens,
            max_messages=self.settings.memory_max_messages,
            count=self.llm.counter(api_model).estimate,
        )

    async def request_summary(self, token: str, model: str) -> None:
        """Queue the session's summary job for the pool of ``model`` (the next reply asks
        again if this fails)."""
        try:
            await self.summaries.request_summary(token, model)
        except REDIS_DOWN as e:
            logger.warning("session=%s summary not requested: %s", fingerprint(token), e)
