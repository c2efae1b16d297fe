"""Admission control at the server's edges: who may start sessions, open sockets and
send messages, and how often, across every replica (counted in Redis, see
:mod:`storage.admission`).

- ``POST /token``: ``RATE_SESSIONS_PER_CLIENT`` per client address per
  ``RATE_WINDOW_S``; past it, 429 with ``Retry-After`` (:func:`admit_session`).
- ``POST /owner``: ``RATE_OWNERS_PER_CLIENT`` per client address per window, likewise
  (:func:`admit_owner`).
- ``WS /chat``: ``RATE_SOCKET_OPENS_PER_CLIENT`` opens per client address per window and
  ``MAX_SOCKETS_PER_CLIENT`` open at once (:class:`SocketAdmission`); a refused socket is
  accepted, told ``too_many_requests`` with ``retry_after_s``, and closed with 1013 (try
  again later), since a browser page cannot read a refused handshake's answer.
- each message: ``RATE_MESSAGES_PER_SESSION`` per session per window, refused with
  ``too_many_requests``; and while the session's or its client's model tokens of the
  period are used up (``MODEL_TOKENS_PER_SESSION``, ``MODEL_TOKENS_PER_CLIENT``, charged
  by the worker), ``quota_exceeded`` (:func:`admit_message`).

The client address is the peer's, or what a trusted proxy says (``TRUSTED_PROXIES``,
:func:`server.security.client_address`); an IPv6 client counts by its
``CLIENT_IPV6_PREFIX`` network (:func:`server.security.client_key`). Refusals are counted in
``parley_admission_refusals_total{limit}``; the label is the limit's name only, never an
address or a token. When Redis is unreachable, sockets and messages are admitted (their
own handling reports the outage) and ``POST /token`` answers 503 as any REST call does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid

from fastapi import HTTPException, Request, WebSocket, status
from prometheus_client import Counter
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.wire import ErrorCode, ErrorEvent
from server.config import ServerSettings
from server.security import SecuritySettings, client_key
from storage.admission import (
    CLIENT_TOKENS,
    SESSION_TOKENS,
    Limiter,
    Refused,
    digest,
    limit_key,
)
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


async def admit_session(request: Request) -> None:
    """Dependency of ``POST /token``: one more session for this client address.

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past ``RATE_SESSIONS_PER_CLIENT``.
    """
    settings: SecuritySettings = request.state.settings
    await _admit_address(request, "sessions", settings.rate_sessions_per_client)


async def admit_owner(request: Request) -> None:
    """Dependency of ``POST /owner``: one more owner for this client address, under a
    budget of its own (an owner costs no session, and a session no owner).

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past ``RATE_OWNERS_PER_CLIENT``.
    """
    settings: SecuritySettings = request.state.settings
    await _admit_address(request, "owners", settings.rate_owners_per_client)


async def _admit_address(request: Request, limit: str, max_count: int) -> None:
    """One more of ``limit`` ("sessions", "owners") for the request's client address:
    at most ``max_count`` every ``RATE_WINDOW_S``.

    Raises:
        HTTPException: 429 with ``Retry-After`` (s) past it.
    """
    settings: SecuritySettings = request.state.settings
    address = client_key(request.scope, settings.proxies(), settings.client_ipv6_prefix)
    try:
        await _limiter(request).hit(limit, address, max_count, settings.rate_window_s)
    except Refused as e:
        REFUSALS.labels(e.limit).inc()
        wait = math.ceil(e.retry_after_s)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many new {limit} from your address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        ) from e


class ClientMark:
    """When a socket last recorded its session's client (:meth:`Limiter.set_client`).

    A socket's client address never changes, so the record is renewed only once a
    quarter of its lifetime (the session's TTL) has passed, not with every message.
    """

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: float | None = None  # time.monotonic() (s) of the last record

    def due(self, ttl_s: float) -> bool:
        """Whether the record must be written (again)."""
        return self._at is None or time.monotonic() - self._at > ttl_s / 4

    def done(self) -> None:
        """The record was just written."""
        self._at = time.monotonic()


class MessageAdmission:
    """A message (or regenerate, or edit) admitted by :func:`admit_message`: its place in
    the session's rate window, to be given back if it is refused further on (a full
    queue, a model no worker serves, a reply in progress...), so a refusal spends
    nothing.

    Args:
        limiter: where it was counted (None: nothing was, Redis being unreachable).
        token: the session.
        admission: its id in the window (:meth:`Limiter.hit`).
    """

    __slots__ = ("_admission", "_limiter", "_token")

    def __init__(self, limiter: Limiter | None, token: str, admission: str) -> None:
        self._limiter = limiter
        self._token = token
        self._admission = admission

    async def give_back(self) -> None:
        """Take the admission out of the window; best effort (Redis may be down)."""
        if self._limiter is None:
            return
        limiter, self._limiter = self._limiter, None
        try:
            await limiter.give_back("messages", self._token, self._admission)
        except (RedisError, OSError) as e:
            logger.warning("an admission could not be given back, Redis unavailable: %s", e)


async def admit_message(
    websocket: WebSocket, token: str, mark: ClientMark
) -> ErrorEvent | MessageAdmission:
    """One more message of session ``token``: its admission, or the error to send.

    Two round trips to Redis: the two quotas are read at once, then the message is
    counted in the rate window. ``mark`` is the socket's :class:`ClientMark`: the
    session's client is recorded on its first message, then once a quarter of the
    session's TTL has passed. Redis being unreachable admits (storing the message
    reports the outage). A message refused after its admission gives it back
    (:meth:`MessageAdmission.give_back`).
    """
    settings: SecuritySettings = websocket.state.settings
    limiter = _limiter(websocket)
    client = digest(client_key(websocket.scope, settings.proxies(), settings.client_ipv6_prefix))
    admitted = MessageAdmission(None, token, "")
    try:
        quotas = await asyncio.gather(
            limiter.check_quota(SESSION_TOKENS, token, settings.model_tokens_per_session),
            limiter.check_quota(CLIENT_TOKENS, client, settings.model_tokens_per_client),
            return_exceptions=True,
        )
        for outcome in quotas:  # the session's refusal first, as if checked in turn
            if isinstance(outcome, BaseException):
                raise outcome
        admission = await limiter.hit(
            "messages", token, settings.rate_messages_per_session, settings.rate_window_s
        )
        admitted = MessageAdmission(limiter, token, admission)
        if mark.due(settings.session_ttl_seconds):
            await limiter.set_client(token, client, settings.session_ttl_seconds)
            mark.done()
    except Refused as e:
        if e.limit == "messages":
            return _refused(
                e,
                f"at most {settings.rate_messages_per_session} messages every "
                f"{settings.rate_window_s:g} s",
            )
        whose = "this session" if e.limit == SESSION_TOKENS else "your address"
        quota = (
            settings.model_tokens_per_session
            if e.limit == SESSION_TOKENS
            else settings.model_tokens_per_client
        )
        return _refused(
            e,
            f"{whose} used its {quota} model tokens of the period",
            ErrorCode.QUOTA_EXCEEDED,
        )
    except (RedisError, OSError) as e:
        logger.warning("message limits not checked, Redis unavailable: %s", e)
    return admitted


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
                await self._give_back(limiter, address, opened)
            detail = (
                f"at most {s.rate_socket_opens_per_client} sockets opened every "
                f"{s.rate_window_s:g} s from one address"
                if e.limit == "socket_opens"
                else f"at most {s.max_sockets_per_client} sockets open at once from one address"
            )
            await self._refuse(_refused(e, detail), receive, send)
            return
        except (RedisError, OSError) as e:
            logger.warning("socket limits not checked, Redis unavailable: %s", e)
            await self.app(scope, receive, send)
            return
        # The socket's place is renewed with the process's other socket leases, every
        # third of SOCKET_LEASE_SECONDS: a server that dies stops renewing, and its
        # sockets' places lapse.
        leases: SocketLeases = scope["state"]["leases"]
        place = limit_key("sockets", address)
        leases.track(place, holder)
        accepted = False

        async def watched(message: Message) -> None:
            nonlocal accepted
            accepted = accepted or message["type"] == "websocket.accept"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            leases.untrack(place, holder)
            with contextlib.suppress(RedisError, OSError):  # the lease lapses anyway
                await limiter.release("sockets", address, holder)
            if not accepted:  # the handshake was refused (a bad token, a full session)
                await self._give_back(limiter, address, opened)

    @staticmethod
    async def _give_back(limiter: Limiter, address: str, opened: str) -> None:
        """Give a refused socket's open back: a refusal spends nothing."""
        try:
            await limiter.give_back("socket_opens", address, opened)
        except (RedisError, OSError) as e:
            logger.warning("a socket open could not be given back, Redis unavailable: %s", e)

    @staticmethod
    async def _refuse(event: ErrorEvent, receive: Receive, send: Send) -> None:
        """Accept, send ``event``, close with 1013: a page can read an event, not a 403."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": event.model_dump_json(exclude={"event_id"})})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": "limit"})
