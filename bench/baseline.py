"""The direct baseline: a minimal FastAPI WebSocket app that asks the model itself.

No Redis and no worker: the process holding the socket streams the reply from the model
(the same stand-in Parley's workers call, through the same client, :mod:`worker.model.llm`)
and forwards it with Parley's events (``queued``, ``token``, ``done``) and Parley's
coalescing rule (the first delta at once, then deltas within ``flush_ms`` as one event),
so the two differ only by what Parley adds: Redis, the message stream, a worker process
and the Pub/Sub hop. A socket's history lives in its own memory and goes into each
prompt, as Parley's memory does (up to ``MEMORY_MAX_MESSAGES`` messages).

Run as ``python -m bench.baseline --port P --model-url URL [--flush-ms MS]``; it is
served by uvicorn with the same options as ``python -m server``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from protocol.event_ids import with_event_id
from protocol.wire import ChatMessage, DoneEvent, ErrorCode, ErrorEvent, QueuedEvent, TokenEvent
from protocol.wire import utc_now as now_iso
from runtime.config import DEFAULT_SYSTEM_PROMPT
from worker.coalesce import Coalescer, Delta, read_deltas
from worker.model.errors import LLMError
from worker.model.llm import LLMClient, LLMConfig, PromptMessage

logger = logging.getLogger(__name__)

MEMORY_MAX_MESSAGES = 20
"""History messages (user and assistant) in a prompt, at most: Parley's default."""


def create_app(model_url: str, *, model: str = "standin", flush_ms: float = 10.0) -> FastAPI:
    """The baseline app: ``POST /token``, ``GET /healthz`` and ``WS /chat``.

    Args:
        model_url: the OpenAI-compatible API base (``http://host:port/v1``).
        model: the model name sent to it.
        flush_ms: deltas arriving within this window (ms) after an event go out as one.
    """
    llm = LLMClient(LLMConfig(base_url=model_url, model=model))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await llm.aclose()

    app = FastAPI(title="Parley baseline", lifespan=lifespan)

    @app.post("/token")
    async def token(name: str) -> dict[str, Any]:
        return {
            "token": str(uuid.uuid4()),
            "name": name,
            "session_start": now_iso(),
            "messages": [],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await _Connection(websocket, llm, flush_ms / 1000).run()

    return app


def _content(text: str) -> str | None:
    """The message in a text frame (a ``message`` command, or plain text), else None."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict) or "type" not in data:
        return text
    content = data.get("content")
    return content if data["type"] == "message" and isinstance(content, str) else None


class _Connection:
    """One socket: a receive loop queues messages, a reply loop answers them in order."""

    def __init__(self, websocket: WebSocket, llm: LLMClient, window_s: float) -> None:
        self.websocket = websocket
        self.llm = llm
        self.window_s = window_s
        self.turns: list[PromptMessage] = []
        self.pending: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._event_ids = itertools.count(1)

    async def run(self) -> None:
        replies = asyncio.create_task(self._reply_loop())
        try:
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies

    async def _send(self, payload: str) -> None:
        async with self._send_lock:
            await self.websocket.send_text(payload)

    async def _emit(self, event: TokenEvent | DoneEvent | ErrorEvent) -> None:
        event_id = f"{int(time.time() * 1000)}-{next(self._event_ids)}"
        await self._send(with_event_id(event.model_dump_json(exclude_none=True), event_id))

    async def _receive_loop(self) -> None:
        while True:
            content = _content(await self.websocket.receive_text())
            if content is None or not content.strip():
                error = ErrorEvent(code=ErrorCode.INVALID_FRAME, detail="not a message")
                await self._send(error.model_dump_json(exclude={"event_id"}))
                continue
            message_id = str(uuid.uuid4())
            message = ChatMessage(id=message_id, role="user", content=content, timestamp=now_iso())
            queued = QueuedEvent(message_id=message_id, message=message)
            await self._send(queued.model_dump_json(exclude_none=True))
            self.pending.put_nowait((message_id, content))

    async def _reply_loop(self) -> None:
        while True:
            message_id, content = await self.pending.get()
            user = PromptMessage(role="user", content=content)
            history = self.turns[-MEMORY_MAX_MESSAGES:]
            prompt = [PromptMessage(role="system", content=DEFAULT_SYSTEM_PROMPT), *history, user]
            try:
                text = await self._stream(message_id, prompt)
            except LLMError as e:
                await self._emit(ErrorEvent(message_id=message_id, code=e.code, detail=str(e)))
                continue
            self.turns += [user, PromptMessage(role="assistant", content=text)]
            reply = ChatMessage(
                id=str(uuid.uuid4()), role="assistant", content=text, timestamp=now_iso()
            )
            await self._emit(DoneEvent(message_id=message_id, reply=reply))

    async def _stream(self, message_id: str, prompt: list[PromptMessage]) -> str:
        """Stream one reply with the worker's coalescing rule; return its whole text."""
        queue: asyncio.Queue[Delta] = asyncio.Queue()

        reader = asyncio.create_task(read_deltas(self.llm.stream(prompt), queue))
        pieces = Coalescer(queue)
        try:
            while (body := await pieces.next_piece()) is not None:
                sent_at = time.perf_counter()
                await self._emit(TokenEvent(message_id=message_id, content=body))
                remaining = self.window_s - (time.perf_counter() - sent_at)
                if remaining > 0 and not pieces.finished and not reader.done():
                    await asyncio.wait({reader}, timeout=remaining)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return "".join(pieces.parts)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m bench.baseline --port P --model-url URL [--flush-ms MS]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--model-url", required=True, help="OpenAI-compatible API base URL")
    parser.add_argument("--model", default="standin")
    parser.add_argument("--flush-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(args.model_url, model=args.model, flush_ms=args.flush_ms),
        host=args.host,
        port=args.port,
        ws_max_size=1_048_576,
        ws_per_message_deflate=False,  # as python -m server
        log_level="warning",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
