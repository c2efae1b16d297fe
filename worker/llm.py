"""Streaming client for the OpenAI-compatible chat completions API.

One client serves every backend Parley supports: Hugging Face's router
(``https://router.huggingface.co/v1`` with ``HF_TOKEN``), TGI, vLLM and llama.cpp's
``llama-server``. It sends ``POST {base_url}/chat/completions`` with ``"stream": true``
and reads the server-sent events (:mod:`worker.sse`).

Failures before the first delta are retried with the one backoff
(:func:`runtime.retry.retrying`); after it, a break raises :class:`LLMStreamInterrupted`
and the caller decides.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict

from runtime.retry import retrying
from worker import sse
from worker.errors import (
    LLMError,
    LLMRejected,
    LLMStreamInterrupted,
    LLMUnavailable,
    error_for_status,
)

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_DETAIL = 300  # characters of a server's error message kept in our errors


class PromptMessage(BaseModel):
    """One message of a prompt, as the chat completions API takes it (``role``, ``content``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass
class Usage:
    """Model tokens a reply used, as the model reported them (OpenAI's ``usage``).

    ``reported`` is False when no response carried a ``usage`` (an API that ignores
    ``stream_options``); the caller then estimates. Several requests (retries, a stream
    generated again) add up.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False

    def add(self, usage: dict[str, Any]) -> None:
        """Add one response's ``usage`` object; malformed fields count as 0."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.prompt_tokens += prompt if isinstance(prompt, int) else 0
        self.completion_tokens += completion if isinstance(completion, int) else 0
        self.reported = True


#: The :class:`Usage` that model responses read in this context add to, if any. The
#: worker sets one per reply (:func:`track_usage`); the reading task inherits it.
_USAGE: ContextVar[Usage | None] = ContextVar("parley_llm_usage", default=None)


def track_usage() -> Usage:
    """A fresh :class:`Usage` that every model stream read from now on in this context
    (and in tasks it creates) adds to."""
    usage = Usage()
    _USAGE.set(usage)
    return usage


@dataclass(frozen=True)
class LLMConfig:
    """Where the model is and how patiently to talk to it.

    ``base_url`` ends before ``/chat/completions`` (``"http://127.0.0.1:8081/v1"``).
    Times are in seconds. ``read_timeout_s`` bounds the silence before the first byte
    and between two chunks, not the whole reply. ``max_retries`` counts retries after
    the first attempt. ``api_key`` is sent as a bearer token and kept out of ``repr``.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    max_tokens: int = 256
    temperature: float = 0.7
    stop: tuple[str, ...] = ()
    include_usage: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://: {self.base_url!r}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_retries < 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("max_retries and backoff times must not be negative")

    @property
    def completions_url(self) -> str:
        """``{base_url}/chat/completions``."""
        return self.base_url.rstrip("/") + "/chat/completions"


class LLMClient:
    """Streams chat completions from one OpenAI-compatible server.

    Pass ``session`` to share a ``ClientSession`` (the caller closes it); otherwise the
    client creates one on first use and :meth:`aclose` closes it. Its connector has no
    connection cap: the worker bounds concurrency, and a pool cap would add a hidden,
    untimed queue in front of ``connect_timeout_s``.
    """

    def __init__(self, config: LLMConfig, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )
        self._headers = {"Accept": "text/event-stream"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it. Idempotent."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def stream(
        self,
        messages: Sequence[PromptMessage],
        *,
        max_tokens: int | None = None,
        model: str | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream the reply to ``messages`` as non-empty content deltas, in order; at
        most ``max_tokens`` tokens (None: the configured ``max_tokens``), from ``model``
        (the API's name for it; None: the configured ``model``).

        The result is an async generator: iterate it, and close it (``aclose()`` or
        ``contextlib.aclosing``) when stopping early, which closes the HTTP response at
        once so the model server stops generating. Cancelling the consuming task does
        the same.

        Failures before the first delta are retried up to ``max_retries`` times (429,
        500, 502, 503, 504, connect errors, timeouts, a stream that ends without
        finishing), waiting as :func:`runtime.retry.retrying` does: ``backoff_base_s``
        doubling with each retry, plus up to ``backoff_base_s`` of jitter, at most
        ``backoff_max_s``. A ``Retry-After`` (seconds or HTTP date) replaces that wait;
        one longer than ``backoff_max_s`` is not waited for: the error is raised at once
        with ``retry_after_s`` set, so the caller can report or reschedule.

        Raises:
            LLMRateLimited: 429 after the retries.
            LLMUnavailable: 5xx, timeout, connection error or an in-stream error after
                the retries.
            LLMRejected: any other 4xx (400, 401, 403, 404, 410, 422, ...), or an
                in-stream error with a 4xx code; never retried.
            LLMStreamInterrupted: the stream broke after a delta was yielded.
            RuntimeError: the client was closed.
        """
        if self._closed:
            raise RuntimeError("LLMClient is closed")
        body: dict[str, Any] = {
            "model": model or self.config.model,
            "messages": [m.model_dump() for m in messages],
            "stream": True,
            "max_tokens": max_tokens or self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if self.config.stop:
            body["stop"] = list(self.config.stop)
        if self.config.include_usage:
            # The model's own count of the tokens, for the quotas (a last chunk).
            body["stream_options"] = {"include_usage": True}
        return self._stream(body)

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        response, first = await self._start(body)
        try:
            if first is None:
                return
            yield first
            while (delta := await response.next_delta()) is not None:
                yield delta
        except LLMRejected:
            raise
        except LLMError as e:
            # Never retried once a delta is out: the caller decides (see the worker).
            interrupted = LLMStreamInterrupted(f"model stream interrupted: {e}", status=e.status)
            raise interrupted from e.__cause__ or e
        finally:
            response.close()

    async def _start(self, body: dict[str, Any]) -> tuple[_Response, str | None]:
        """Send the request and read up to its first delta (None for an empty reply),
        trying again as :meth:`stream` says."""
        cfg = self.config
        async for attempt in retrying(
            on=self._retry_wait,
            attempts=cfg.max_retries + 1,
            wait_initial_s=cfg.backoff_base_s,
            wait_max_s=cfg.backoff_max_s,
            wait_jitter_s=cfg.backoff_base_s,
        ):
            with attempt:
                response = _Response(await self._post(body), self._redact)
                try:
                    first = await response.next_delta()
                except BaseException:
                    response.close()
                    raise
        return response, first

    def _retry_wait(self, error: Exception) -> bool | float:
        """Whether to try again after ``error`` (stamina's ``on``): True, False, or the
        seconds the server asked to wait (``Retry-After``)."""
        if not isinstance(error, LLMError) or not error.retryable:
            return False
        logger.warning("model request failed: %s", error)
        wait = error.retry_after_s
        if wait is None:
            return True
        return wait if wait <= self.config.backoff_max_s else False

    async def _post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """Send the request; return a 2xx response or raise the status as an error.

        Raises:
            LLMError: a status other than 2xx, a connect error or a timeout.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            resp = await self._session.post(
                self.config.completions_url, json=body, headers=self._headers, timeout=self._timeout
            )
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise _request_failed(e, self._redact) from e
        if 200 <= resp.status < 300:
            return resp
        try:
            text = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        finally:
            resp.close()
        detail = self._redact(_error_detail(text) or resp.reason or "")
        raise error_for_status(
            resp.status,
            f"model server answered {resp.status}: {detail}",
            _parse_retry_after(resp.headers.get("Retry-After")),
            retryable=resp.status in RETRYABLE_STATUSES,
        )

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text


class _Response:
    """One streaming response being read: its deltas, and whether the reply finished."""

    def __init__(self, resp: aiohttp.ClientResponse, redact: Callable[[str], str]) -> None:
        self._resp = resp
        self._redact = redact
        #: A chunk carried a ``finish_reason``: the reply is whole.
        self.finished = False
        #: The stream ended as it should (``[DONE]``, or its end after a finish).
        self.complete = False
        self._garbage = 0

    async def next_delta(self) -> str | None:
        """The next non-empty content delta; None once the reply is whole.

        Raises:
            LLMError: an in-stream error (:class:`LLMRejected` for a 4xx code), or, as
                :class:`LLMUnavailable`, a broken stream or one that ended unfinished.
        """
        try:
            async for raw in self._resp.content:
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
            raise _request_failed(e, self._redact) from e
        if not self.finished:
            raise LLMUnavailable("the model stream ended before it finished", retryable=True)
        self.complete = True
        return None

    def _content(self, raw: bytes) -> str | None:
        """The content one line adds ("" for none), or None for ``[DONE]``.

        Raises:
            LLMError: the line is an in-stream error.
        """
        event = sse.parse_line(raw)
        if isinstance(event, sse.UsageReport):
            if (usage := _USAGE.get()) is not None:
                usage.add(event.usage)
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


def _request_failed(error: Exception, redact: Callable[[str], str]) -> LLMUnavailable:
    kind = "timed out" if isinstance(error, TimeoutError) else "failed"
    return LLMUnavailable(f"model request {kind}: {redact(repr(error))}", retryable=True)


def _parse_retry_after(value: str | None) -> float | None:
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


def _error_detail(text: str) -> str:
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
