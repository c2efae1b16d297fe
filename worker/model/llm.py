"""Streaming client for the OpenAI-compatible chat completions API.

One client serves every backend Parley supports: Hugging Face's router
(``https://router.huggingface.co/v1`` with ``HF_TOKEN``), TGI, vLLM and llama.cpp's
``llama-server``. It sends ``POST {base_url}/chat/completions`` with ``"stream": true``
and reads the server-sent events (:mod:`worker.model.sse`).

Failures before the first delta are retried with the one backoff
(:func:`runtime.retry.retrying`); after it, a break raises :class:`LLMStreamInterrupted`
and the caller decides.

Each client also counts tokens (:attr:`LLMClient.tokens`, a
:class:`worker.model.tokens.TokenCounter`): every ``usage`` a response reports calibrates it,
and so does llama.cpp's ``POST /tokenize`` (:meth:`LLMClient.count_tokens`) where the
server has it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec

from runtime.retry import retrying
from worker.model.errors import (
    LLMError,
    LLMRejected,
    LLMStreamInterrupted,
    error_for_status,
)
from worker.model.response import (
    StreamResponse,
    error_detail,
    note_request,
    parse_retry_after,
    request_failed,
)
from worker.model.tokens import TokenCounter

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

_ENCODER = msgspec.json.Encoder()
"""Encodes a request body (a dict of JSON values) to JSON bytes."""


class PromptMessage(msgspec.Struct, frozen=True):
    """One message of a prompt, as the chat completions API takes it (``role``, ``content``).

    A msgspec struct: a prompt is made for every reply (one a message of its window), and
    encoded into the request body as it is.
    """

    role: Literal["system", "user", "assistant"]
    content: str


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

    @property
    def tokenize_url(self) -> str:
        """llama.cpp's ``/tokenize``: the server's root (``base_url`` without a final
        ``/v1``) plus ``/tokenize``."""
        root = self.base_url.rstrip("/")
        return root.removesuffix("/v1") + "/tokenize"


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
        self._headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        #: Each model's token counts (by its API name), learned from its ``usage`` and
        #: ``/tokenize``: models behind one API may have different tokenizers.
        self._counters: dict[str, TokenCounter] = {}
        #: Whether the server has ``/tokenize`` (None until asked).
        self.can_tokenize: bool | None = None

    def counter(self, model: str | None = None) -> TokenCounter:
        """The token counter of ``model`` (its API name; None: the configured ``model``)."""
        return self._counters.setdefault(model or self.config.model, TokenCounter())

    @property
    def tokens(self) -> TokenCounter:
        """The token counter of the configured ``model``."""
        return self.counter()

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
            # Encoded by msgspec (see _post), structs as they are: several times faster
            # than model_dump and json.dumps would.
            "messages": list(messages),
            "stream": True,
            "max_tokens": max_tokens or self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if self.config.stop:
            body["stop"] = list(self.config.stop)
        if self.config.include_usage:
            # The model's own count of the tokens, for the quotas and the token
            # estimate's calibration (a last chunk).
            body["stream_options"] = {"include_usage": True}
        return self._stream(body, [m.content for m in messages])

    async def count_tokens(self, text: str, model: str | None = None) -> int | None:
        """The model's own count of the tokens of ``text``, from llama.cpp's
        ``POST /tokenize`` (``{"content": text}`` -> ``{"tokens": [...]}``); it also
        calibrates :meth:`counter` of ``model`` (the API's name; None: the configured
        one), the model the server serves.

        Returns None, never raising, when the count cannot be had: a server without the
        route (404, 405, 501: it is not asked again), an error, a timeout, or an answer
        of another shape. One try, no retry: a count is a refinement, never needed.
        """
        if self._closed or self.can_tokenize is False:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {k: v for k, v in self._headers.items() if k != "Accept"}
        try:
            async with self._session.post(
                self.config.tokenize_url,
                json={"content": text},
                headers=headers,
                timeout=self._timeout,
            ) as resp:
                if resp.status in (404, 405, 501):
                    self.can_tokenize = False
                    logger.info("the model server has no /tokenize (%d)", resp.status)
                    return None
                if resp.status != 200:
                    logger.debug("/tokenize answered %d", resp.status)
                    return None
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.debug("/tokenize failed: %s", self._redact(repr(e)))
            return None
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            return None
        self.can_tokenize = True
        self.counter(model).observe(len(text.encode("utf-8")), len(tokens))
        return len(tokens)

    def _calibrate(self, contents: list[str], model: str) -> Callable[[dict[str, Any]], None]:
        """What to do with a response's ``usage`` for ``model``'s prompt of ``contents``."""
        counter = self.counter(model)

        def observe(usage: dict[str, Any]) -> None:
            prompt_tokens = usage.get("prompt_tokens")
            if isinstance(prompt_tokens, int):
                counter.observe_prompt(contents, prompt_tokens)

        return observe

    async def _stream(self, body: dict[str, Any], contents: list[str]) -> AsyncGenerator[str, None]:
        response, first = await self._start(body, self._calibrate(contents, body["model"]))
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

    async def _start(
        self, body: dict[str, Any], on_usage: Callable[[dict[str, Any]], None]
    ) -> tuple[StreamResponse, str | None]:
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
                response = StreamResponse(await self._post(body), self._redact, on_usage)
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
                self.config.completions_url,
                data=_ENCODER.encode(body),
                headers=self._headers,
                timeout=self._timeout,
            )
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise request_failed(e, self._redact) from e
        # Answered, whatever the status: a request the quotas pay for.
        note_request()
        if 200 <= resp.status < 300:
            return resp
        try:
            text = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        finally:
            resp.close()
        detail = self._redact(error_detail(text) or resp.reason or "")
        raise error_for_status(
            resp.status,
            f"model server answered {resp.status}: {detail}",
            parse_retry_after(resp.headers.get("Retry-After")),
            retryable=resp.status in RETRYABLE_STATUSES,
        )

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text
