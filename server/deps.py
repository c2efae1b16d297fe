"""FastAPI dependencies: the lifespan's state, the session token checks, and where a
REST route finds its credential (``Authorization: Bearer``, or the query)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, HTTPException, Query, WebSocketException, status
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from protocol.labels import hidden_characters
from server.config import ServerSettings
from server.pools import PoolWatch
from storage.connection import REDIS_DOWN
from storage.hub import Hub
from storage.leases import SocketLeases
from storage.store import Store

SESSION_GONE = "Session expired or does not exist"


# HTTPConnection is what Request and WebSocket share: one dependency serves both.


def _store(connection: HTTPConnection) -> Store:
    store: Store = connection.state.store
    return store


def _settings(connection: HTTPConnection) -> ServerSettings:
    settings: ServerSettings = connection.state.settings
    return settings


def _hub(connection: HTTPConnection) -> Hub:
    hub: Hub = connection.state.hub
    return hub


def _pools(connection: HTTPConnection) -> PoolWatch:
    pools: PoolWatch = connection.state.pools
    return pools


def _leases(connection: HTTPConnection) -> SocketLeases:
    leases: SocketLeases = connection.state.leases
    return leases


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[ServerSettings, Depends(_settings)]
HubDep = Annotated[Hub, Depends(_hub)]
PoolsDep = Annotated[PoolWatch, Depends(_pools)]
LeasesDep = Annotated[SocketLeases, Depends(_leases)]


#: ``Authorization: Bearer <token>``: a session token, or an owner token for the routes
#: that take one (``POST /token``, ``GET /conversations``). Headers stay out of access
#: logs, browser history and ``Referer``; the query form (``?token=``, ``?owner=``) is
#: kept for the contract and for Postman.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A session token (or an owner token, for POST /token and GET "
    "/conversations), instead of the token or owner query parameter.",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
SessionTokenQuery = Annotated[
    str | None, Query(description="The session token (or Authorization: Bearer <token>).")
]


def credential(query: str | None, bearer: HTTPAuthorizationCredentials | None, name: str) -> str:
    """The token a REST request names: in ``Authorization: Bearer``, or in the query
    parameter ``name`` (``token``, ``owner``); both may be given if they agree.

    Raises:
        HTTPException: 422 if neither is given; 400 if they differ.
    """
    header = bearer.credentials if bearer is not None else None
    if header is not None and query is not None and header != query:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"two different tokens: give it once, in Authorization or in ?{name}=",
        )
    found = header if header is not None else query
    if found is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"give the {name}: Authorization: Bearer <{name}>, or ?{name}=",
        )
    return found


def bounded_text(value: str, what: str, max_chars: int) -> str:
    """``value`` stripped of surrounding white space, if 1 to ``max_chars`` characters
    remain and none is a control or format character (:mod:`protocol.labels`).

    Raises:
        HTTPException: 400 ``<what> must not be empty``, ``<what> must be at most N
            characters`` or ``<what> must be one line of plain text: ...``.
    """
    value = value.strip()
    if not value:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{what} must not be empty")
    if len(value) > max_chars:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"{what} must be at most {max_chars} characters"
        )
    hidden = hidden_characters(value)
    if hidden:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"{what} must be one line of plain text: no line breaks, tabs, control "
            f"or format characters (such as bidi overrides); found {', '.join(hidden[:5])}",
        )
    return value


def well_formed(token: str) -> bool:
    """Whether ``token`` is a UUID in its canonical text form, as ``POST /token`` issues."""
    try:
        return str(uuid.UUID(token)) == token.lower()
    except ValueError:
        return False


async def _ws_token(store: StoreDep, token: Annotated[str | None, Query()] = None) -> str:
    """The WebSocket's session token, checked before the handshake completes.

    Raises:
        WebSocketException: 1008 (policy violation) for a missing, malformed, unknown or
            expired token, 1011 if Redis is unreachable; the handshake is then refused
            with HTTP 403.
    """
    if token is None or not well_formed(token):
        raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=SESSION_GONE)
    try:
        alive = await store.touch(token)
    except REDIS_DOWN as e:
        raise redis_unavailable() from e
    if not alive:
        raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=SESSION_GONE)
    return token


ChatTokenDep = Annotated[str, Depends(_ws_token)]


def session_gone() -> HTTPException:
    """The REST error for a bad, unknown or expired token: 400."""
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=SESSION_GONE)


def redis_unavailable() -> WebSocketException:
    """The refusal of a handshake that needed Redis while it was unreachable: 1011 (HTTP
    403 at the handshake), with a reason that names no address."""
    return WebSocketException(
        status.WS_1011_INTERNAL_ERROR, reason="Redis unavailable; retry shortly"
    )
