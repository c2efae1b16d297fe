"""``WS /chat``: the handshake's checks, then the socket is handed to its connection.

The token is checked by the ``ChatTokenDep`` dependency and the Origin and the
per-client limits by the app's middleware (:mod:`server.security`,
:class:`server.admission.SocketAdmission`), all before this route runs; here a person's
ID token, if the client offers one, is checked, the session takes one of its socket
leases, and :class:`server.connection.ChatConnection` serves the accepted socket.

*A person's socket.* The session token still names the session (``?token=``): the
session's leases, channel, events and resume are all keyed by it, and it stays the
session's credential everywhere else in the API. An ID token, offered as the
subprotocol ``parley.bearer.<JWT>`` beside ``parley`` (:mod:`protocol.subprotocols`), adds
proof of the person: it must be valid and the session must be that person's, else the
handshake is refused (401 with ``WWW-Authenticate``, or 403), and the socket lives no
longer than the token (then ``auth_expired`` and 1008; the client reconnects with a fresh
one and resumes). A subprotocol, not the first frame: it is checked before the socket
is accepted, like the session token, so no frame is read from someone unproven; and
unlike the query it is in no URL, so in no access log. Browsers can set a socket's
subprotocols but not its headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, WebSocket, WebSocketException, status
from fastapi.responses import JSONResponse

from protocol.subprotocols import SUBPROTOCOL, offered_token
from server.connection import ChatConnection
from server.deps import (
    ChatTokenDep,
    HubDep,
    IdentityDep,
    LeasesDep,
    PoolsDep,
    SettingsDep,
    StoreDep,
    prove,
    redis_unavailable,
)
from server.identity import IdentityVerifier, Person
from server.metrics import SOCKETS, SOCKETS_REFUSED
from server.sockets import ChatSockets
from storage.connection import REDIS_DOWN
from storage.store import Store

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
    identity: IdentityDep,
    after: Annotated[str | None, Query(description="Resume after this event_id.")] = None,
) -> None:
    """Chat over one WebSocket; see the README for the frames both ways.

    A session holding ``max_sockets_per_session`` sockets already (on any server) is
    refused at the handshake: HTTP 429 with a ``detail``. An ID token offered and
    refused: 401 with ``WWW-Authenticate``; valid but not the session's owner: 403.
    """
    offered: Sequence[str] = websocket.scope.get("subprotocols", [])
    try:
        person = await _person(offered, identity, store, token)
    except HTTPException as e:
        await _refuse(websocket, e.status_code, str(e.detail), e.headers)
        return
    try:
        lease = await leases.acquire(token)
    except REDIS_DOWN as e:
        raise redis_unavailable() from e
    if lease is None:
        await _refuse_too_many(websocket, leases.max_sockets)
        return
    try:
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        expires_at = person.expires_at if person is not None else None
        connection = ChatConnection(websocket, token, store, hub, settings, pools, expires_at)
        sockets: ChatSockets = websocket.app.state.chat_sockets
        with SOCKETS.track_inprogress(), sockets.track(websocket):
            await connection.run(after)
    finally:
        await leases.release(token, lease)


async def _person(
    offered: Sequence[str], identity: IdentityVerifier | None, store: Store, token: str
) -> Person | None:
    """The person whose ID token the client offered, if it offered one.

    Raises:
        HTTPException: 401 for a token refused (:func:`server.deps.prove`), 503 if the
            provider cannot be reached, 403 if the session is not the person's.
        WebSocketException: 1011 if Redis is unreachable.
    """
    id_token = offered_token(offered)
    if id_token is None:
        return None
    person = await prove(identity, id_token)
    try:
        owner = await store.owners.session_owner(token)
    except REDIS_DOWN as e:
        raise redis_unavailable() from e
    if owner != person.owner:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this session is not yours")
    return person


async def _refuse_too_many(websocket: WebSocket, max_sockets: int) -> None:
    """Refuse the handshake of a session's socket beyond ``max_sockets``: HTTP 429."""
    detail = (
        f"this session already has {max_sockets} open sockets, the most allowed; "
        "close one, then connect again"
    )
    SOCKETS_REFUSED.inc()
    await _refuse(websocket, 429, detail)


async def _refuse(
    websocket: WebSocket, code: int, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    """Refuse a handshake with HTTP ``code``, ``{"detail": detail}`` and ``headers`` where
    the ASGI server can send a response, else with a close 1008 (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = JSONResponse({"detail": detail}, status_code=code, headers=headers)
        await websocket.send_denial_response(response)
        return
    raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=detail)
