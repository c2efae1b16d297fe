"""Low-priority jobs of a worker (titles, summaries): read one at a time from a stream of
their own, only while the worker has no reply in flight, so a job never delays a reply.

Jobs stay in their pool: each catalog model has its own stream of each kind of job
(:func:`storage.keys.title_stream`, :func:`storage.keys.summary_stream`), queued by the
reply that calls for the job and read only by the workers that serve the model, which
ask their own model API for it, by the model's API name. A conversation that chose an
on-premises model never has its text sent to another pool's API by a job. A worker
runs one reader of each kind per model it serves. Every job's model request is charged
to the session's and its client's quotas, answered or not (:meth:`IdleJobs.ask`).

A job is a session's token. A job left pending by a dead worker is taken over after
:data:`CLAIM_IDLE_MS`; so is one whose try raised (logged with its traceback and counted
in ``parley_job_failures_total{kind}``). Each try is one delivery of the entry (a read,
or a takeover, which counts one), and a job is given up (acked) once its delivery count
reaches ``JOB_MAX_ATTEMPTS``, whatever ended its tries: an error, a Redis outage, or its
worker's death. Nothing a job does ends the reader: it goes on with the next job.

A reader keeps the scheduling (when to read, retries, how many tries); the store
creates the group, reads, takes over, acks and queues jobs (:mod:`storage.deliveries`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, NamedTuple

from redis.exceptions import ResponseError

from runtime.logs import fingerprint
from storage.admission import Limiter
from storage.connection import REDIS_DOWN
from storage.deliveries import Delivery
from storage.models import Session
from storage.sessions import SessionExpired
from storage.store import Store
from worker.config import WorkerSettings
from worker.metrics import JOB_FAILURES
from worker.model.errors import LLMError
from worker.model.llm import LLMClient, PromptMessage
from worker.model.response import Usage, track_usage
from worker.quota import charge_request, reply_cost

logger = logging.getLogger(__name__)

#: A job pending this long (ms) is taken over: its worker is taken for dead, or its try
#: failed.
CLAIM_IDLE_MS = 60_000
#: How long (s) a reader waits after Redis failed before it tries again.
_REDIS_RETRY_S = 1.0


class Job(NamedTuple):
    """One job as a reader holds it: its entry (acked through it), its session, and its
    delivery count (the tries so far, this one included)."""

    delivery: Delivery
    token: str
    deliveries: int


class Answer(NamedTuple):
    """What the model answered a job: its text, and the tokens it reported."""

    text: str
    usage: Usage


class IdleJobs:
    """One worker's reader of one kind of job for one of its models; a subclass says
    which kind (:attr:`kind`, :attr:`group`, :meth:`stream_of`, :meth:`requeue`) and
    does each job (:meth:`handle`).

    Args:
        settings: the worker's settings (the catalog, ``JOB_MAX_ATTEMPTS``, the quotas).
        store: the worker's store.
        llm: the worker's model client.
        model: the catalog id of the model whose jobs this reader takes; the worker
            serves it.
        consumer: the worker's consumer name.
        idle: set while the worker has no reply in flight (jobs wait for it).
        limiter: the quotas (None: a limiter of its own).
    """

    #: The kind of job, in logs and metric labels.
    kind: ClassVar[str]
    #: The workers' consumer group on every stream of this kind.
    group: ClassVar[str]

    def __init__(
        self,
        settings: WorkerSettings,
        store: Store,
        llm: LLMClient,
        model: str,
        consumer: str,
        idle: asyncio.Event,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        self.model = model
        self.stream = self.stream_of(model)
        self.consumer = consumer
        self.idle = idle
        self.limiter = limiter if limiter is not None else Limiter(store.redis)

    @staticmethod
    def stream_of(model: str) -> str:
        """The stream of this kind of job for ``model`` (a catalog id)."""
        raise NotImplementedError

    async def requeue(self, token: str, model: str) -> None:
        """Queue session ``token``'s job again, for ``model``'s pool."""
        raise NotImplementedError

    async def handle(self, token: str) -> None:
        """Do the job of session ``token``; errors of the model are its own to log.

        Raises:
            redis.exceptions.RedisError: Redis failed (the job stays pending).
            Exception: anything else that went wrong (logged, counted; the job stays
                pending until its tries run out).
        """
        raise NotImplementedError

    async def run(self) -> None:
        """Take jobs one at a time, between replies, until cancelled; no error ends it."""
        group_ready = False
        while True:
            await self.idle.wait()
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                job = await self._next()
            except REDIS_DOWN as e:
                if isinstance(e, ResponseError) and str(e).startswith("NOGROUP"):
                    group_ready = False  # the stream was deleted: create it again
                logger.warning("%s jobs of %s: Redis unavailable: %s", self.kind, self.model, e)
                await asyncio.sleep(_REDIS_RETRY_S)
                continue
            except Exception:
                logger.exception(
                    "%s jobs of %s: reading the next job failed", self.kind, self.model
                )
                await asyncio.sleep(_REDIS_RETRY_S)
                continue
            if job is not None:
                await self._do(job)

    async def _do(self, job: Job) -> None:
        """Try ``job`` and ack it, unless its try failed with tries left (it stays
        pending); one whose tries are used up is acked untried."""
        limit = self.settings.job_max_attempts
        done = job.deliveries <= limit and await self._try(job)
        if not done:
            if job.deliveries < limit:
                return  # pending: taken over again after CLAIM_IDLE_MS
            logger.warning(
                "session=%s %s job given up at delivery %d (JOB_MAX_ATTEMPTS %d)",
                fingerprint(job.token),
                self.kind,
                job.deliveries,
                limit,
            )
        try:
            await job.delivery.ack()
        except REDIS_DOWN as e:
            # Pending still: taken over, and found done or given up, after CLAIM_IDLE_MS.
            logger.warning("session=%s %s job not acked: %s", fingerprint(job.token), self.kind, e)

    async def _try(self, job: Job) -> bool:
        """Do ``job`` once; whether it went through. Whatever it raised is logged (with
        its traceback, but for Redis being unavailable) and counted, never raised."""
        try:
            await self.handle(job.token)
        except Exception as e:
            JOB_FAILURES.labels(self.kind).inc()
            args = (
                fingerprint(job.token),
                self.kind,
                job.deliveries,
                self.settings.job_max_attempts,
            )
            if isinstance(e, REDIS_DOWN):
                logger.warning("session=%s %s job failed (try %d of %d): %s", *args, e)
            else:
                logger.exception("session=%s %s job failed (try %d of %d)", *args)
            return False
        return True

    async def _ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; from the start, so a
        job queued before any worker of the model ran is read."""
        await self.store.deliveries.create_group(self.stream, self.group)

    async def _next(self) -> Job | None:
        """A job taken over (from a dead worker, or after a failed try), else a new one
        (waiting up to 1 s); None if there is none.

        A takeover counts a delivery (:meth:`storage.deliveries.Deliveries.take_over`):
        every try is one, and a new job's first is its read.
        """
        deliveries = self.store.deliveries
        taken = await deliveries.take_over(self.stream, self.group, self.consumer, CLAIM_IDLE_MS)
        if taken is not None:
            return Job(taken, str(taken.fields.get("token", "")), taken.deliveries)
        read = await deliveries.read(
            [self.stream], self.consumer, count=1, block_ms=1000, group=self.group
        )
        if not read:
            return None
        return Job(read[0], str(read[0].fields.get("token", "")), 1)

    async def session_of(self, token: str) -> tuple[Session, str | None] | None:
        """Session ``token`` and the API name of its model (None: the worker's own), if
        the job is this reader's to do; else None: the session is gone, its model left
        the catalog, or it chose another model since the job was queued (the job is
        then queued again for that model's pool, which alone may see its text).

        Raises:
            redis.exceptions.RedisError: Redis failed.
        """
        try:
            session = await self.store.sessions.get_session(token, touch=False)
        except SessionExpired:
            return None
        offer = self.settings.offer(session.model)
        if offer is None:
            logger.warning(
                "session=%s no %s job: its model %r is not in the catalog",
                fingerprint(token),
                self.kind,
                session.model,
            )
            return None
        if offer.id != self.model:
            await self.requeue(token, offer.id)
            logger.info(
                "session=%s %s job moved from model %s to %s",
                fingerprint(token),
                self.kind,
                self.model,
                offer.id,
            )
            return None
        return session, offer.api_model

    async def ask(
        self, token: str, prompt: list[PromptMessage], max_tokens: int, model: str | None
    ) -> Answer:
        """The answer of ``model`` (its API name; None: the worker's own) to ``prompt``,
        in at most ``max_tokens`` tokens, charged to session ``token``'s and its
        client's quotas whether it came or not: every model request is paid for. The
        charge is the model's reported ``usage``, else an estimate of the prompt and of
        what came of the answer (:func:`worker.quota.reply_cost`).

        Raises:
            LLMError: the model failed (after its charge).
        """
        usage = track_usage()
        pieces: list[str] = []
        try:
            async for piece in self.llm.stream(prompt, max_tokens=max_tokens, model=model):
                pieces.append(piece)
        except LLMError:
            cost = reply_cost(usage, prompt, "".join(pieces))
            await charge_request(self.store, self.limiter, self.settings, token, cost)
            raise
        text = "".join(pieces)
        cost = reply_cost(usage, prompt, text)
        await charge_request(self.store, self.limiter, self.settings, token, cost)
        return Answer(text, usage)
