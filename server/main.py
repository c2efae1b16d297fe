"""``python -m server``: run one server process on uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from server.app import create_app
from server.config import ServerSettings


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host`` and ``--port`` and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    args = parser.parse_args(argv)
    settings = ServerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        ws_max_size=settings.ws_max_frame_bytes,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
    )
