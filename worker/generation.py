"""Generating one reply that has begun: its prompt, the model's stream published as
coalesced ``token`` events, restarts after a broken stream, one more try with a smaller
window when the model refuses the prompt as too long, and its end, recorded: the reply
with its ``done`` event, or the model's error. Once recorded, a reply may queue its
session's summary job (:mod:`worker.summary`)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Literal, NamedTuple

from redis.asyncio import Redis

from protocol.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    MessageEntry,
    RestartEvent,
    TokenEvent,
    utc_now,
)
from runtime.logs import fingerprint
from runtime.tasks import cancel_and_wait
from runtime.tracing import current_tracer
from storage.admission import Limiter
from storage.models import HistoryEntry, StoredMessage, SummaryRecord
from storage.store import Begun, Store
from worker.coalesce import Coalescer, Delta, read_deltas
from worker.config import WorkerSettings
from worker.emits import EmitBatcher
from worker.followups import FollowUps
from worker.memory import HistoryTooShort, PromptPlan, plan_prompt
from worker.metrics import REPLIES, REPLY_SECONDS, TIME_TO_FIRST_TOKEN
from worker.model.errors import LLMError, LLMRejected, LLMStreamInterrupted, ModelNotServed
from worker.model.llm import LLMClient, PromptMessage
from worker.model.overflow import context_overflow
from worker.model.response import track_usage
from worker.publish import TokenPublisher, end_on_stop
from worker.quota import reply_cost
from worker.tracing import ReplyTraces

logger = logging.getLogger(__name__)


class EmptyReply(LLMError):
    """The model's reply held nothing but whitespace."""

    code = ErrorCode.LLM_UNAVAILABLE


Truncated = Literal["time", "length"] | None


class _Model(NamedTuple):
    """The model of one reply: its catalog id, and the name the API knows it by (None:
    the worker's own)."""

    id: str
    api_model: str | None


class _Streamed(NamedTuple):
    """A reply as streamed: its text, its time to first token (s), why it was cut, and
    its tail (its last piece, not yet published: see :meth:`TokenPublisher.publish`)."""

    text: str
    first_token_s: float
    truncated: Truncated
    tail: str


class ReplyGenerator:
    """Generates, streams and records the replies whose attempt has begun.

    Args:
        settings: the worker's settings.
        redis: the worker's client, for the quotas.
        llm: the model client.
        store: the session store.
    """

    def __init__(
        self, settings: WorkerSettings, redis: Redis[str], llm: LLMClient, store: Store
    ) -> None:
        self.settings = settings
        tracer = current_tracer()
        #: The spans of its replies while tracing is on (worker.tracing); None while off.
        self.traces = ReplyTraces(tracer, settings) if tracer is not None else None
        self.limiter = Limiter(redis)  # the quotas; one a process, its scripts loaded once
        self.emits = EmitBatcher(store)
        self.llm = llm
        self.store = store
        self.followups = FollowUps(settings, store, llm)

    async def generate(
        self,
        entry: MessageEntry,
        attempt: str,
        begun: Begun,
        stop: asyncio.Event,
        ack: tuple[str, str] | None = None,
    ) -> bool:
        """Generate, stream and record the reply to ``entry`` as ``attempt``; or record the
        model's error. Returns whether the script that recorded it also acked ``ack`` (a
        first reply's entry is acked by the caller, once its title job is queued).

        Args:
            begun: what :meth:`Replies.begin` returned: the session as ``attempt`` began
                (its newest messages, or all of them).
            ack: ``(stream, entry id)`` of ``entry``: acked by the script that records
                the end of the reply (see :meth:`Replies.finish`), once this returns.

        Raises:
            Fenced: another attempt took over meanwhile.
            SessionExpired: the session ended meanwhile.
        """
        assert begun.session is not None
        if begun.session.stop_seq >= entry.seq:
            stop.set()
        try:
            model = self._model(begun.session.model)
        except LLMError as e:
            await self._fail(entry, attempt, e, ack, cost=0)
            return True
        plan = await self._prompt(entry, begun, model)
        usage = track_usage()  # filled by the model's responses, for the quotas
        started = time.perf_counter()
        request = self._stream_within_context(entry, attempt, begun, plan, started, stop, model)
        try:
            if self.traces is None:
                plan, streamed = await request
            else:
                plan, streamed = await self.traces.model_request(request, model.api_model, usage)
        except LLMError as e:
            # Every request the model server answered is paid for, failed or retried.
            cost = reply_cost(usage, plan.messages, "")
            await self._fail(entry, attempt, e, ack, cost=cost)
            return True
        # Charged by the script that records the reply, so a client that sees its
        # `done` finds the quota up to date; what the model generated counts, recorded
        # or not.
        cost = reply_cost(usage, plan.messages, streamed.text)
        return await self._record(
            entry, attempt, streamed, started, stop.is_set(), ack, plan, model, cost
        )

    async def _stream_within_context(
        self,
        entry: MessageEntry,
        attempt: str,
        begun: Begun,
        plan: PromptPlan,
        started: float,
        stop: asyncio.Event,
        model: _Model,
    ) -> tuple[PromptPlan, _Streamed]:
        """Stream the reply to ``plan``'s prompt; if the model refuses it as too long
        for its context (:func:`worker.model.overflow.context_overflow`), once more with a
        smaller window: the history's tokens scaled by the overflow's
        :meth:`~worker.model.overflow.ContextOverflow.shrink` (at least halved), the turn just
        before no longer kept over budget. Return the prompt used and the reply.

        Raises:
            LLMError: the model failed, or refused the smaller prompt too.
        """
        try:
            return plan, await self._stream_with_restarts(
                entry, attempt, plan.messages, started, stop, model
            )
        except LLMRejected as e:
            overflow = context_overflow(e)
            if overflow is None:
                raise
        budget = int(plan.history_tokens * overflow.shrink())
        smaller = await self._prompt(entry, begun, model, max_tokens=budget, keep_previous=False)
        logger.warning(
            "message_id=%s prompt too long for the model (limit %s, asked %s tokens): "
            "again with %d of %d turns, %d history tokens",
            entry.message_id,
            overflow.limit,
            overflow.requested,
            smaller.kept,
            plan.kept,
            smaller.history_tokens,
        )
        streamed = await self._stream_with_restarts(
            entry, attempt, smaller.messages, started, stop, model
        )
        return smaller, streamed

    def _model(self, chosen: str) -> _Model:
        """The model of a session that chose ``chosen`` ("": the catalog's default).

        Raises:
            ModelNotServed: the catalog has no such model.
        """
        offer = self.settings.offer(chosen)
        if offer is None:
            raise ModelNotServed(f"model {chosen!r} is not in this worker's catalog")
        return _Model(offer.id, offer.api_model)

    async def _stream_with_restarts(
        self,
        entry: MessageEntry,
        attempt: str,
        prompt: list[PromptMessage],
        started: float,
        stop: asyncio.Event,
        model: _Model,
    ) -> _Streamed:
        """Stream the reply, generating it again (after a ``restart`` event) each time
        the model's stream breaks, up to ``llm_max_retries`` times.

        Raises:
            LLMError: the model failed, or its stream broke once too often.
        """
        restarts = 0
        while True:
            try:
                return await self._stream(entry, attempt, prompt, started, stop, model)
            except LLMStreamInterrupted as e:
                restarts += 1
                if restarts > self.settings.llm_max_retries:
                    raise
                logger.warning(
                    "message_id=%s stream interrupted (%s); generating again", entry.message_id, e
                )
                restart = RestartEvent(message_id=entry.message_id)
                await self._publisher(entry, attempt).emit(restart)

    def _publisher(self, entry: MessageEntry, attempt: str) -> TokenPublisher:
        """The publisher of one stream of ``attempt`` (each emit a span while tracing)."""
        if self.traces is None:
            return TokenPublisher(self.emits, self.settings, entry, attempt)
        return self.traces.publisher(self.emits, self.settings, entry, attempt)

    async def _record(
        self,
        entry: MessageEntry,
        attempt: str,
        streamed: _Streamed,
        started: float,
        stopped: bool,
        ack: tuple[str, str] | None,
        plan: PromptPlan,
        model: _Model,
        cost: int,
    ) -> bool:
        """Record the reply of ``model`` with its ``done`` event (after its tail), charge its
        ``cost`` (model tokens), then count and log it, and queue the session's title or
        summary job if it calls for one. Returns whether the recording script acked ``ack``: a
        first reply's entry is left for the caller to ack once its title job is queued, so a
        worker that dies in between leaves it pending, and the worker that takes it over finds
        the reply recorded and queues the job (:class:`worker.reply.MessageAnswerer`)."""
        title_due = entry.seq == 1 and self.settings.conversation_titles
        reply = StoredMessage(
            id=str(uuid.uuid4()),
            role="assistant",
            content=streamed.text,
            timestamp=utc_now(),
            reply_to=entry.message_id,
            stopped=stopped,
            truncated=None if stopped else streamed.truncated,
            model=model.id,
        )
        done = DoneEvent(message_id=entry.message_id, reply=reply.public())
        tail = [TokenEvent(message_id=entry.message_id, content=streamed.tail)]
        ack = None if title_due else ack
        tail = tail if streamed.tail else []
        outcome = "stopped" if reply.stopped else "truncated" if reply.truncated else "done"
        finish = self.store.replies.finish(
            entry, reply, done, attempt, ack=ack, tail=tail, cost=cost
        )
        event_id = await (finish if self.traces is None else self.traces.finish(finish, outcome))
        total_s = time.perf_counter() - started
        if event_id:
            REPLIES.labels(outcome).inc()
            TIME_TO_FIRST_TOKEN.observe(streamed.first_token_s)
            REPLY_SECONDS.observe(total_s)
            if title_due:
                await self.followups.request_title(entry.token, model.id)
            if self.followups.summary_due(plan, reply, model.api_model):
                await self.followups.request_summary(entry.token, model.id)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "message_id=%s session=%s seq=%d %s chars=%d ttft_ms=%.1f total_ms=%.1f%s",
                *(entry.message_id, fingerprint(entry.token), entry.seq),
                outcome if not reply.truncated else f"{outcome} ({reply.truncated})",
                *(len(streamed.text), streamed.first_token_s * 1000, total_s * 1000),
                "" if event_id else " (already recorded)",
            )
        return not title_due

    async def _prompt(
        self,
        entry: MessageEntry,
        begun: Begun,
        model: _Model,
        *,
        max_tokens: int | None = None,
        keep_previous: bool = True,
    ) -> PromptPlan:
        """The prompt of ``entry``'s reply (see :func:`worker.memory.plan_prompt`),
        from the newest messages that ``begin`` read; from the whole history only if
        they are not enough to tell.

        Args:
            max_tokens: the history's token budget (None: ``memory_max_tokens``).
            keep_previous: keep the turn just before even over budget.
        """
        assert begun.session is not None
        session = begun.session
        use_summary = self.settings.memory_summary

        def prompt(
            history: Sequence[HistoryEntry], summary: SummaryRecord | None, complete: bool
        ) -> PromptPlan:
            return plan_prompt(
                history,
                entry.seq,
                system_prompt=session.system_prompt or self.settings.system_prompt,
                max_messages=self.settings.memory_max_messages,
                max_tokens=self.settings.memory_max_tokens if max_tokens is None else max_tokens,
                complete=complete,
                summary=summary if use_summary else None,
                count=self.llm.counter(model.api_model).estimate,
                keep_previous=keep_previous,
            )

        try:
            return prompt(begun.session.messages, begun.session.summary, begun.complete)
        except HistoryTooShort:
            whole = await self.store.sessions.get_session(entry.token, touch=False)
            return prompt(whole.messages, whole.summary, True)

    async def _fail(
        self,
        entry: MessageEntry,
        attempt: str,
        error: LLMError,
        ack: tuple[str, str] | None,
        *,
        cost: int,
    ) -> None:
        """Record the model's ``error`` as the end of the reply, charging ``cost``."""
        logger.warning("message_id=%s model error %s: %s", entry.message_id, error.code, error)
        REPLIES.labels(error.code.value).inc()
        event = ErrorEvent(message_id=entry.message_id, code=error.code, detail=error.public_detail)
        finish = self.store.replies.finish(entry, None, event, attempt, ack=ack, cost=cost)
        await (finish if self.traces is None else self.traces.finish(finish, error.code.value))

    async def _stream(
        self,
        entry: MessageEntry,
        attempt: str,
        prompt: list[PromptMessage],
        started: float,
        stop: asyncio.Event,
        model: _Model,
    ) -> _Streamed:
        """Stream one reply of ``model`` to the session, coalescing deltas; return it, its TTFT (s)
        and why it was cut, if it was.

        When ``stop`` is set, the model request is aborted and the text published so
        far is the reply (possibly empty). So too, marked ``"time"``, once
        ``reply_timeout_s`` have passed since ``started`` (``time.perf_counter()``);
        and a reply is cut at ``reply_max_chars`` characters, marked ``"length"``.

        Raises:
            EmptyReply: the model sent nothing but whitespace (in time).
            LLMError: from the model client.
            SessionExpired: the session ended meanwhile.
        """
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        reader = asyncio.create_task(
            read_deltas(self.llm.stream(prompt, model=model.api_model), queue)
        )
        deadline = started + self.settings.reply_timeout_s
        stopper = asyncio.create_task(end_on_stop(stop, deadline, reader, queue))
        pieces = Coalescer(queue)
        try:
            publisher = self._publisher(entry, attempt)
            first_token_s, cut, tail = await publisher.publish(pieces, reader, started)
            timed_out = stopper.done() and stopper.result()
        finally:
            await cancel_and_wait([reader, stopper])
        text = "".join(pieces.parts)
        if not text and not stop.is_set():
            if timed_out:
                raise EmptyReply(
                    f"the model sent nothing within {self.settings.reply_timeout_s:g} s"
                )
            raise EmptyReply("the model returned an empty reply")
        truncated: Truncated = "length" if cut else "time" if timed_out else None
        return _Streamed(text, first_token_s, truncated, tail)
