"""``python -m server``: run one server process on uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket

import uvicorn
from fastapi import FastAPI, status
from prometheus_client import start_http_server

from runtime.collector import tune_collector
from runtime.logs import setup_logging
from runtime.tracing import setup_tracing, shutdown_tracing
from server.app import create_app
from server.config import ServerSettings
from server.sockets import ChatSockets
from server.websocket import websocket_protocol

logger = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, closing chat sockets with 1001 (going away) when it shuts down.

    uvicorn itself closes WebSockets with 1012 after its listeners; Parley's contract
    is 1001, which tells clients to reconnect (to another server) and resume.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._sockets: ChatSockets = app.state.chat_sockets

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting connections, close chat sockets with 1001, then uvicorn's shutdown."""
        for server in self.servers:
            server.close()
        closed = await self._sockets.close_all(
            status.WS_1001_GOING_AWAY, "server shutting down; reconnect and resume"
        )
        logger.info("closed %d chat sockets with 1001", closed)
        await super().shutdown(sockets)


def uvicorn_config(app: FastAPI, settings: ServerSettings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration of a server process (also for tests that serve the app
    in process and want the same WebSocket bounds)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's websockets-sansio protocol, closing a client that stops reading and
        # refusing text that is not UTF-8 without closing (server/websocket.py).
        ws=websocket_protocol(settings.ws_send_timeout_s),
        ws_max_size=settings.ws_max_frame_bytes,
        ws_max_queue=settings.ws_max_queue,
        # permessage-deflate keeps a zlib compressor and decompressor per socket: with a
        # browser-like client it doubled the memory of an idle socket (bench
        # `connections`), for token events of a few hundred bytes.
        ws_per_message_deflate=False,
        # The client's address is Parley's to work out, from TRUSTED_PROXIES only
        # (server.security.client_address); uvicorn would believe loopback's headers.
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host`` and ``--port`` and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    args = parser.parse_args(argv)
    settings = ServerSettings().serving(args.host)
    setup_logging(settings.log_level, settings.log_format, "server")
    setup_tracing(settings.otel_exporter_otlp_endpoint, "parley-server")
    app = create_app(settings)
    tune_collector()  # last: what startup built is never walked again
    if settings.metrics_enabled and settings.metrics_port:
        start_http_server(settings.metrics_port, addr=args.host)
    try:
        GracefulServer(uvicorn_config(app, settings, args.host, args.port), app).run()
    finally:
        shutdown_tracing()  # the spans still batched
