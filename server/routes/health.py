"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import HubDep, StoreDep
from storage.connection import REDIS_DOWN

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """This process's Prometheus metrics, in the text exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", response_model=None)
async def readyz(store: StoreDep, hub: HubDep) -> dict[str, str] | JSONResponse:
    """Ready to serve: Redis answers, the workers' consumer group exists and the event
    relay (the hub's Pub/Sub listeners) runs; else 503."""
    if not hub.healthy:
        return JSONResponse(
            {"detail": "event relay restarting: sockets would miss events"}, status_code=503
        )
    try:
        await store.sessions.ping()
        if not await store.streams.group_exists():
            return JSONResponse({"detail": "consumer group missing"}, status_code=503)
    except REDIS_DOWN as e:
        # The error names Redis's address: logged, not told to whoever asks.
        logger.warning("readiness: Redis unavailable: %s", e)
        return JSONResponse({"detail": "redis unavailable"}, status_code=503)
    return {"status": "ready"}
