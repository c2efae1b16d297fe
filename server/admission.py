"""Admission control at the server's edges: who may start sessions, open sockets and
send messages, and how often, across every replica (counted in Redis, see
:mod:`storage.admission`).

- ``POST /token``: ``RATE_SESSIONS_PER_CLIENT`` per client address per
  ``RATE_WINDOW_S``; past it, 429 with ``Retry-After`` (:func:`admit_session`). A
  request refused for another reason (400, 401, 409, 422) is not counted.
- ``POST /owner``: ``RATE_OWNERS_PER_CLIENT`` per client address per window, likewise
  (:func:`admit_owner`).
- ``WS /chat``: ``RATE_SOCKET_OPENS_PER_CLIENT`` opens per client address per window and
  ``MAX_SOCKETS_PER_CLIENT`` open at once (:class:`SocketAdmission`); a refused socket is
  accepted, told ``too_many_requests`` with ``retry_after_s``, and closed with 1013 (try
  again later), since a browser page cannot read a refused handshake's answer.
- each message: ``RATE_MESSAGES_PER_SESSION`` per session per window, refused with
  ``too_many_requests``; and while the session's or its client's model tokens of the
  period are used up (``MODEL_TOKENS_PER_SESSION``, ``MODEL_TOKENS_PER_CLIENT``, charged
  by the worker), ``quota_exceeded``. Checked by the script that queues the message, in
  the same step (:func:`message_limits`), so a refusal spends nothing.

The client address is the peer's, or what a trusted proxy says (``TRUSTED_PROXIES``,
:func:`server.security.client_address`); an IPv6 client counts by its
``CLIENT_IPV6_PREFIX`` network (:func:`server.security.client_key`). Refusals are counted in
``parley_admission_refusals_total{limit}``; the label is the limit's name only, never an
address or a token. When Redis is unreachable, sockets and messages are admitted (their
own handling reports the outage) and ``POST /token`` answers 503 as any REST call does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator

from fastapi import HTTPException, Request, WebSocket, status
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.wire import ErrorCode, ErrorEvent
from server.config import ServerSettings
from server.security import SecuritySettings, client_key
from storage.admission import (
    SESSION_TOKENS,
    Limiter,
    MessageLimits,
    Refused,
    digest,
    limit_key,
)
from storage.connection import REDIS_DOWN
from storage.leases import SocketLeases

logger = logging.getLogger(__name__)

REFUSALS = Counter(
    "parley_admission_refusals", "Requests refused by admission control, by limit.", ["limit"]
)

#: Close code of a socket refused by a limit: 1013, "try again later".
CLOSE_TRY_AGAIN_LATER = 1013


def _refused(
    error: Refused, detail: str, code: ErrorCode = ErrorCode.TOO_MANY_REQUESTS
) -> ErrorEvent:
    REFUSALS.labels(error.limit).inc()
    wait = math.ceil(error.retry_after_s)
    return ErrorEvent(
        code=code,
        detail=f"{detail}; try again in {wait} s",
        retry_after_s=round(error.retry_after_s, 3),
    )


def _limiter(connection: Request | WebSocket) -> Limiter:
    limiter: Limiter = connection.state.limiter
    return limiter


async def admit_session(request: Request) -> AsyncIterator[None]:
    """Dependency of ``POST /token``: one more session for this client address. A
    request refused further on (its name, owner, identity token or body: 400, 401,
    409, 422) or failed gives its admission back: a refusal spends nothing. Use it with
    ``scope="function"``, so that the admission is back before the answer is sent.

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past ``RATE_SESSIONS_PER_CLIENT``.
    """
    settings: SecuritySettings = request.state.settings
    async with _admitted(request, "sessions", settings.rate_sessions_per_client):
        yield


async def admit_owner(request: Request) -> AsyncIterator[None]:
    """Dependency of ``POST /owner``: one more owner for this client address, under a
    budget of its own (an owner costs no session, and a session no owner); given back
    as :func:`admit_session`'s is.

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past ``RATE_OWNERS_PER_CLIENT``.
    """
    settings: SecuritySettings = request.state.settings
    async with _admitted(request, "owners", settings.rate_owners_per_client):
        yield


@contextlib.asynccontextmanager
async def _admitted(request: Request, limit: str, max_count: int) -> AsyncIterator[None]:
    """One more of ``limit`` for the request's client address (:func:`_admit_address`)
    while the request runs; given back if it raises.

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past ``max_count``.
    """
    settings: SecuritySettings = request.state.settings
    address = client_key(request.scope, settings.proxies(), settings.client_ipv6_prefix)
    admission = await _admit_address(request, address, limit, max_count)
    try:
        yield
    except BaseException:
        await _give_back(_limiter(request), limit, address, admission)
        raise


async def _give_back(limiter: Limiter, limit: str, address: str, admission: str) -> None:
    """Give a refused request's ``admission`` of ``limit`` back (a refusal spends
    nothing); with Redis unreachable it is only logged, and lapses with its window."""
    try:
        await limiter.give_back(limit, address, admission)
    except REDIS_DOWN as e:
        logger.warning("a %s admission could not be given back, Redis unavailable: %s", limit, e)


async def _admit_address(request: Request, address: str, limit: str, max_count: int) -> str:
    """One more of ``limit`` ("sessions", "owners") for the client ``address``: at most
    ``max_count`` every ``RATE_WINDOW_S``. Returns the admission (for ``give_back``).

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past it.
    """
    settings: SecuritySettings = request.state.settings
    try:
        return await _limiter(request).hit(limit, address, max_count, settings.rate_window_s)
    except Refused as e:
        REFUSALS.labels(e.limit).inc()
        wait = math.ceil(e.retry_after_s)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many new {limit} from your address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        ) from e


def message_limits(websocket: WebSocket) -> MessageLimits:
    """What admits a message of the session on ``websocket`` (its rate window, its
    quota and its client's), checked by the script that queues it: see
    :class:`storage.admission.MessageLimits`."""
    settings: SecuritySettings = websocket.state.settings
    address = client_key(websocket.scope, settings.proxies(), settings.client_ipv6_prefix)
    return MessageLimits(
        client=digest(address),
        rate_limit=settings.rate_messages_per_session,
        rate_window_ms=max(1, round(settings.rate_window_s * 1000)),
        session_quota=settings.model_tokens_per_session,
        client_quota=settings.model_tokens_per_client,
    )


def message_refused(error: Refused, settings: SecuritySettings) -> ErrorEvent:
    """The error event of a message (or regenerate, or edit) refused by its admission
    (:func:`message_limits`): ``too_many_requests`` or ``quota_exceeded``, with
    ``retry_after_s``; counted in ``parley_admission_refusals_total``."""
    if error.limit == "messages":
        return _refused(
            error,
            f"at most {settings.rate_messages_per_session} messages every "
            f"{settings.rate_window_s:g} s",
        )
    whose = "this session" if error.limit == SESSION_TOKENS else "your address"
    quota = (
        settings.model_tokens_per_session
        if error.limit == SESSION_TOKENS
        else settings.model_tokens_per_client
    )
    return _refused(
        error, f"{whose} used its {quota} model tokens of the period", ErrorCode.QUOTA_EXCEEDED
    )


class _Accepting:
    """``send``, noting whether it sent the socket's ``websocket.accept``.

    An object with two slots, not a closure: it lives as long as the socket, and a
    closure with its cells takes five times the room (about 300 bytes, not 60).
    """

    __slots__ = ("accepted", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.accepted = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "websocket.accept":
            self.accepted = True
        await self.send(message)


class SocketAdmission:
    """ASGI middleware: admits chat sockets by their client address.

    Args:
        app: the application it wraps.
        settings: the limits, and the trusted proxies.
    """

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.proxies = settings.proxies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit (or refuse) one WebSocket to ``/chat``; anything else passes through."""
        limiter: Limiter | None = scope.get("state", {}).get("limiter")
        if scope["type"] != "websocket" or scope["path"] != "/chat" or limiter is None:
            await self.app(scope, receive, send)
            return
        s = self.settings
        address = client_key(scope, self.proxies, s.client_ipv6_prefix)
        holder = uuid.uuid4().hex
        opened = ""
        try:
            opened = await limiter.hit(
                "socket_opens", address, s.rate_socket_opens_per_client, s.rate_window_s
            )
            await limiter.hold(
                "sockets", address, s.max_sockets_per_client, s.socket_lease_seconds, holder
            )
        except Refused as e:
            if opened:  # refused for its open sockets: the open is given back
                await _give_back(limiter, "socket_opens", address, opened)
            detail = (
                f"at most {s.rate_socket_opens_per_client} sockets opened every "
                f"{s.rate_window_s:g} s from one address"
                if e.limit == "socket_opens"
                else f"at most {s.max_sockets_per_client} sockets open at once from one address"
            )
            await self._refuse(_refused(e, detail), receive, send)
            return
        except REDIS_DOWN as e:
            logger.warning("socket limits not checked, Redis unavailable: %s", e)
            await self.app(scope, receive, send)
            return
        # The socket's place is renewed with the process's other socket leases, every
        # third of SOCKET_LEASE_SECONDS: a server that dies stops renewing, and its
        # sockets' places lapse.
        leases: SocketLeases = scope["state"]["leases"]
        place = limit_key("sockets", address)
        leases.track(place, holder)
        watched = _Accepting(send)
        try:
            await self.app(scope, receive, watched)
        finally:
            leases.untrack(place, holder)
            with contextlib.suppress(*REDIS_DOWN):  # the lease lapses anyway
                await limiter.release("sockets", address, holder)
            if not watched.accepted:  # the handshake was refused (a bad token, a full session)
                await _give_back(limiter, "socket_opens", address, opened)

    @staticmethod
    async def _refuse(event: ErrorEvent, receive: Receive, send: Send) -> None:
        """Accept, send ``event``, close with 1013: a page can read an event, not a 403."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": event.model_dump_json(exclude={"event_id"})})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": "limit"})
