"""Generating one reply that has begun: its prompt, the model's stream published as
coalesced ``token`` events, restarts after a broken stream, and its end, recorded: the
reply with its ``done`` event, or the model's error."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Literal, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

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
from storage.admission import Limiter
from storage.models import MessageRecord, StoredMessage
from storage.store import Begun, Emit, SessionExpired, Store
from worker.coalesce import Coalescer, Delta, EndOfReply, read_deltas
from worker.config import WorkerSettings
from worker.emits import EmitBatcher
from worker.errors import LLMError, LLMStreamInterrupted, ModelNotServed
from worker.llm import LLMClient, PromptMessage, track_usage
from worker.memory import HistoryTooShort, build_prompt
from worker.metrics import REPLIES, REPLY_SECONDS, TIME_TO_FIRST_TOKEN
from worker.quota import charge_reply, reply_cost
from worker.titles import request_title

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
    """A reply as streamed: its text, its time to first token (s), why it was cut."""

    text: str
    first_token_s: float
    truncated: Truncated


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
        self.limiter = Limiter(redis)  # the quotas; one a process, its scripts loaded once
        self.emits = EmitBatcher(store)
        self.llm = llm
        self.store = store

    async def generate(
        self,
        entry: MessageEntry,
        attempt: str,
        begun: Begun,
        stop: asyncio.Event,
        ack: tuple[str, str] | None = None,
    ) -> None:
        """Generate, stream and record the reply to ``entry`` as ``attempt``; or record
        the model's error.

        Args:
            begun: what :meth:`Store.begin` returned: the session as ``attempt`` began
                (its newest messages, or all of them).
            ack: ``(stream, entry id)`` of ``entry``: acked by the script that records
                the end of the reply (see :meth:`Store.finish`), once this returns.

        Raises:
            Fenced: another attempt took over meanwhile.
            SessionExpired: the session ended meanwhile.
        """
        assert begun.session is not None
        if begun.session.stop_seq >= entry.seq:
            stop.set()
        prompt = await self._prompt(entry, begun)
        usage = track_usage()  # filled by the model's responses, for the quotas
        started = time.perf_counter()
        try:
            model = self._model(begun.session.model)
            streamed = await self._stream_with_restarts(
                entry, attempt, prompt, started, stop, model
            )
        except LLMError as e:
            await self._fail(entry, attempt, e, ack)
            return
        # Charged before the reply is recorded, so a client that sees its `done` finds
        # the quota up to date; what the model generated counts, recorded or not.
        cost = reply_cost(usage, prompt, streamed.text)
        await charge_reply(self.limiter, self.settings, entry.token, cost)
        await self._record(entry, attempt, streamed, started, stop.is_set(), ack, model.id)

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
                await self._emit(entry, attempt, RestartEvent(message_id=entry.message_id))

    async def _record(
        self,
        entry: MessageEntry,
        attempt: str,
        streamed: _Streamed,
        started: float,
        stopped: bool,
        ack: tuple[str, str] | None,
        model: str,
    ) -> None:
        """Record the reply of ``model`` (its catalog id) with its ``done`` event, then
        count and log it."""
        reply = StoredMessage(
            id=str(uuid.uuid4()),
            role="assistant",
            content=streamed.text,
            timestamp=utc_now(),
            reply_to=entry.message_id,
            stopped=stopped,
            truncated=None if stopped else streamed.truncated,
            model=model,
        )
        done = DoneEvent(message_id=entry.message_id, reply=reply.public())
        event_id = await self.store.finish(entry, reply, done, attempt, ack=ack)
        total_s = time.perf_counter() - started
        outcome = "stopped" if reply.stopped else "truncated" if reply.truncated else "done"
        if event_id:
            REPLIES.labels(outcome).inc()
            TIME_TO_FIRST_TOKEN.observe(streamed.first_token_s)
            REPLY_SECONDS.observe(total_s)
            if entry.seq == 1 and self.settings.conversation_titles:
                await self._request_title(entry.token)
        logger.info(
            "message_id=%s session=%s seq=%d %s chars=%d ttft_ms=%.1f total_ms=%.1f%s",
            entry.message_id,
            fingerprint(entry.token),
            entry.seq,
            outcome if not reply.truncated else f"{outcome} ({reply.truncated})",
            len(streamed.text),
            streamed.first_token_s * 1000,
            total_s * 1000,
            "" if event_id else " (already recorded)",
        )

    async def _request_title(self, token: str) -> None:
        """Queue the session's title job; best effort, the reply being recorded already."""
        try:
            await request_title(self.store.redis, token)
        except (RedisError, OSError) as e:
            logger.warning("session=%s title not requested: %s", fingerprint(token), e)

    async def _prompt(self, entry: MessageEntry, begun: Begun) -> list[PromptMessage]:
        """The prompt of ``entry``'s reply, from the newest messages that ``begin``
        read; from the whole history only if they are not enough to tell."""
        assert begun.session is not None
        session = begun.session

        def prompt(history: Sequence[MessageRecord], complete: bool) -> list[PromptMessage]:
            return build_prompt(
                history,
                entry.seq,
                system_prompt=session.system_prompt or self.settings.system_prompt,
                max_messages=self.settings.memory_max_messages,
                max_tokens=self.settings.memory_max_tokens,
                complete=complete,
            )

        try:
            return prompt(begun.session.messages, begun.complete)
        except HistoryTooShort:
            whole = await self.store.get_session(entry.token, touch=False)
            return prompt(whole.messages, True)

    async def _fail(
        self, entry: MessageEntry, attempt: str, error: LLMError, ack: tuple[str, str] | None
    ) -> None:
        logger.warning("message_id=%s model error %s: %s", entry.message_id, error.code, error)
        REPLIES.labels(error.code.value).inc()
        event = ErrorEvent(message_id=entry.message_id, code=error.code, detail=error.public_detail)
        await self.store.finish(entry, None, event, attempt, ack=ack)

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
        stopper = asyncio.create_task(_end_on_stop(stop, deadline, reader, queue))
        pieces = Coalescer(queue)
        try:
            first_token_s, cut = await self._publish(entry, attempt, pieces, reader, started)
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
        return _Streamed(text, first_token_s, "length" if cut else "time" if timed_out else None)

    async def _publish(
        self,
        entry: MessageEntry,
        attempt: str,
        pieces: Coalescer,
        reader: asyncio.Task[None],
        started: float,
    ) -> tuple[float, bool]:
        """Publish the reply's pieces as ``token`` events until it ends; return its TTFT
        (s) and whether it was cut at ``reply_max_chars``.

        The first delta is published at once; after each publication, deltas that
        arrive within ``stream_flush_ms`` are joined into the next event.
        """
        first_token_s = 0.0
        first = True  # the attempt's first event gives the event stream its TTL
        window = self.settings.stream_flush_ms / 1000
        room = self.settings.reply_max_chars
        while (body := await pieces.next_piece()) is not None:
            cut = len(body) > room
            if cut:
                body = pieces.parts[-1] = body[:room]
            room -= len(body)
            if len(pieces.parts) == 1:
                first_token_s = time.perf_counter() - started
            sent_at = time.perf_counter()
            if body:
                event = TokenEvent(message_id=entry.message_id, content=body)
                await self._emit(entry, attempt, event, first=first)
                first = False
            if cut:
                return first_token_s, True
            # Wait out the window only while the model is still sending: once the
            # whole reply is queued (or a stop ends the reader), the rest goes out at
            # once, so the end of a reply never waits for the window.
            remaining = window - (time.perf_counter() - sent_at)
            if remaining > 0 and not pieces.finished and not reader.done():
                await asyncio.wait({reader}, timeout=remaining)
        return first_token_s, False

    async def _emit(
        self,
        entry: MessageEntry,
        attempt: str,
        event: TokenEvent | RestartEvent,
        first: bool = True,
    ) -> None:
        emit = Emit(entry.token, event.model_dump_json(exclude_none=True), attempt, first)
        if await self.emits.emit(emit) is None:
            raise SessionExpired(entry.token)


async def _end_on_stop(
    stop: asyncio.Event, deadline: float, reader: asyncio.Task[None], queue: asyncio.Queue[Delta]
) -> bool:
    """Once ``stop`` is set or ``deadline`` (``time.perf_counter()``) has passed, abort
    the model request and end the reply's queue; return whether the deadline did it."""
    timed_out = False
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            await stop.wait()
    except TimeoutError:
        timed_out = True
    reader.cancel()
    queue.put_nowait(EndOfReply())
    return timed_out
