"""FastAPI dependencies: the lifespan's state, the session token checks, and where a
REST route finds its credential (``Authorization: Bearer``, or the query): a session
token, an owner token, or a person's ID token (:mod:`server.identity`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Literal, overload

from fastapi import Depends, HTTPException, Query, WebSocketException, status
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from protocol.labels import hidden_characters
from server.config import ServerSettings
from server.identity import (
    IdentityVerifier,
    InvalidToken,
    Person,
    ProviderUnavailable,
    looks_like_jwt,
    www_authenticate,
)
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


def _identity(connection: HTTPConnection) -> IdentityVerifier | None:
    identity: IdentityVerifier | None = connection.state.identity
    return identity


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[ServerSettings, Depends(_settings)]
HubDep = Annotated[Hub, Depends(_hub)]
PoolsDep = Annotated[PoolWatch, Depends(_pools)]
LeasesDep = Annotated[SocketLeases, Depends(_leases)]
#: The identity provider's verifier; None unless ``OIDC_ISSUER`` is set.
IdentityDep = Annotated[IdentityVerifier | None, Depends(_identity)]


#: ``Authorization: Bearer <token>``: a session token, or an owner token for the routes
#: that take one (``POST /token``, ``GET /conversations``). Headers stay out of access
#: logs, browser history and ``Referer``; the query form (``?token=``, ``?owner=``) is
#: kept for the contract and for Postman.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A session token (or an owner token, for POST /token and GET "
    "/conversations), instead of the token or owner query parameter. Where an owner goes, "
    "an ID token of the identity provider (OIDC_ISSUER) instead.",
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


@dataclass(frozen=True)
class OwnerCredential:
    """The owner a request names: an anonymous owner token (``person`` None, not yet
    checked to be well formed), or the owner of the person an ID token proved."""

    owner: str
    person: Person | None = None


@overload
async def owner_credential(
    identity: IdentityVerifier | None,
    query: str | None,
    bearer: HTTPAuthorizationCredentials | None,
    *,
    required: Literal[True],
) -> OwnerCredential: ...


@overload
async def owner_credential(
    identity: IdentityVerifier | None,
    query: str | None,
    bearer: HTTPAuthorizationCredentials | None,
    *,
    required: Literal[False],
) -> OwnerCredential | None: ...


async def owner_credential(
    identity: IdentityVerifier | None,
    query: str | None,
    bearer: HTTPAuthorizationCredentials | None,
    *,
    required: bool,
) -> OwnerCredential | None:
    """The owner a request names: an ID token in ``Authorization: Bearer`` (a person),
    else an owner token there or in ``?owner=`` (:func:`credential`); None if neither is
    given and none is ``required``.

    Raises:
        HTTPException: 401 for an ID token refused (:func:`prove`), 503 if the provider
            cannot be reached; 400 for an ID token in the query (URLs are logged), or
            with ``?owner=`` as well; 422 if ``required`` and none is given.
    """
    if query is not None and looks_like_jwt(query):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="an identity token goes in Authorization: Bearer, never in the URL",
        )
    header = bearer.credentials if bearer is not None else None
    if header is not None and looks_like_jwt(header):
        if query is not None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail="two owners: give an identity token or ?owner=, not both",
            )
        person = await prove(identity, header)
        return OwnerCredential(person.owner, person)
    if header is None and query is None and not required:
        return None
    return OwnerCredential(credential(query, bearer, "owner"))


async def prove(identity: IdentityVerifier | None, token: str) -> Person:
    """The person the ID token ``token`` proves.

    Raises:
        HTTPException: 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC
            6750 §3.1) for a refused token, or any token when no provider is set; 503 if
            the provider's keys cannot be fetched.
    """
    if identity is None:
        raise unauthorized("this server takes no identity tokens (OIDC_ISSUER is not set)")
    try:
        return await identity.verify(token)
    except InvalidToken as e:
        raise unauthorized(e.description) from e
    except ProviderUnavailable as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the identity provider cannot be reached; retry shortly",
        ) from e


def unauthorized(description: str) -> HTTPException:
    """401 for a refused identity token, saying why (never quoting the token)."""
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=description,
        headers={"WWW-Authenticate": www_authenticate(description)},
    )


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
        alive = await store.sessions.touch(token)
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
