"""The server's app factory and lifespan: one Redis pool, one store, one hub per process."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.admission import SocketAdmission
from server.config import ServerSettings
from server.identity import IdentityVerifier
from server.pools import PoolWatch
from server.routes import chat, conversations, health, models, sessions
from server.security import AllowedHosts, SecurityMiddleware
from server.sockets import ChatSockets
from storage import keys
from storage.admission import Limiter
from storage.connection import CONNECTION_ERRORS, TRANSIENT_ERRORS, connect, disconnect
from storage.hub import Hub
from storage.leases import SocketLeases
from storage.store import Store

logger = logging.getLogger(__name__)

PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley</title></head>
<body><h1>Parley is running</h1>
<p>The web client is not built. Chat from a terminal with <code>make chat</code>,
or open a WebSocket to <code>/chat?token=...</code> after <code>POST /token?name=...</code>.
The API is described at <a href="/docs">/docs</a>.</p></body></html>
"""


class State(TypedDict):
    """What the lifespan yields; routes reach it as ``request.state``."""

    settings: ServerSettings
    redis: Redis[str]
    store: Store
    hub: Hub
    leases: SocketLeases
    limiter: Limiter
    pools: PoolWatch
    identity: IdentityVerifier | None


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the server's ASGI app; nothing connects to Redis until the lifespan starts.

    Args:
        settings: the server's settings (default: read from the environment).
    """
    settings = settings or ServerSettings()
    docs = settings.docs_enabled
    app = FastAPI(
        title="Parley",
        version="0.1.0",
        lifespan=lifespan(settings),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        # FastAPI's own spans would record each request's query string, which may hold
        # a session or owner token, and make one trace of a whole chat socket: Parley
        # traces each reply itself (runtime.tracing), and keeps its metrics in
        # Prometheus.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.chat_sockets = ChatSockets()
    _add_middleware(app, settings)
    _add_routes(app, settings)
    return app


def lifespan(settings: ServerSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    """The app's lifespan: open the Redis pool, the store, the hub, the socket leases and
    the identity provider's verifier (if ``OIDC_ISSUER`` is set) on startup and yield
    them as the :class:`State`; close them on shutdown.

    Raises (on startup):
        redis.exceptions.RedisError: Redis cannot be reached or refused a migration.
    """

    @asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[State]:
        redis = connect(settings, "server")
        store = Store(redis, settings)
        await store.streams.ensure_group()
        hub = Hub(
            redis,
            queue_size=settings.socket_queue_size,
            control_channel=f"{keys.PREFIX}:server:{uuid.uuid4()}",
        )
        await hub.start()
        leases = SocketLeases(
            redis,
            max_sockets=settings.max_sockets_per_session,
            lease_seconds=settings.socket_lease_seconds,
        )
        leases.start()
        pools = PoolWatch(store, settings)
        pools.start()
        # People from an identity provider, if one is set (OIDC_ISSUER); its keys are
        # fetched on first use, so a provider that is down delays no start.
        identity = IdentityVerifier(settings) if settings.oidc_issuer else None
        logger.info("server ready")
        try:
            yield {
                "settings": settings,
                "redis": redis,
                "store": store,
                "hub": hub,
                "leases": leases,
                "limiter": Limiter(redis),
                "pools": pools,
                "identity": identity,
            }
        finally:
            if identity is not None:
                await identity.aclose()
            await pools.aclose()
            await leases.aclose()
            await hub.aclose()
            await disconnect(redis)

    return run


def _add_middleware(app: FastAPI, settings: ServerSettings) -> None:
    """The allowed hosts, then the security middleware (headers, Origin), around the
    per-client socket limits."""
    # /metrics off, or served on METRICS_PORT by ``python -m server`` instead.
    metrics_here = settings.metrics_enabled and not settings.metrics_port
    app.add_middleware(SocketAdmission, settings=settings)  # inside: foreign origins never count
    app.add_middleware(
        SecurityMiddleware,
        allowed_origins=settings.origins(),
        hidden_paths=frozenset() if metrics_here else frozenset({"/metrics"}),
    )
    # Outermost: a request for another host name (DNS rebinding) gets 400 before anything.
    app.add_middleware(AllowedHosts, allowed_hosts=settings.hosts())


async def _redis_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """A REST call that meets an unreachable, loading or full Redis: 503."""
    logger.warning("request failed, Redis unavailable: %s", exc)
    return JSONResponse({"detail": "Redis unavailable; retry shortly"}, status_code=503)


async def _redis_refused(_request: Request, exc: Exception) -> JSONResponse:
    """A REST call whose command Redis refused for what it was (a wrong type, a value
    out of range, a script's error): a fault of the server, 500. Saying "unavailable;
    retry" would send clients into retries that fail the same way."""
    logger.error("request failed, Redis refused a command: %s", exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


async def _placeholder() -> HTMLResponse:
    return HTMLResponse(PLACEHOLDER_PAGE)


def _add_routes(app: FastAPI, settings: ServerSettings) -> None:
    """The REST and WebSocket routes, and the web client (or a placeholder page) at ``/``."""
    # The most specific handler wins: the link's errors and Redis's passing states are
    # 503, any other refusal 500.
    app.add_exception_handler(RedisError, _redis_refused)
    unavailable_errors: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, *TRANSIENT_ERRORS)
    for unavailable in unavailable_errors:
        app.add_exception_handler(unavailable, _redis_unavailable)
    app.include_router(sessions.router)
    app.include_router(conversations.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(chat.router)
    if (settings.web_dist / "index.html").is_file():
        app.mount("/", StaticFiles(directory=settings.web_dist, html=True), name="web")
    else:
        app.add_api_route("/", _placeholder, methods=["GET"], include_in_schema=False)
