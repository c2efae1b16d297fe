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
    RestartEvent,
    TokenEvent,
    utc_now,
)
from runtime.logs import fingerprint
from runtime.tasks import cancel_and_wait
from runtime.tracing import current_tracer
from storage.admission import Limiter
from storage.models import HistoryEntry, StoredMessage, SummaryRecord
from storage.store import Store
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
from worker.turn import Model, Turn

logger = logging.getLogger(__name__)


class EmptyReply(LLMError):
    """The model's reply held nothing but whitespace."""

    code = ErrorCode.LLM_UNAVAILABLE


Truncated = Literal["time", "length"] | None


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

    async def generate(self, turn: Turn) -> bool:
        """Generate, stream and record the reply of ``turn`` (an attempt that
        :meth:`Replies.begin` accepted: ``turn.begun`` set); or record the model's error.
        Sets the turn's ``model``, ``started`` and ``usage``. Returns whether the script
        that recorded it also acked ``turn.key`` (see :meth:`Replies.finish`; a first
        reply's entry is acked by the caller, once its title job is queued).

        Raises:
            Fenced: another attempt took over meanwhile.
            SessionExpired: the session ended meanwhile.
        """
        assert turn.begun is not None and turn.begun.session is not None
        if turn.begun.session.stop_seq >= turn.entry.seq:
            turn.stop.set()
        try:
            turn.model = self._model(turn.begun.session.model)
        except LLMError as e:
            await self._fail(turn, e, cost=0)
            return True
        plan = await self._prompt(turn)
        turn.usage = usage = track_usage()  # filled by the model's responses, for the quotas
        turn.started = time.perf_counter()
        request = self._stream_within_context(turn, plan)
        try:
            if self.traces is None:
                plan, streamed = await request
            else:
                model = turn.model.api_model
                plan, streamed = await self.traces.model_request(request, model, usage)
        except LLMError as e:
            # Every request the model server answered is paid for, failed or retried.
            cost = reply_cost(usage, plan.messages, "")
            await self._fail(turn, e, cost=cost)
            return True
        return await self._record(turn, streamed, plan)

    async def _stream_within_context(
        self, turn: Turn, plan: PromptPlan
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
            return plan, await self._stream_with_restarts(turn, plan.messages)
        except LLMRejected as e:
            overflow = context_overflow(e)
            if overflow is None:
                raise
        budget = int(plan.history_tokens * overflow.shrink())
        smaller = await self._prompt(turn, max_tokens=budget, keep_previous=False)
        logger.warning(
            "message_id=%s prompt too long for the model (limit %s, asked %s tokens): "
            "again with %d of %d turns, %d history tokens",
            turn.entry.message_id,
            overflow.limit,
            overflow.requested,
            smaller.kept,
            plan.kept,
            smaller.history_tokens,
        )
        return smaller, await self._stream_with_restarts(turn, smaller.messages)

    def _model(self, chosen: str) -> Model:
        """The model of a session that chose ``chosen`` ("": the catalog's default).

        Raises:
            ModelNotServed: the catalog has no such model.
        """
        offer = self.settings.offer(chosen)
        if offer is None:
            raise ModelNotServed(f"model {chosen!r} is not in this worker's catalog")
        return Model(offer.id, offer.api_model)

    async def _stream_with_restarts(self, turn: Turn, prompt: list[PromptMessage]) -> _Streamed:
        """Stream the reply, generating it again (after a ``restart`` event) each time
        the model's stream breaks, up to ``llm_max_retries`` times.

        Raises:
            LLMError: the model failed, or its stream broke once too often.
        """
        restarts = 0
        while True:
            try:
                return await self._stream(turn, prompt)
            except LLMStreamInterrupted as e:
                restarts += 1
                if restarts > self.settings.llm_max_retries:
                    raise
                message_id = turn.entry.message_id
                logger.warning(
                    "message_id=%s stream interrupted (%s); generating again", message_id, e
                )
                await self._publisher(turn).emit(RestartEvent(message_id=message_id))

    def _publisher(self, turn: Turn) -> TokenPublisher:
        """The publisher of one stream of ``turn`` (each emit a span while tracing)."""
        if self.traces is None:
            return TokenPublisher(self.emits, self.settings, turn)
        return self.traces.publisher(self.emits, self.settings, turn)

    async def _record(self, turn: Turn, streamed: _Streamed, plan: PromptPlan) -> bool:
        """Record the reply of ``turn`` (``streamed`` to ``plan``'s prompt) with its ``done``
        event (after its tail), marked stopped if ``turn.stop`` is set; charge its cost (model
        tokens, :func:`worker.quota.reply_cost` of ``turn.usage``), then count and log it, and
        queue the session's title or summary job if it calls for one. Returns whether the
        recording script acked ``turn.key``: a first reply's entry is left for the caller to
        ack once its title job is queued, so a worker that dies in between leaves it pending,
        and the worker that takes it over finds the reply recorded and queues the job
        (:class:`worker.reply.MessageAnswerer`)."""
        entry, model, stopped = turn.entry, turn.model, turn.stop.is_set()
        # Charged by the script that records the reply, so a client that sees its
        # `done` finds the quota up to date; what the model generated counts, recorded
        # or not.
        cost = reply_cost(turn.usage, plan.messages, streamed.text)
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
        ack = None if title_due else turn.key
        tail = tail if streamed.tail else []
        outcome = "stopped" if reply.stopped else "truncated" if reply.truncated else "done"
        finish = self.store.replies.finish(
            entry, reply, done, turn.attempt, ack=ack, tail=tail, cost=cost
        )
        event_id = await (finish if self.traces is None else self.traces.finish(finish, outcome))
        total_s = time.perf_counter() - turn.started
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
        self, turn: Turn, *, max_tokens: int | None = None, keep_previous: bool = True
    ) -> PromptPlan:
        """The prompt of ``turn``'s reply (see :func:`worker.memory.plan_prompt`), for its
        model, from the newest messages that ``begin`` read; from the whole history only
        if they are not enough to tell.

        Args:
            max_tokens: the history's token budget (None: ``memory_max_tokens``).
            keep_previous: keep the turn just before even over budget.
        """
        entry, begun = turn.entry, turn.begun
        assert begun is not None and begun.session is not None
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
                count=self.llm.counter(turn.model.api_model).estimate,
                keep_previous=keep_previous,
            )

        try:
            return prompt(begun.session.messages, begun.session.summary, begun.complete)
        except HistoryTooShort:
            whole = await self.store.sessions.get_session(entry.token, touch=False)
            return prompt(whole.messages, whole.summary, True)

    async def _fail(self, turn: Turn, error: LLMError, *, cost: int) -> None:
        """Record the model's ``error`` as the end of ``turn``'s reply, charging ``cost``
        (model tokens), and ack its entry in the same script."""
        entry = turn.entry
        logger.warning("message_id=%s model error %s: %s", entry.message_id, error.code, error)
        REPLIES.labels(error.code.value).inc()
        event = ErrorEvent(message_id=entry.message_id, code=error.code, detail=error.public_detail)
        finish = self.store.replies.finish(
            entry, None, event, turn.attempt, ack=turn.key, cost=cost
        )
        await (finish if self.traces is None else self.traces.finish(finish, error.code.value))

    async def _stream(self, turn: Turn, prompt: list[PromptMessage]) -> _Streamed:
        """Stream one reply of ``turn.model`` to ``prompt`` to the session, coalescing
        deltas; return it, its TTFT (s) and why it was cut, if it was.

        When ``turn.stop`` is set, the model request is aborted and the text published so
        far is the reply (possibly empty). So too, marked ``"time"``, once
        ``reply_timeout_s`` have passed since ``turn.started``; and a reply is cut at
        ``reply_max_chars`` characters, marked ``"length"``.

        Raises:
            EmptyReply: the model sent nothing but whitespace (in time).
            LLMError: from the model client.
            SessionExpired: the session ended meanwhile.
        """
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        reader = asyncio.create_task(
            read_deltas(self.llm.stream(prompt, model=turn.model.api_model), queue)
        )
        deadline = turn.started + self.settings.reply_timeout_s
        stopper = asyncio.create_task(end_on_stop(turn.stop, deadline, reader, queue))
        pieces = Coalescer(queue)
        try:
            first_token_s, cut, tail = await self._publisher(turn).publish(pieces, reader)
            timed_out = stopper.done() and stopper.result()
        finally:
            await cancel_and_wait([reader, stopper])
        text = "".join(pieces.parts)
        if not text and not turn.stop.is_set():
            if timed_out:
                raise EmptyReply(
                    f"the model sent nothing within {self.settings.reply_timeout_s:g} s"
                )
            raise EmptyReply("the model returned an empty reply")
        truncated: Truncated = "length" if cut else "time" if timed_out else None
        return _Streamed(text, first_token_s, truncated, tail)
