"""The accepted chat sockets of one server process, so that shutdown can close them all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from fastapi import WebSocket
from starlette.websockets import WebSocketState


class ChatSockets:
    """The accepted chat sockets of one server process, to close them all on shutdown."""

    def __init__(self) -> None:
        self._sockets: set[WebSocket] = set()

    def __len__(self) -> int:
        return len(self._sockets)

    @contextlib.contextmanager
    def track(self, websocket: WebSocket) -> Iterator[None]:
        """Hold ``websocket`` in the set while the block runs."""
        self._sockets.add(websocket)
        try:
            yield
        finally:
            self._sockets.discard(websocket)

    async def close_all(self, code: int, reason: str) -> int:
        """Close every socket with ``code`` and ``reason``; returns how many were open.

        All at once: a socket whose client stopped reading holds its close for up to
        ``ws_send_timeout_s`` and must not delay the others.
        """
        sockets = [ws for ws in self._sockets if ws.client_state == WebSocketState.CONNECTED]

        async def close(websocket: WebSocket) -> None:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason)

        await asyncio.gather(*(close(ws) for ws in sockets))
        return len(sockets)
