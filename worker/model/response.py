"""Reading one streaming chat completions response: its deltas, its ``usage``, its
errors (used by :class:`worker.model.llm.LLMClient`)."""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker.model import sse
from worker.model.errors import LLMUnavailable, error_for_status

logger = logging.getLogger(__name__)

_MAX_DETAIL = 300  # characters of a server's error message kept in our errors


@dataclass
class Usage:
    """Model tokens a reply used, as the model reported them (OpenAI's ``usage``), and
    the requests that reported none.

    Several requests (retries, a stream generated again, a smaller prompt) add up.
    ``requests`` counts every request the model server answered, with any status;
    ``reports`` those whose response carried a ``usage`` (``reported`` if any did).
    The others (a 429 or 503, a stream that broke, an API that ignores
    ``stream_options``) are paid for by an estimate (:func:`worker.quota.reply_cost`).
    ``last_reported``: the latest request reported its usage, which then covers the text
    it streamed.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False
    requests: int = 0
    reports: int = 0
    last_reported: bool = False

    def add(self, usage: dict[str, Any]) -> None:
        """Add one response's ``usage`` object; malformed fields count as 0."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.prompt_tokens += prompt if isinstance(prompt, int) else 0
        self.completion_tokens += completion if isinstance(completion, int) else 0
        self.reported = True
        self.reports += 1
        self.last_reported = True

    def request(self) -> None:
        """Count one more request answered by the model server."""
        self.requests += 1
        self.last_reported = False

    @property
    def unreported(self) -> int:
        """Requests answered without a ``usage``: each is charged an estimate."""
        return max(self.requests - self.reports, 0)


def note_request() -> None:
    """Count a request the model server answered in this context's :class:`Usage`, if
    one is tracked (:func:`track_usage`)."""
    if (usage := _USAGE.get()) is not None:
        usage.request()


#: The :class:`Usage` that model responses read in this context add to, if any. The
#: worker sets one per reply (:func:`track_usage`); the reading task inherits it.
_USAGE: ContextVar[Usage | None] = ContextVar("parley_llm_usage", default=None)


def track_usage() -> Usage:
    """A fresh :class:`Usage` that every model stream read from now on in this context
    (and in tasks it creates) adds to."""
    usage = Usage()
    _USAGE.set(usage)
    return usage


#: The longest line of a model stream read (bytes): a chunk of a few tokens takes about
#: 200; anything past this is garbage, and breaks the stream.
MAX_LINE_BYTES = 1 << 20


class StreamResponse:
    """One streaming response being read: its deltas, and whether the reply finished."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        redact: Callable[[str], str],
        on_usage: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._resp = resp
        self._redact = redact
        self._on_usage = on_usage
        #: A chunk carried a ``finish_reason``: the reply is whole.
        self.finished = False
        #: The stream ended as it should (``[DONE]``, or its end after a finish).
        self.complete = False
        self._garbage = 0
        #: Lines read and not yet parsed, and the start of a line still arriving.
        self._lines: deque[bytes] = deque()
        self._partial = b""

    async def next_delta(self) -> str | None:
        """The next non-empty content delta; None once the reply is whole.

        Raises:
            LLMError: an in-stream error (:class:`LLMRejected` for a 4xx code), or, as
                :class:`LLMUnavailable`, a broken stream or one that ended unfinished.
        """
        try:
            while (raw := await self._next_line()) is not None:
                content = self._content(raw)
                if content is None:
                    self.complete = True
                    return None
                if content:
                    return content
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            # ValueError: aiohttp's "Chunk too big", a line over its read buffer.
            if self.finished:  # the reply is whole; only the [DONE] line went missing
                logger.debug("model stream broke after finish_reason: %r", e)
                return None
            raise request_failed(e, self._redact) from e
        if not self.finished:
            raise LLMUnavailable("the model stream ended before it finished", retryable=True)
        self.complete = True
        return None

    async def _next_line(self) -> bytes | None:
        """The next line of the stream (without its ``\\n``), None at its end. Whatever
        has arrived is split into lines at once: one read for the many lines a fast model
        sends together, where reading line by line would wait on each.

        Raises:
            ValueError: a line is over :data:`MAX_LINE_BYTES` (never a chat completions
                chunk: garbage, which breaks the stream).
        """
        while not self._lines:
            data = await self._resp.content.readany()
            if not data:  # the end of the stream
                line, self._partial = self._partial, b""
                return line or None
            *lines, self._partial = (self._partial + data).split(b"\n")
            if len(self._partial) > MAX_LINE_BYTES:
                raise ValueError(f"a line of the model stream is over {MAX_LINE_BYTES} bytes")
            self._lines.extend(lines)
        return self._lines.popleft()

    def _content(self, raw: bytes) -> str | None:
        """The content one line adds ("" for none), or None for ``[DONE]``.

        Raises:
            LLMError: the line is an in-stream error.
        """
        event = sse.parse_line(raw)
        if isinstance(event, sse.UsageReport):
            if (usage := _USAGE.get()) is not None:
                usage.add(event.usage)
            if self._on_usage is not None:
                self._on_usage(event.usage)
            event = event.chunk
        if isinstance(event, sse.Done):
            return None
        if isinstance(event, sse.Garbage):
            # One warning per response: an HTML page must not flood the log.
            self._garbage += 1
            logger.log(
                logging.WARNING if self._garbage == 1 else logging.DEBUG,
                "skipping unparsable line from the model: %.200s",
                self._redact(raw.decode("utf-8", "replace").rstrip()),
            )
        elif isinstance(event, sse.StreamError):
            message = f"model stream error: {event.message[:_MAX_DETAIL]}"
            raise error_for_status(event.status, message, None, retryable=True)
        elif isinstance(event, sse.Chunk):
            self.finished = self.finished or event.finished
            return event.content
        return ""

    def close(self) -> None:
        """Release a complete response's connection for reuse; close any other, which
        drops the connection, so an abandoned stream stops the model server at once."""
        if self.complete:
            self._resp.release()
        else:
            self._resp.close()


def request_failed(error: Exception, redact: Callable[[str], str]) -> LLMUnavailable:
    kind = "timed out" if isinstance(error, TimeoutError) else "failed"
    return LLMUnavailable(f"model request {kind}: {redact(repr(error))}", retryable=True)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now (delta-seconds or HTTP date), None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            logger.debug("ignoring unparsable Retry-After %r", value)
            return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def error_detail(text: str) -> str:
    """The message out of an OpenAI-, TGI- or FastAPI-style error body, else the text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_DETAIL]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:_MAX_DETAIL]
    return text.strip()[:_MAX_DETAIL]
