"""``WS /chat``: the handshake's checks, then the socket is handed to its connection.

The token is checked by the ``ChatTokenDep`` dependency and the Origin and the
per-client limits by the app's middleware (:mod:`server.security`,
:class:`server.admission.SocketAdmission`), all before this route runs; here the
session takes one of its socket leases, and :class:`server.connection.ChatConnection`
serves the accepted socket.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketException, status
from fastapi.responses import JSONResponse

from server.connection import ChatConnection
from server.deps import (
    ChatTokenDep,
    HubDep,
    LeasesDep,
    PoolsDep,
    SettingsDep,
    StoreDep,
    redis_unavailable,
)
from server.metrics import SOCKETS, SOCKETS_REFUSED
from server.sockets import ChatSockets
from storage.connection import REDIS_DOWN

router = APIRouter(tags=["chat"])


@router.websocket("/chat")
async def chat(
    websocket: WebSocket,
    token: ChatTokenDep,
    store: StoreDep,
    hub: HubDep,
    leases: LeasesDep,
    pools: PoolsDep,
    settings: SettingsDep,
    after: Annotated[str | None, Query(description="Resume after this event_id.")] = None,
) -> None:
    """Chat over one WebSocket; see the README for the frames both ways.

    A session holding ``max_sockets_per_session`` sockets already (on any server) is
    refused at the handshake: HTTP 429 with a ``detail``.
    """
    try:
        lease = await leases.acquire(token)
    except REDIS_DOWN as e:
        raise redis_unavailable() from e
    if lease is None:
        await _refuse_too_many(websocket, leases.max_sockets)
        return
    try:
        await websocket.accept()
        connection = ChatConnection(websocket, token, store, hub, settings, pools)
        sockets: ChatSockets = websocket.app.state.chat_sockets
        with SOCKETS.track_inprogress(), sockets.track(websocket):
            await connection.run(after)
    finally:
        await leases.release(token, lease)


async def _refuse_too_many(websocket: WebSocket, max_sockets: int) -> None:
    """Refuse the handshake of a session's socket beyond ``max_sockets``: HTTP 429 where
    the ASGI server can send a response, else a close with 1008 (HTTP 403)."""
    detail = (
        f"this session already has {max_sockets} open sockets, the most allowed; "
        "close one, then connect again"
    )
    SOCKETS_REFUSED.inc()
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=429))
        return
    raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=detail)
