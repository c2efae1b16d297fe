"""A stand-in OpenAI-compatible model server for tests, system tests and benchmarks.

The reply is deterministic: ``"Reply to: " + <last user message>``, padded with filler
words up to ``tokens`` tokens, one word (with its trailing space, the last excepted) per
SSE delta, so a test can tell which prompt a reply answers. Faults are queued (fail with
a status, cut a stream, hang) and each chat request takes the next one, in order.

In process::

    async with StandinModel(tokens=4) as model:   # model.base_url: "http://127.0.0.1:PORT/v1"
        model.fail_next(503)

As a process: ``python -m testkit.standin --port 8081 --tokens 64 --delay-ms 20``.
Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
``POST /tokenize`` (llama.cpp's: a token per word, as its ``usage`` counts), and for
tests ``GET /_requests`` (bodies), ``GET /_headers``, ``GET /_stats``, ``POST /_reset``,
``POST /_faults`` (``{"kind": "fail"|"cut"|"hang", ...}``), ``POST /_settings``, and for
benchmarks ``GET /_timings[?deltas=1]`` (the stand-in's own timing of each reply, see
:class:`Timing`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from runtime.tasks import until_stopped

FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
REPLY_PREFIX = "Reply to: "


def reply_tokens(prompt: str, tokens: int) -> list[str]:
    """The deltas the stand-in streams for ``prompt``; ``"".join(...)`` is the reply.

    ``REPLY_PREFIX + prompt`` is never cut, so a reply can hold more than ``tokens``
    tokens; filler words pad it up to ``tokens``.
    """
    words = re.findall(r"\S+\s*", REPLY_PREFIX + prompt)
    filler = itertools.cycle(FILLER)
    while len(words) < tokens:
        if not words[-1][-1].isspace():
            words[-1] += " "
        words.append(next(filler))
    return words


def reply_text(prompt: str, tokens: int) -> str:
    """The whole reply the stand-in gives to ``prompt``."""
    return "".join(reply_tokens(prompt, tokens))


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, stop, ...: accepted, ignored

    model: Annotated[StrictStr, Field(min_length=1)]
    messages: Annotated[list[_Message], Field(min_length=1)]
    stream: StrictBool = False


class _FailFault(BaseModel):
    kind: Literal["fail"]
    status: Annotated[int, Field(ge=400, le=599)]
    count: Annotated[int, Field(ge=1)] = 1
    retry_after: Annotated[float, Field(ge=0)] | None = None
    message: str | None = None


class _CutFault(BaseModel):
    kind: Literal["cut"]
    after_tokens: Annotated[int, Field(ge=0)]
    count: Annotated[int, Field(ge=1)] = 1


class _HangFault(BaseModel):
    kind: Literal["hang"]
    count: Annotated[int, Field(ge=1)] = 1


_FaultAdapter: TypeAdapter[_FailFault | _CutFault | _HangFault] = TypeAdapter(
    Annotated[_FailFault | _CutFault | _HangFault, Field(discriminator="kind")]
)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: Annotated[int, Field(ge=1)] | None = None
    ttft_ms: Annotated[float, Field(ge=0)] | None = None
    delay_ms: Annotated[float, Field(ge=0)] | None = None
    report_usage: bool | None = None
    context_tokens: Annotated[int, Field(ge=1)] | None = None


@dataclass
class Timing:
    """The stand-in's own timing of one whole reply, on ``time.perf_counter()`` (s).

    On Linux that clock is ``CLOCK_MONOTONIC``, shared by every process of the machine,
    so a client in another process can subtract these from its own times.

    Attributes:
        prompt: the last user message of the request (what the reply names).
        received: the request body was read.
        first: the first content delta was written.
        done: the end of the reply was written.
        deltas: when each content delta was written, in order.
    """

    prompt: str
    received: float
    first: float | None = None
    done: float | None = None
    deltas: list[float] = field(default_factory=list)
    #: Whether the stand-in's delays applied (see ``StandinModel.paced``).
    paced: bool = True

    def as_dict(self, *, deltas: bool) -> dict[str, Any]:
        """The timing as JSON-ready values; ``deltas`` includes the per-delta times."""
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "received": self.received,
            "first": self.first,
            "done": self.done,
        }
        if deltas:
            out["deltas"] = self.deltas
        return out


@dataclass(frozen=True)
class _Fail:
    status: int
    retry_after: float | None
    message: str | None = None


@dataclass(frozen=True)
class _Cut:
    after_tokens: int


class _Hang:
    pass


_Fault = _Fail | _Cut | _Hang

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


def _error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def _context_exceeded(prompt_tokens: int, context: int) -> web.Response:
    """A prompt beyond the context, refused as llama.cpp's server does."""
    message = (
        f"request ({prompt_tokens} tokens) exceeds the available context size "
        f"({context} tokens), try increasing it"
    )
    error = {
        "code": 400,
        "message": message,
        "type": "exceed_context_size_error",
        "n_prompt_tokens": prompt_tokens,
        "n_ctx": context,
    }
    return web.json_response({"error": error}, status=400)


def _wants_usage(body: object) -> bool:
    """Whether a request asks for a ``usage`` chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options") if isinstance(body, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class StandinModel:
    """The stand-in server. Settings are plain attributes, read per request.

    ``tokens``: reply length in tokens (at least the prefix and prompt words);
    ``ttft_ms``: delay before the first delta; ``delay_ms``: delay between deltas (delta
    ``i`` is due ``i * delay_ms`` after the first); ``paced``: which requests (their
    JSON body) the two delays apply to, the others being answered at once (None: all).
    ``requests`` and ``headers`` hold every chat request's JSON body (``{"_raw": text}``
    when it was not a JSON object) and headers, in arrival order. Counters: ``in_flight``
    (chat requests being answered), ``completed`` (replies fully sent), ``cancelled``
    (clients that went away mid-reply), ``cut`` (streams cut on purpose). ``timings``
    holds a :class:`Timing` per reply fully sent, in the order they finished.
    """

    def __init__(
        self,
        *,
        tokens: int = 8,
        ttft_ms: float = 0.0,
        delay_ms: float = 0.0,
        model: str = "standin",
        paced: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.tokens = tokens
        self.ttft_ms = ttft_ms
        self.delay_ms = delay_ms
        self.paced = paced
        self.model = model
        #: Answer ``stream_options.include_usage`` with a last ``usage`` chunk, counting
        #: a token per word of every message and per delta (False: ignore it, as some
        #: APIs do).
        self.report_usage = True
        #: The context (tokens, a token per word of every message): a longer prompt is
        #: refused with a 400 worded as llama.cpp's server words it. None: no limit.
        self.context_tokens: int | None = None
        #: Answer ``POST /tokenize`` (False: 404, as servers without it do).
        self.tokenize = True
        #: Every text ``POST /tokenize`` counted, in order.
        self.tokenized: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.timings: list[Timing] = []
        self.in_flight = 0
        self.completed = 0
        self.cancelled = 0
        self.cut = 0
        self.base_url: str | None = None
        self._faults: deque[_Fault] = deque()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> StandinModel:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- faults and inspection ---------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` chat requests with ``status`` and an error body
        whose message is ``message`` (default ``"injected failure <status>"``)."""
        self._faults.extend([_Fail(status, retry_after, message)] * count)

    def cut_next(self, after_tokens: int, count: int = 1) -> None:
        """Send ``after_tokens`` deltas on the next ``count`` streams, then drop them."""
        self._faults.extend([_Cut(after_tokens)] * count)

    def hang_next(self, count: int = 1) -> None:
        """Accept the next ``count`` chat requests and never answer them."""
        self._faults.extend([_Hang()] * count)

    def reset(self) -> None:
        """Forget recorded requests, counters and queued faults."""
        self.requests.clear()
        self.headers.clear()
        self.timings.clear()
        self.tokenized.clear()
        self._faults.clear()
        self.completed = self.cancelled = self.cut = 0
        self._notify()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, in flight, completed, cancelled and cut streams."""
        return {
            "requests": len(self.requests),
            "in_flight": self.in_flight,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "cut": self.cut,
            "faults_queued": len(self._faults),
            "tokens": self.tokens,
            "ttft_ms": self.ttft_ms,
            "delay_ms": self.delay_ms,
            "context_tokens": self.context_tokens,
        }

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked on every change of state.

        Bound it with ``asyncio.timeout`` or ``asyncio.wait_for``.
        """
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (routes bound to this stand-in)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/_requests", self._get_requests)
        app.router.add_get("/_headers", self._get_headers)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_get("/_timings", self._get_timings)
        app.router.add_post("/_reset", self._post_reset)
        app.router.add_post("/_faults", self._post_faults)
        app.router.add_post("/_settings", self._post_settings)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); return the base URL, ``.../v1``."""
        # handler_cancellation: a client that goes away cancels its handler, which is
        # how hung and slow streams notice it and how ``cancelled`` is counted.
        self._stopping.clear()
        self._runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048)
        await site.start()
        sockets = self._runner.addresses
        bound_port = sockets[0][1]
        self.base_url = f"http://{host}:{bound_port}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; hung requests are released and their connections closed."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- chat -----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        received = time.perf_counter()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(body if isinstance(body, dict) else {"_raw": raw})
        self.headers.append(dict(request.headers))
        fault = self._faults.popleft() if self._faults else None
        self._notify()

        if isinstance(fault, _Fail):
            headers: dict[str, str] = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            message = fault.message or f"injected failure {fault.status}"
            return _error_response(fault.status, message, headers)
        try:
            chat = _ChatRequest.model_validate(body)
        except PydanticValidationError as e:
            message = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()
            )
            return _error_response(400, f"invalid request: {message}")

        prompt_tokens = sum(len(m.content.split()) for m in chat.messages)
        if self.context_tokens is not None and prompt_tokens > self.context_tokens:
            return _context_exceeded(prompt_tokens, self.context_tokens)
        prompt = next((m.content for m in reversed(chat.messages) if m.role == "user"), "")
        tokens = reply_tokens(prompt, self.tokens)
        timing = Timing(prompt, received, paced=self.paced is None or self.paced(body))
        self.in_flight += 1
        self._notify()
        try:
            if isinstance(fault, _Hang):
                await self._stopping.wait()
                return _error_response(503, "stand-in stopping")
            if chat.stream:
                usage = self._usage(chat, tokens) if _wants_usage(body) else None
                return await self._stream(request, chat.model, tokens, fault, timing, usage)
            return await self._complete(request, chat.model, tokens, fault, timing)
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                self.cancelled += 1
            raise
        except ConnectionResetError:  # a write found the client gone before the cancel did
            self.cancelled += 1
            return web.Response(status=499)  # never sent: the connection is closed
        finally:
            self.in_flight -= 1
            self._notify()

    def _usage(self, chat: _ChatRequest, tokens: list[str]) -> dict[str, int] | None:
        """The ``usage`` the stand-in reports: a token per word of the prompt, per delta."""
        if not self.report_usage:
            return None
        prompt = sum(len(m.content.split()) for m in chat.messages)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }

    async def _stream(
        self,
        request: web.Request,
        model: str,
        tokens: list[str],
        fault: _Fault | None,
        timing: Timing,
        usage: dict[str, int] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        base = {
            "id": f"chatcmpl-standin-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        last = _sse({**base, "choices": [], "usage": usage}) if usage is not None else b""

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        ttft_ms, delay_ms = (self.ttft_ms, self.delay_ms) if timing.paced else (0.0, 0.0)
        if ttft_ms:
            await asyncio.sleep(ttft_ms / 1000)
        if not delay_ms and fault is None:
            # An instant reply: the same events, in one write rather than one per delta,
            # so that serving it costs a benchmark's machine as little as it can.
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": token}) for token in tokens]
            await resp.write(b"".join([*events, chunk({}, "stop"), last, b"data: [DONE]\n\n"]))
            timing.deltas.extend([time.perf_counter()] * len(tokens))
            await resp.write_eof()
            self._finished(timing)
            return resp
        await resp.write(chunk({"role": "assistant", "content": ""}))
        # Deltas are paced by the clock (delta i at start + i * delay_ms), so a busy event
        # loop delays a delta without slowing down the rest of the reply.
        start = time.perf_counter()
        for i, token in enumerate(tokens):
            if isinstance(fault, _Cut) and i == fault.after_tokens:
                return self._drop(request, resp)
            if i and delay_ms:
                due = start + i * delay_ms / 1000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await resp.write(chunk({"content": token}))
            timing.deltas.append(time.perf_counter())
        if isinstance(fault, _Cut):  # after_tokens >= the reply: cut before finishing
            return self._drop(request, resp)
        await resp.write(chunk({}, "stop") + last)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self._finished(timing)
        return resp

    async def _complete(
        self,
        request: web.Request,
        model: str,
        tokens: list[str],
        fault: _Fault | None,
        timing: Timing,
    ) -> web.StreamResponse:
        delay_ms = (self.ttft_ms + self.delay_ms * (len(tokens) - 1)) if timing.paced else 0.0
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if isinstance(fault, _Cut):
            resp = web.StreamResponse()
            await resp.prepare(request)
            return self._drop(request, resp)
        timing.deltas.append(time.perf_counter())
        self._finished(timing)
        return web.json_response(
            {
                "id": f"chatcmpl-standin-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": len(tokens),
                    "total_tokens": len(tokens),
                },
            }
        )

    def _finished(self, timing: Timing) -> None:
        timing.done = time.perf_counter()
        timing.first = timing.deltas[0] if timing.deltas else timing.done
        self.timings.append(timing)
        self.completed += 1

    def _drop(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Close the connection mid-body, as a crashing model server would."""
        self.cut += 1
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then closes
        return resp  # aiohttp's write_eof then fails quietly on the closed transport

    # -- small endpoints ----------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "parley"}
        return web.json_response({"object": "list", "data": [model]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenize:
            return _error_response(404, "File Not Found")
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = None
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return _error_response(400, '"content" must be provided')
        self.tokenized.append(content)
        return web.json_response({"tokens": list(range(len(content.split())))})

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _get_headers(self, request: web.Request) -> web.Response:
        return web.json_response(self.headers)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _get_timings(self, request: web.Request) -> web.Response:
        deltas = request.query.get("deltas", "") not in ("", "0", "false")
        return web.json_response([t.as_dict(deltas=deltas) for t in self.timings])

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            fault = _FaultAdapter.validate_json(await request.read())
        except PydanticValidationError as e:
            return web.json_response({"detail": e.errors(include_url=False)}, status=400)
        if isinstance(fault, _FailFault):
            self.fail_next(fault.status, fault.count, fault.retry_after, fault.message)
        elif isinstance(fault, _CutFault):
            self.cut_next(fault.after_tokens, fault.count)
        else:
            self.hang_next(fault.count)
        return web.json_response(self.stats())

    async def _post_settings(self, request: web.Request) -> web.Response:
        try:
            settings = _Settings.model_validate_json(await request.read())
        except PydanticValidationError as e:
            return web.json_response({"detail": e.errors(include_url=False)}, status=400)
        for name, value in settings.model_dump(exclude_none=True).items():
            setattr(self, name, value)
        return web.json_response(self.stats())


async def _serve(args: argparse.Namespace) -> None:
    model = StandinModel(
        tokens=args.tokens, ttft_ms=args.ttft_ms, delay_ms=args.delay_ms, model=args.model
    )
    base_url = await model.start(args.host, args.port)
    print(f"stand-in model serving at {base_url}", flush=True)
    try:
        await until_stopped()
    finally:
        await model.stop()


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m testkit.standin --port P [--tokens N --ttft-ms MS --delay-ms MS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per reply")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first delta")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay between deltas")
    parser.add_argument("--model", default="standin", help="model id listed at /v1/models")
    args = parser.parse_args(argv)
    # uvloop when available: a stand-in serving benchmarks should cost the machine
    # as little as it can.
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(args))


if __name__ == "__main__":
    main()
