"""Streaming client for the OpenAI-compatible chat completions API.

One client serves every backend Parley supports: Hugging Face's router
(``https://router.huggingface.co/v1`` with ``HF_TOKEN``), TGI, vLLM and llama.cpp's
``llama-server``. It sends ``POST {base_url}/chat/completions`` with ``"stream": true``
and reads the server-sent events::

    data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, ...}]}
    data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}
    : keep-alive comment
    data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data: [DONE]

Failures before the first delta are retried with exponential backoff and full jitter;
after it, a break raises :class:`LLMStreamInterrupted` and the caller decides.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_DETAIL = 300  # characters of a server's error message kept in our errors


class ChatMessage(BaseModel):
    """One turn of the prompt, as the chat completions API takes it."""

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


class LLMError(Exception):
    """The model could not give a reply.

    ``code`` is the stable error code shown to clients; ``status`` the HTTP status (or
    the status an in-stream error carried), if any; ``retry_after_s`` the server's
    ``Retry-After`` in seconds, if it sent one.
    """

    code: ClassVar[str] = "llm_error"
    #: What clients are told, before the status (see :attr:`public_detail`).
    summary: ClassVar[str] = "the model could not answer"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def public_detail(self) -> str:
        """What a client may be told: the kind of failure, the HTTP status, the wait.

        Never the model server's own words, its URL or its address: an error body can
        echo a key, an internal host or a stack trace, and ``str(error)`` (for the
        worker's log) holds them. E.g. ``"the model API is unavailable (HTTP 503)"``.
        """
        detail = self.summary
        if self.status is not None:
            detail += f" (HTTP {self.status})"
        if self.retry_after_s is not None:
            detail += f"; it asked to wait {self.retry_after_s:.0f} s"
        return detail


class LLMRateLimited(LLMError):
    """429, still after every retry (or with a ``Retry-After`` beyond ``backoff_max_s``)."""

    code = "rate_limited"
    summary = "the model API is refusing requests for now (rate limit)"


class LLMUnavailable(LLMError):
    """5xx, timeout, connection failure or broken stream, still after every retry."""

    code = "llm_unavailable"
    summary = "the model API is unavailable"


class LLMRejected(LLMError):
    """The server refused the request itself (4xx other than 429): never retried."""

    code = "llm_rejected"
    summary = "the model API refused the request"


class LLMStreamInterrupted(LLMUnavailable):
    """The stream broke after at least one delta was yielded; nothing was retried."""

    summary = "the model's reply stream broke"


class _Retryable(Exception):
    """Internal: this attempt failed in a way worth retrying; ``error`` is the verdict."""

    def __init__(self, error: LLMError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Chunk:
    content: str
    finished: bool


class _Done:
    """The ``data: [DONE]`` line."""


@dataclass(frozen=True)
class _UsageReport:
    """A chunk carrying ``usage`` (usually the last one, without choices)."""

    usage: dict[str, Any]
    chunk: _Chunk | None


class _Garbage:
    """A line that is neither SSE nor JSON; logged, then skipped."""


_DONE = _Done()
_GARBAGE = _Garbage()


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

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """Stream the reply to ``messages`` as non-empty content deltas, in order.

        The result is an async generator: iterate it, and close it (``aclose()`` or
        ``contextlib.aclosing``) when stopping early, which closes the HTTP response at
        once so the model server stops generating. Cancelling the consuming task does
        the same.

        Failures before the first delta are retried up to ``max_retries`` times (429,
        500, 502, 503, 504, connect errors, timeouts, a stream that ends without
        finishing), sleeping with exponential backoff and full jitter,
        ``uniform(0, min(backoff_max_s, backoff_base_s * 2**retry))`` as in AWS's
        "Exponential Backoff And Jitter"
        (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
        A ``Retry-After`` (seconds or HTTP date) replaces that sleep; one longer than
        ``backoff_max_s`` is not waited for: the error is raised at once with
        ``retry_after_s`` set, so the caller can report or reschedule.

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
            "model": self.config.model,
            "messages": [m.model_dump() for m in messages],
            "stream": True,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if self.config.stop:
            body["stop"] = list(self.config.stop)
        if self.config.include_usage:
            # The model's own count of the tokens, for the quotas (a last chunk).
            body["stream_options"] = {"include_usage": True}
        return self._stream(body)

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        retries = 0
        while True:
            yielded = False
            finished = False
            try:
                resp = await self._post(body)
                complete = False
                garbage = 0
                try:
                    async for raw in resp.content:
                        event = _parse_line(raw)
                        if isinstance(event, _Done):
                            break
                        if isinstance(event, _UsageReport):
                            if (usage := _USAGE.get()) is not None:
                                usage.add(event.usage)
                            event = event.chunk
                            if event is None:
                                continue
                        if isinstance(event, _Garbage):
                            # One warning per response: an HTML page must not flood the log.
                            garbage += 1
                            logger.log(
                                logging.WARNING if garbage == 1 else logging.DEBUG,
                                "skipping unparsable line from the model: %.200s",
                                self._redact(raw.decode("utf-8", "replace").rstrip()),
                            )
                            continue
                        if isinstance(event, LLMError):
                            if isinstance(event, LLMRejected):
                                raise event
                            raise _Retryable(event)
                        if isinstance(event, _Chunk):
                            if event.content:
                                yielded = True
                                yield event.content
                            finished = finished or event.finished
                    else:
                        if not finished:
                            raise _Retryable(
                                LLMUnavailable("the model stream ended before it finished")
                            )
                    complete = True
                finally:
                    # close() drops the connection, so an abandoned stream stops the model
                    # server at once; release() keeps a finished one for reuse.
                    if complete:
                        resp.release()
                    else:
                        resp.close()
                return
            except _Retryable as e:
                error, cause = e.error, e.__cause__
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                # ValueError: aiohttp's "Chunk too big", a line over its read buffer.
                if finished:  # the reply is whole; only the [DONE] line went missing
                    logger.debug("model stream broke after finish_reason: %r", e)
                    return
                kind = "timed out" if isinstance(e, TimeoutError) else "failed"
                error = LLMUnavailable(f"model request {kind}: {self._redact(repr(e))}")
                cause = e
            if yielded:
                raise LLMStreamInterrupted(
                    f"model stream interrupted: {error}", status=error.status
                ) from cause or error
            delay = self._delay(retries, error)
            if delay is None:
                raise error from cause
            retries += 1
            logger.warning(
                "model request failed (%s), retry %d/%d in %.2fs",
                error,
                retries,
                self.config.max_retries,
                delay,
            )
            await asyncio.sleep(delay)

    async def _post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """Send the request; return a 200 response or raise the status as an error."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        resp = await self._session.post(
            self.config.completions_url, json=body, headers=self._headers, timeout=self._timeout
        )
        if 200 <= resp.status < 300:
            return resp
        try:
            text = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        finally:
            resp.close()
        detail = self._redact(_error_detail(text) or resp.reason or "")
        error = _error_for_status(
            resp.status,
            f"model server answered {resp.status}: {detail}",
            _parse_retry_after(resp.headers.get("Retry-After")),
        )
        if resp.status in RETRYABLE_STATUSES:
            raise _Retryable(error)
        raise error

    def _delay(self, retries: int, error: LLMError) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up."""
        cfg = self.config
        if retries >= cfg.max_retries:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= cfg.backoff_max_s else None
        return random.uniform(0.0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2**retries))

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text


def _error_for_status(status: int | None, message: str, retry_after: float | None) -> LLMError:
    if status == 429:
        return LLMRateLimited(message, status=status, retry_after_s=retry_after)
    if status is not None and 400 <= status < 500:
        return LLMRejected(message, status=status, retry_after_s=retry_after)
    return LLMUnavailable(message, status=status, retry_after_s=retry_after)


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


def _stream_error(payload: dict[str, Any]) -> LLMError:
    """An error event: OpenAI/vLLM ``{"error": {"message", "code"}}`` or TGI's strings."""
    err = payload.get("error")
    status: int | None = None
    if isinstance(err, dict):
        code = err.get("code")
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            status = int(code)
        message = str(err.get("message", err))
    else:
        message = str(err)
        if payload.get("error_type") == "validation":  # TGI's input validation error
            status = 400
    return _error_for_status(status, f"model stream error: {message[:_MAX_DETAIL]}", None)


def _parse_line(raw: bytes) -> _Chunk | _Done | _Garbage | _UsageReport | LLMError | None:
    """One SSE line: a chunk, ``[DONE]``, garbage, an in-stream error, or None to skip.

    Each ``data:`` line is parsed on its own: every OpenAI-compatible server sends one
    JSON object per line. llama.cpp reports failures as an ``error:`` field.
    """
    line = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not line or line.startswith(":"):
        return None
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name not in ("data", "error"):
        return None if name in ("event", "id", "retry") else _GARBAGE
    if name == "data" and value.strip() == "[DONE]":
        return _DONE
    try:
        payload = json.loads(value)
    except ValueError:
        return _GARBAGE
    if not isinstance(payload, dict):
        return _GARBAGE
    if name == "error":
        return _stream_error({"error": payload})
    if payload.get("error") is not None:
        return _stream_error(payload)
    chunk = _chunk(payload.get("choices"))
    usage = payload.get("usage")
    return _UsageReport(usage, chunk) if isinstance(usage, dict) else chunk


def _chunk(choices: object) -> _Chunk | None:
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # e.g. a trailing usage-only chunk
    choice = choices[0]
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return _Chunk(
        content=content if isinstance(content, str) else "",
        finished=choice.get("finish_reason") is not None,
    )
